//! The API's connections are capped (`max_connections`), so that clients holding connections
//! open cannot take the file descriptors the store needs, and none holds up a shutdown for more
//! than `drain_timeout`. The idle timeout that frees the connections of silent clients is
//! tested on a paused clock in `src/listener.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use common::{DEADLINE, Env};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: phoenix\r\n\r\n";

/// Reads one `/healthz` answer (headers, then the `{"status":"ok"}` body) from `stream`.
fn read_answer(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0; 512];
    while !answer.ends_with(b"}") {
        let n = stream
            .read(&mut chunk)
            .expect("an answer within the deadline");
        assert!(n > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn healthy(stream: &mut TcpStream) -> bool {
    stream.write_all(HEALTHZ).unwrap();
    read_answer(stream).starts_with("HTTP/1.1 200")
}

#[test]
fn a_connection_past_the_cap_waits_until_one_closes() {
    let env = Env::new();
    env.write_config("max_connections = 2");
    let daemon = env.start();
    let connect = || TcpStream::connect(&daemon.addr).unwrap();

    let (mut first, mut second) = (connect(), connect());
    assert!(healthy(&mut first) && healthy(&mut second));
    // A third connection gets through the kernel's backlog, but phoenix does not take it up.
    let mut third = connect();
    third.write_all(HEALTHZ).unwrap();
    // Not answered while the two are open (a window in which a server without the cap
    // answers; with the cap, no length of it would see an answer).
    assert!(healthy(&mut second));
    third
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0; 1];
    let early = third.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the third connection was served past the cap: {early:?}"
    );

    drop(first);
    let answer = read_answer(&mut third);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(healthy(&mut second), "the others are unaffected");
}

#[test]
fn a_cap_out_of_range_is_a_config_error() {
    let env = Env::new();
    for bad in ["max_connections = 0", "connection_idle_timeout = \"10s\""] {
        env.write_config(bad);
        let (code, _, stderr) = env.run(&["check", "--config", "phoenix.toml"]);
        assert_eq!(code, 64, "{bad}: {stderr}");
        let key = bad.split(' ').next().unwrap();
        assert!(stderr.contains(key), "{bad}: {stderr}");
    }
}

#[test]
fn a_request_sent_half_way_does_not_hold_up_shutdown() {
    let env = Env::new();
    env.write_config("connection_idle_timeout = \"600s\"\ndrain_timeout = \"1s\"");
    let mut daemon = env.start();
    // Half of a first request (a connection that served one and sent half of the next is
    // closed by the drain at once; this one is waited for).
    let mut stuck = TcpStream::connect(&daemon.addr).unwrap();
    stuck
        .write_all(b"POST /v1/faults HTTP/1.1\r\nHost: phoenix\r\n")
        .unwrap();
    // A round trip on another connection: time for phoenix to take the first one up.
    assert!(healthy(&mut TcpStream::connect(&daemon.addr).unwrap()));
    // Graceful shutdown waits for that request; the drain timeout ends the wait.
    let code = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.log());
}
