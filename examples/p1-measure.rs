//! P1 benchmark driver: repeatedly kills a supervised HTTP app with SIGKILL and measures the
//! time until its health URL answers 200 again.
//!
//! Usage: `p1-measure LABEL ADDR PIDFILE KILLS SETTLE_MS`. Before each kill it waits until the
//! app answers and the pid file names a live process, then sleeps SETTLE_MS (so every kill is a
//! fresh crash, not a crash loop), kills that pid and polls `GET /` on ADDR every 0.5 ms.
//! Prints one line: `LABEL kills median_ms p95_ms max_ms`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn healthy(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn live_pid(pidfile: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (!stat.contains(") Z ")).then_some(pid)
}

fn wait_up(addr: &str, pidfile: &str, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if healthy(addr)
            && let Some(pid) = live_pid(pidfile)
        {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, label, addr, pidfile, kills, settle] = args.as_slice() else {
        eprintln!("usage: p1-measure LABEL ADDR PIDFILE KILLS SETTLE_MS");
        std::process::exit(64);
    };
    let kills: usize = kills.parse().expect("KILLS is a number");
    let settle = Duration::from_millis(settle.parse().expect("SETTLE_MS is a number"));
    let mut samples = Vec::with_capacity(kills);
    for _ in 0..kills {
        let Some(pid) = wait_up(addr, pidfile, Duration::from_secs(60)) else {
            eprintln!("{label}: the app never came up");
            std::process::exit(1);
        };
        std::thread::sleep(settle);
        let pid = rustix::process::Pid::from_raw(pid).expect("a positive pid");
        let killed = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
        // Wait for the old process to be gone, so a request it was still answering cannot count.
        while healthy(addr) && killed.elapsed() < Duration::from_millis(50) {}
        loop {
            if healthy(addr) {
                samples.push(killed.elapsed());
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                eprintln!("{label}: no answer 60 s after a kill");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label} {} {:.1} {:.1} {:.1}",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.95)),
        ms(at(1.0))
    );
}
