//! systemd integration: `Type=notify` readiness (READY=1 only once the API accepts
//! connections), the watchdog (WATCHDOG=1 while the engine answers), and STOPPING=1.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{DEADLINE, Env};

/// Receives datagrams until one contains `needle`; returns it.
fn receive_until(socket: &UnixDatagram, needle: &str) -> String {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        assert!(started.elapsed() < DEADLINE, "no `{needle}` from phoenix");
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if message.contains(needle) {
                return message;
            }
        }
    }
}

#[test]
fn readiness_watchdog_and_stopping_reach_the_notify_socket() {
    let env = Env::new();
    let socket_path = env.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify_socket = socket_path.display().to_string();
    let mut daemon = env.start_with_env(&[
        ("NOTIFY_SOCKET", &notify_socket),
        ("WATCHDOG_USEC", "200000"),
    ]);

    let ready = receive_until(&socket, "READY=1");
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    // READY=1 is sent after the listener is bound: the port accepts connections now.
    let addr = std::fs::read_to_string(env.path("data/phoenix.addr")).unwrap();
    assert!(
        std::net::TcpStream::connect(addr.trim()).is_ok(),
        "READY=1 before the port accepted connections"
    );

    receive_until(&socket, "WATCHDOG=1");
    assert_eq!(daemon.terminate(), Some(0));
    receive_until(&socket, "STOPPING=1");
}
