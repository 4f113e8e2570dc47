//! A tiny HTTP app for the supervised demo and the P1 benchmark: answers `200 ok` to every
//! request. Usage: `demo-app [ADDR] [PIDFILE]` (default 127.0.0.1:8089; the pid file, if given,
//! is written once listening — for supervisors that track pid files, like monit). std only, so
//! its cold start is a few milliseconds and the benchmark measures the supervisor, not the app.

use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8089".into());
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("demo-app: cannot listen on {addr}: {error}");
            std::process::exit(1);
        }
    };
    if let Some(pidfile) = std::env::args().nth(2)
        && let Err(error) = std::fs::write(&pidfile, std::process::id().to_string())
    {
        eprintln!("demo-app: cannot write {pidfile}: {error}");
    }
    eprintln!("demo-app: serving on {addr}, pid {}", std::process::id());
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
    }
}
