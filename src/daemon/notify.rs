//! systemd readiness and watchdog notifications (`Type=notify`), without libsystemd: datagrams
//! to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! Without `NOTIFY_SOCKET` (not under systemd), every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to systemd, if phoenix runs under it. Failures are logged,
/// never fatal: a missing notification is systemd's to act on.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let sent = UnixDatagram::unbound().and_then(|socket| {
        if let Some(name) = target.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &address)
        } else {
            socket.send_to(state.as_bytes(), &target)
        }
    });
    if let Err(error) = sent {
        tracing::warn!(message = "Cannot notify systemd.", socket = %target, %error);
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (None when systemd asks for none).
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(std::env::var("WATCHDOG_USEC").ok().as_deref())
}

fn interval_from(watchdog_usec: Option<&str>) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_what_systemd_asks() {
        assert_eq!(
            interval_from(Some("30000000")),
            Some(Duration::from_secs(15))
        );
        assert_eq!(interval_from(Some("0")), None);
        assert_eq!(interval_from(Some("soon")), None);
        assert_eq!(interval_from(None), None);
    }
}
