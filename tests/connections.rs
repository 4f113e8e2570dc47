//! The API's connections are capped (`max_connections`), so that clients holding connections
//! open cannot take the file descriptors the store needs, and none holds up a shutdown for more
//! than `drain_timeout`; a request's head and body each have a deadline and a size, however
//! their bytes trickle. The idle timeout that frees the connections of silent clients is
//! tested on a paused clock in `src/listener.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use common::{DEADLINE, Env};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

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
    for bad in [
        "max_connections = 0",
        "connection_idle_timeout = \"10s\"",
        "header_timeout = \"0s\"",
        "header_timeout = \"61s\"",
        "body_timeout = \"30s\"",
        "max_header_bytes = 4096",
        "max_header_bytes = 2000000",
        "allowed_hosts = [\"http://phoenix.example\"]",
        "allowed_hosts = [\"phoenix.example:7070\"]",
    ] {
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
        .write_all(b"POST /v1/faults HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    // A round trip on another connection: time for phoenix to take the first one up.
    assert!(healthy(&mut TcpStream::connect(&daemon.addr).unwrap()));
    // Graceful shutdown waits for that request; the drain timeout ends the wait.
    let code = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.log());
}

/// Writes `bytes` to `stream` one at a time, `pause` apart, until phoenix closes it (a write or
/// a read of what it answered fails or ends); returns what it answered. Bounded: the bytes run
/// out, and then the answer has [`DEADLINE`] to come.
fn trickle(stream: &mut TcpStream, bytes: &[u8], pause: std::time::Duration) -> String {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(1)))
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0; 512];
    let mut closed = false;
    for byte in bytes {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            closed = true;
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(pause);
    }
    assert!(
        closed,
        "phoenix took every byte: the deadline never cut the request"
    );
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_request_head_trickled_byte_by_byte_is_cut_at_its_deadline() {
    let env = Env::new();
    // The idle timeout never fires here (a byte every 200 ms): only the head's deadline can.
    env.write_config("header_timeout = \"1s\"");
    let daemon = env.start();
    let mut slow = TcpStream::connect(&daemon.addr).unwrap();
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    head.extend(b"X-Pad: ".iter().chain(&[b'a'; 300]));
    trickle(&mut slow, &head, std::time::Duration::from_millis(200));
    // Others are served as ever.
    assert!(healthy(&mut TcpStream::connect(&daemon.addr).unwrap()));
}

#[test]
fn a_request_head_past_its_size_is_refused() {
    let env = Env::new();
    env.write_config("max_header_bytes = 8192");
    let daemon = env.start();
    let mut big = TcpStream::connect(&daemon.addr).unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let _ = big.write_all(head.as_bytes());
    big.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // One just under the limit is served.
    let mut fits = TcpStream::connect(&daemon.addr).unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(7000)
    );
    fits.write_all(head.as_bytes()).unwrap();
    assert!(read_answer(&mut fits).starts_with("HTTP/1.1 200"));
}

#[test]
fn a_body_declared_too_large_is_refused_before_it_is_sent_and_a_slow_one_at_its_deadline() {
    let env = Env::new();
    env.write_config("body_timeout = \"1s\"");
    let daemon = env.start();
    // 10^12 bytes declared, none sent: answered at once, without waiting for any.
    let mut huge = TcpStream::connect(&daemon.addr).unwrap();
    huge.write_all(
        b"POST /v1/faults HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n",
    )
    .unwrap();
    huge.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = [0; 512];
    let n = huge.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");

    // A body of 200 bytes sent a byte every 100 ms: 408 at its deadline, not served.
    let mut slow = TcpStream::connect(&daemon.addr).unwrap();
    slow.write_all(
        b"POST /v1/faults HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
    )
    .unwrap();
    let answer = trickle(
        &mut slow,
        &[b' '; 200],
        std::time::Duration::from_millis(100),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}
