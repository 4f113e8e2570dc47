//! The API's TCP listener: at most `max_connections` open connections (and never more than half
//! the open-file limit), none kept idle longer than `connection_idle_timeout`.
//!
//! Every connection holds a file descriptor, and so do the store's journal segments, sled, the
//! watched files and the supervised programs' pipes. Without a bound, clients that open
//! connections and send nothing (or half a request, as a slowloris attack does) would take
//! descriptors until the store could not open its next journal segment. So a connection is
//! accepted only with a free slot (the others wait in the kernel's backlog), and one that moves
//! no byte either way for the idle timeout is closed. The timeout is longer than a request may
//! take (`api::REQUEST_TIMEOUT`), and the event stream sends a keep-alive comment well within
//! it. This module only guards connections; it knows nothing of HTTP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A TCP listener that bounds open connections and closes idle ones.
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl GuardedListener {
    /// Serves at most `max_connections` at once, or half the open-file limit if that is lower.
    pub fn new(inner: TcpListener, max_connections: usize, idle_timeout: Duration) -> Self {
        GuardedListener {
            inner,
            slots: Arc::new(Semaphore::new(connection_cap(max_connections))),
            idle_timeout,
        }
    }
}

/// `max_connections`, or half the open-file limit if that is lower: the other half stays for
/// the store, watched files and supervised programs, whatever clients do.
fn connection_cap(max_connections: usize) -> usize {
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let half = open_files.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    if half < max_connections {
        tracing::warn!(
            message = "Fewer HTTP connections than configured: half of the open-file limit (raise LimitNOFILE for more).",
            max_connections,
            allowed = half.max(1)
        );
    }
    max_connections.min(half).max(1)
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedStream<TcpStream>, SocketAddr) {
        // Wait for a slot before accepting: meanwhile new connections queue in the backlog.
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
            unreachable!("the semaphore is never closed");
        };
        // axum's accept loop: retries, and sleeps a second after errors such as EMFILE.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (GuardedStream::new(stream, slot, self.idle_timeout), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: gives its slot back when dropped, and fails (so that the server
/// closes it) once no byte has moved for the idle timeout.
#[derive(Debug)]
pub struct GuardedStream<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_progress: Instant,
    /// Fires at or before `last_progress + idle_timeout`. Progress only records the time; the
    /// timer is re-armed when it fires early, so a busy connection never touches the timer.
    timer: Pin<Box<Sleep>>,
}

impl<S> GuardedStream<S> {
    fn new(inner: S, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        GuardedStream {
            inner,
            _slot: slot,
            idle_timeout,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Called when the socket is not ready: Ready(error) once the connection has been idle for
    /// the timeout, else Pending (with the timer set to wake this task then).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let due = self.last_progress + self.idle_timeout;
            if Instant::now() >= due {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(due);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(outcome) => {
                if buf.filled().len() > before {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> GuardedStream<S> {
    /// A write that moved bytes is progress. One that cannot proceed waits for the socket or
    /// the idle timeout: a client that stops reading its answer holds the connection as surely
    /// as one that stops sending.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(outcome) => {
                if matches!(outcome, Ok(n) if n > 0) {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(60);

    /// A guarded in-memory connection (the paused clock jumps straight to its timer).
    fn connection(
        buffer: usize,
    ) -> (
        tokio::io::DuplexStream,
        GuardedStream<tokio::io::DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(buffer);
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        (client, GuardedStream::new(server, slot, IDLE))
    }

    /// `io` if it ends within ten idle timeouts of the paused clock (a guard that never fires
    /// must fail the test, not hang it).
    async fn bounded<T>(io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        tokio::time::timeout(IDLE * 10, io)
            .await
            .expect("the idle timeout never fired")
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_for_the_timeout_fails_and_one_that_sends_lives() {
        let (mut client, mut server) = connection(64);
        let started = Instant::now();
        for _ in 0..3 {
            tokio::time::advance(IDLE * 2 / 3).await;
            client.write_all(b"x").await.unwrap();
            let mut byte = [0; 1];
            server.read_exact(&mut byte).await.unwrap();
        }
        let mut byte = [0; 1];
        let error = bounded(server.read(&mut byte)).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            Instant::now() - started,
            IDLE * 2 + IDLE,
            "closed one timeout after the last byte"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_its_answer_is_cut_off() {
        let (_client, mut server) = connection(64);
        let error = bounded(server.write_all(&[0; 4096])).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_connection_waits_for_a_free_slot() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = GuardedListener::new(inner, 1, IDLE);
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = listener.accept().await;
        let _second_client = TcpStream::connect(addr).await.unwrap();
        // The only slot is taken: the second is not accepted while the first is open.
        let mut waiting = Box::pin(listener.accept());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drop(first);
        let (second, _) = waiting.await;
        drop(second);
    }
}
