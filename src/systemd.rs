//! systemd integration: `Type=notify` readiness, `STATUS=` lines, the watchdog and
//! `STOPPING=1`. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::sync::OnceLock;
use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Tells systemd the service is up (models loaded and warmed up, capture started, socket
/// bound), with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping (after SIGTERM), before the drain.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
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
        notify(&[NotifyState::Watchdog]);
    }
}
