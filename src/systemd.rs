//! systemd integration: `Type=notify` readiness, `STATUS=` lines, the watchdog and
//! `STOPPING=1`. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! Messages go through one small thread with a bounded queue: a notify socket whose reader is
//! slow or gone makes `sendto` block, and neither the engine loop (watchdog) nor the signal
//! loop may ever wait on it. A full queue drops the message.

use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use sd_notify::NotifyState;

/// One message for the notifier thread.
enum Message {
    Ready(String),
    Status(String),
    Stopping,
    Watchdog,
    /// Replies once everything queued before it has been sent.
    Flush(Sender<()>),
}

fn notifier() -> Option<&'static Sender<Message>> {
    static TX: OnceLock<Option<Sender<Message>>> = OnceLock::new();
    TX.get_or_init(|| {
        std::env::var_os("NOTIFY_SOCKET")?;
        let (tx, rx) = crossbeam_channel::bounded::<Message>(32);
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for message in rx {
                    let result = match &message {
                        Message::Ready(s) => {
                            sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(s)])
                        }
                        Message::Status(s) => sd_notify::notify(&[NotifyState::Status(s)]),
                        Message::Stopping => sd_notify::notify(&[
                            NotifyState::Stopping,
                            NotifyState::Status("stopping"),
                        ]),
                        Message::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
                        Message::Flush(done) => {
                            let _ = done.send(());
                            Ok(())
                        }
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "sd_notify failed");
                    }
                }
            })
            .ok()?;
        Some(tx)
    })
    .as_ref()
}

fn send(message: Message) {
    if let Some(tx) = notifier() {
        match tx.try_send(message) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => tracing::debug!("sd_notify queue full; message dropped"),
        }
    }
}

/// Tells systemd the service is up (models loaded and warmed up, capture started, socket
/// bound), with a status line.
pub fn ready(status: &str) {
    send(Message::Ready(status.to_string()));
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(Message::Status(status.to_string()));
}

/// Tells systemd the service is stopping (after SIGTERM), before the drain.
pub fn stopping() {
    send(Message::Stopping);
}

/// Waits (at most `timeout`) until every queued message has been sent; called before exit.
pub fn flush(timeout: Duration) {
    if let Some(tx) = notifier() {
        let (done, rx) = crossbeam_channel::bounded(1);
        if tx.send_timeout(Message::Flush(done), timeout).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(sd_notify::watchdog_enabled)
}

/// Pings the watchdog if it is enabled. Called from the engine loop, so a wedged engine stops
/// the pings and systemd restarts the service.
pub fn watchdog() {
    if watchdog_interval().is_some() {
        send(Message::Watchdog);
    }
}
