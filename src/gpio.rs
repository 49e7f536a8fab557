//! GPIO on a Raspberry Pi (cargo feature `gpio`, through `rppal`): a button that answers the
//! presets at once, and an LED that blinks while the engine turns and stays lit while sound
//! is present.
//!
//! **Owns** the two pins and one small thread for the LED. It talks to the engine only
//! through an [`EngineHandle`]: the button sends a request (never waits on the engine in the
//! interrupt thread for longer than the request takes), the LED reads the engine's
//! [`crate::engine::Signals`] counters.

use crate::config::GpioConfig;
use crate::engine::EngineHandle;

/// The running GPIO integration; dropping it releases the pins.
#[derive(Debug)]
pub struct Gpio {
    #[cfg(feature = "gpio")]
    _inner: imp::Inner,
}

impl Gpio {
    /// Releases the pins and stops the LED thread.
    pub fn stop(self) {}
}

/// Starts GPIO if a pin is configured. Without the `gpio` feature a configured pin is an
/// error (the build cannot drive it); with none configured this does nothing.
pub fn start(cfg: &GpioConfig, engine: EngineHandle) -> anyhow::Result<Option<Gpio>> {
    if cfg.button_pin.is_none() && cfg.led_pin.is_none() {
        return Ok(None);
    }
    #[cfg(feature = "gpio")]
    {
        Ok(Some(Gpio {
            _inner: imp::Inner::start(cfg, engine)?,
        }))
    }
    #[cfg(not(feature = "gpio"))]
    {
        drop(engine);
        anyhow::bail!(
            "config keys `gpio.button_pin`/`gpio.led_pin` are set, but this tspm-edge was built \
             without the `gpio` feature (cargo build --features gpio)"
        )
    }
}

#[cfg(feature = "gpio")]
mod imp {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use anyhow::Context;
    use rppal::gpio::{Gpio, InputPin, Trigger};

    use crate::config::GpioConfig;
    use crate::engine::{EngineHandle, summary};

    #[derive(Debug)]
    pub(super) struct Inner {
        _button: Option<InputPin>,
        stop: Arc<AtomicBool>,
        led: Option<JoinHandle<()>>,
    }

    impl Inner {
        pub(super) fn start(cfg: &GpioConfig, engine: EngineHandle) -> anyhow::Result<Self> {
            let gpio = Gpio::new().context("opening the GPIO controller (/dev/gpiomem)")?;
            let button = match cfg.button_pin {
                Some(pin) => {
                    let mut input = gpio
                        .get(pin)
                        .with_context(|| format!("config key `gpio.button_pin` = {pin}"))?
                        .into_input_pullup();
                    let handle = engine.clone();
                    input
                        .set_async_interrupt(
                            Trigger::FallingEdge,
                            Some(Duration::from_millis(50)),
                            move |_| match handle.answer_presets(Duration::from_secs(10)) {
                                Ok(answers) => {
                                    tracing::info!(answers = %summary(&answers), "button: presets")
                                }
                                Err(e) => tracing::warn!(error = %e, "button: presets failed"),
                            },
                        )
                        .with_context(|| format!("watching button pin {pin}"))?;
                    Some(input)
                }
                None => None,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let led = match cfg.led_pin {
                Some(pin) => {
                    let mut out = gpio
                        .get(pin)
                        .with_context(|| format!("config key `gpio.led_pin` = {pin}"))?
                        .into_output_low();
                    let stop = Arc::clone(&stop);
                    Some(
                        std::thread::Builder::new()
                            .name("gpio-led".into())
                            .spawn(move || {
                                let mut last = 0;
                                while !stop.load(Ordering::Relaxed) {
                                    let signals = engine.signals();
                                    let segments = signals.segments.load(Ordering::Relaxed);
                                    if signals.sound.load(Ordering::Relaxed) {
                                        out.set_high();
                                    } else if segments != last {
                                        // Alive: one blink per second encoded.
                                        out.toggle();
                                    } else {
                                        out.set_low();
                                    }
                                    last = segments;
                                    std::thread::sleep(Duration::from_millis(500));
                                }
                                out.set_low();
                            })
                            .context("starting the LED thread")?,
                    )
                }
                None => None,
            };
            Ok(Inner {
                _button: button,
                stop,
                led,
            })
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(led) = self.led.take() {
                let _ = led.join();
            }
        }
    }
}
