//! The shutdown signals (SIGTERM, SIGINT), listened for from before phoenix says it is ready.

/// SIGTERM and SIGINT, listened for from creation on. Until a listener exists a signal's
/// default action kills the process, so they are made before phoenix says it is ready (a
/// SIGTERM right after that must still shut down cleanly).
pub(super) struct ShutdownSignals {
    pub(super) terminate: Option<tokio::signal::unix::Signal>,
    pub(super) interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    pub(super) fn listen() -> ShutdownSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(message = "Cannot listen for a shutdown signal.", signal = name, %error);
                None
            }
        };
        ShutdownSignals {
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Waits for either signal.
    pub(super) async fn received(self) {
        async fn one(signal: Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = one(self.terminate) => {}
            () = one(self.interrupt) => {}
        }
        tracing::info!(message = "Shutdown requested; draining requests.");
    }
}
