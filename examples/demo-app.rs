//! A tiny HTTP app for the supervised demo and the P1 benchmark: answers `200 ok` to every
//! request on the address given as its only argument (default 127.0.0.1:8089). std only, so its
//! cold start is a few milliseconds and the benchmark measures the supervisor, not the app.

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
    eprintln!("demo-app: serving on {addr}, pid {}", std::process::id());
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
    }
}
