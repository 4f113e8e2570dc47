//! Verification: after a plan is applied, probe until the policy's check reports healthy or its
//! deadline passes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::fault::{FailReason, Fault, Rollback};
use crate::core::machine::Event;
use crate::core::policy::Verify;
use crate::effects::{FaultEnv, run_command};

use super::analyze::steps;
use super::announce::announce_steps;
use super::{Engine, EngineError};

/// What the last probe saw when verification gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not healthy within {within:?} ({attempts} probes); last: {last}")]
pub struct Unhealthy {
    pub within: Duration,
    pub attempts: u32,
    pub last: String,
}

/// Probes until healthy (returns the number of probes it took) or until `verify.within` has
/// passed. Every probe is itself bounded by the time left. A command probe gets the fault in its
/// environment, as effects do.
pub async fn verify(
    verify: &Verify,
    http: &HttpProbes,
    work_dir: &Path,
    fault: Option<&FaultEnv>,
) -> Result<u32, Unhealthy> {
    let deadline = Instant::now() + verify.within;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let last = match probe_once(verify, http, work_dir, left, fault).await {
            Ok(()) => return Ok(attempts),
            Err(last) => last,
        };
        if Instant::now() + verify.interval >= deadline {
            return Err(Unhealthy {
                within: verify.within,
                attempts,
                last,
            });
        }
        tokio::time::sleep(verify.interval).await;
    }
}

async fn probe_once(
    verify: &Verify,
    http: &HttpProbes,
    work_dir: &Path,
    timeout: Duration,
    fault: Option<&FaultEnv>,
) -> Result<(), String> {
    if let Some(argv) = &verify.command {
        return run_command(argv, timeout, work_dir, fault)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    if let Some(probe) = &verify.http {
        let status = http.status(&probe.url, timeout).await?;
        return if status == probe.status {
            Ok(())
        } else {
            Err(format!(
                "{} answered {status}, expected {}",
                probe.url, probe.status
            ))
        };
    }
    Err("no probe configured".into())
}

/// The answer to one probe request: the HTTP status, or why there was none.
type Answer = Result<u16, String>;

/// HTTP verification probes, shared by the faults that verify the same URL at the same time.
///
/// In a fault storm (hundreds of faults of one app healed at once), one GET per fault per
/// interval would pile load on the very service being verified. Instead, concurrent asks for a
/// URL share one request, but only a request that *starts after* each of them asked: whoever
/// joins while a request is in flight waits for the next one. So every fault's verification
/// still sees the system as it is after its own patch was applied.
#[derive(Clone)]
pub struct HttpProbes {
    client: reqwest::Client,
    /// The URLs with a request in flight, each with the request it sends once that one is
    /// answered (asks join it until it starts). An entry exists exactly while its driver runs.
    urls: Arc<Mutex<HashMap<String, Option<Batch>>>>,
}

struct Batch {
    /// The shortest time any member allows: a request that hangs holds up the URL's next one
    /// no longer than that (members with more time left get its error and probe again later).
    timeout: Duration,
    answer: watch::Sender<Option<Answer>>,
}

impl HttpProbes {
    pub fn new(client: reqwest::Client) -> HttpProbes {
        HttpProbes {
            client,
            urls: Arc::default(),
        }
    }

    /// The status `url` answers a GET with, from a request started after this call, waiting
    /// at most `timeout`.
    pub async fn status(&self, url: &str, timeout: Duration) -> Answer {
        let mut answer = {
            let mut urls = self.lock_urls();
            let start_driver = !urls.contains_key(url);
            let next = urls.entry(url.to_owned()).or_default();
            let batch = next.get_or_insert_with(|| Batch {
                timeout,
                answer: watch::channel(None).0,
            });
            batch.timeout = batch.timeout.min(timeout);
            let answer = batch.answer.subscribe();
            if start_driver {
                tokio::spawn(self.clone().drive(url.to_owned()));
            }
            answer
        };
        match tokio::time::timeout(timeout, answer.wait_for(Option::is_some)).await {
            Ok(Ok(answer)) => answer.clone().unwrap_or_else(|| Err("no answer".into())),
            Ok(Err(_)) => Err(format!("the probe of {url} was abandoned")),
            Err(_) => Err(format!("{url} did not answer within {timeout:?}")),
        }
    }

    /// Sends `url`'s requests one after the other while asks keep coming; ends (removing the
    /// entry) when none waits.
    async fn drive(self, url: String) {
        loop {
            let batch = {
                let mut urls = self.lock_urls();
                match urls.get_mut(&url).and_then(Option::take) {
                    Some(batch) => batch,
                    None => {
                        urls.remove(&url);
                        return;
                    }
                }
            };
            let answer = self
                .client
                .get(&url)
                .timeout(batch.timeout)
                .send()
                .await
                .map(|response| response.status().as_u16())
                .map_err(|e| e.to_string());
            // Members that gave up meanwhile are gone; the rest get the answer.
            let _ = batch.answer.send(Some(answer));
        }
    }

    fn lock_urls(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Batch>>> {
        // Held only for map updates that cannot panic half-way: recover from poisoning.
        self.urls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The engine's `testing` step: probe until healthy or the deadline (see [`verify`]).
impl Engine {
    /// Testing: probe until healthy or the deadline. On failure the attempt's changes are rolled
    /// back, then the patch is retried if the policy allows, else the fault fails.
    pub(super) async fn test(&self, fault: Fault) -> Result<Fault, EngineError> {
        let Some(run) = fault.run.clone() else {
            return self
                .fail(
                    &fault,
                    FailReason::Interrupted,
                    "no recorded run to verify".into(),
                )
                .await;
        };
        let Some(policy) = self.policy_of(&run)? else {
            return self.policy_missing(&fault, &run).await;
        };
        let policy = &*policy;
        let env = FaultEnv::of(&fault);
        let outcome = if policy.verify.supervised {
            let (within, interval) = (policy.verify.within, policy.verify.interval);
            let supervisor = &self.parts.supervisor;
            supervisor
                .verify(&fault.app, within, interval, &self.parts.http)
                .await
                .map(|()| 1)
                .map_err(|last| crate::engine::verify::Unhealthy {
                    within,
                    attempts: 1,
                    last,
                })
        } else {
            verify(
                &policy.verify,
                &self.probes,
                &self.parts.work_dir,
                Some(&env),
            )
            .await
        };
        match outcome {
            Ok(probes) => {
                let detail = format!("verification passed after {probes} probe(s)");
                // The transition and the success it feeds to the breakers: one atomic write.
                let verified = steps(fault.state, vec![(Event::Verified, detail)])?;
                let (names, feed) = self.outcome_feed(&fault, policy, true);
                let (healed, changes) = self
                    .parts
                    .store
                    .append_steps_feeding_breakers(
                        &fault.id,
                        fault.seq,
                        verified.clone(),
                        |_| {},
                        names,
                        feed,
                    )
                    .await?;
                announce_steps(&self.parts.events, &healed, &verified);
                self.announce_breaker_changes(changes);
                Ok(healed)
            }
            Err(unhealthy) if fault.attempts < policy.max_attempts => {
                self.record_outcome(&fault, policy, false).await;
                let (outcome, account) = self.roll_back(&fault).await;
                let detail = format!(
                    "attempt {} of {}: {unhealthy}; {}; retrying",
                    fault.attempts,
                    policy.max_attempts,
                    match outcome {
                        Some(Rollback::RollbackFailed) => format!("rollback_failed: {account}"),
                        Some(Rollback::RolledBack) => format!("rolled_back: {account}"),
                        None => account,
                    }
                );
                self.transition(&fault, Event::Retry, detail, move |f| {
                    f.run = None;
                    f.rollback = outcome;
                })
                .await
            }
            Err(unhealthy) => {
                self.record_outcome(&fault, policy, false).await;
                self.fail_with_rollback(&fault, FailReason::VerifyFailed, unhealthy.to_string())
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(argv: &[&str], within: Duration) -> Verify {
        Verify {
            command: Some(argv.iter().map(|s| s.to_string()).collect()),
            http: None,
            supervised: false,
            within,
            interval: Duration::from_millis(20),
        }
    }

    /// A loopback server answering its n-th request (from 1) with `status(n)`, `delay(n)` after
    /// it arrived. Returns its URL and how many requests it has received.
    async fn counting_server(
        delay: fn(usize) -> Duration,
        status: fn(usize) -> u16,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let received = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    if socket.read(&mut request).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(delay(n)).await;
                    let response = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        status(n)
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        (url, received)
    }

    /// Waits (up to 30 s) until the server has received a request.
    async fn first_request_arrived(received: &std::sync::atomic::AtomicUsize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while received.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "no request arrived");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_probes_of_a_url_share_requests() {
        let (url, received) = counting_server(|_| Duration::from_millis(300), |_| 200).await;
        let probes = HttpProbes::new(crate::effects::http_client().unwrap());
        let mut asks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (probes, url) = (probes.clone(), url.clone());
            asks.spawn(async move { probes.status(&url, Duration::from_secs(30)).await });
        }
        while let Some(answer) = asks.join_next().await {
            assert_eq!(answer.unwrap(), Ok(200));
        }
        // The first ask's request, and at most one more for all who asked while it was out.
        let requests = received.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=2).contains(&requests), "{requests} requests");
        assert!(probes.lock_urls().is_empty(), "the driver ended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_asked_during_a_request_gets_a_later_request() {
        // Healthy only for the first request: whoever asks after it went out must not see it.
        let (url, received) = counting_server(
            |_| Duration::from_millis(200),
            |n| if n == 1 { 200 } else { 503 },
        )
        .await;
        let probes = HttpProbes::new(crate::effects::http_client().unwrap());
        let first = tokio::spawn({
            let (probes, url) = (probes.clone(), url.clone());
            async move { probes.status(&url, Duration::from_secs(30)).await }
        });
        first_request_arrived(&received).await;
        let second = probes.status(&url, Duration::from_secs(30)).await;
        assert_eq!(first.await.unwrap(), Ok(200));
        assert_eq!(second, Ok(503));
        assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_hung_request_holds_up_the_next_no_longer_than_its_most_hurried_member() {
        // The first request hangs; later ones answer at once.
        let (url, received) = counting_server(
            |n| Duration::from_secs(if n == 1 { 600 } else { 0 }),
            |_| 200,
        )
        .await;
        let probes = HttpProbes::new(crate::effects::http_client().unwrap());
        // Both ask before the (current-thread) runtime runs the driver: one request for both.
        let first = tokio::spawn({
            let (probes, url) = (probes.clone(), url.clone());
            async move {
                tokio::join!(
                    probes.status(&url, Duration::from_millis(300)),
                    probes.status(&url, Duration::from_secs(600)),
                )
            }
        });
        first_request_arrived(&received).await;
        // Asked while the hung request is out: answered by the next one, sent once the hung one
        // gave up after 300 ms (not after the patient member's 600 s).
        let later = probes.status(&url, Duration::from_secs(30)).await;
        assert_eq!(later, Ok(200));
        let (hurried, patient) = first.await.unwrap();
        assert!(hurried.is_err(), "{hurried:?}");
        assert!(patient.is_err(), "{patient:?}");
    }

    #[tokio::test]
    async fn a_probe_waits_no_longer_than_its_own_timeout() {
        let (url, _) = counting_server(|_| Duration::from_secs(60), |_| 200).await;
        let probes = HttpProbes::new(crate::effects::http_client().unwrap());
        let err = probes
            .status(&url, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn a_healthy_probe_passes_at_once() {
        let client = HttpProbes::new(crate::effects::http_client().unwrap());
        assert_eq!(
            verify(
                &probe(&["true"], Duration::from_secs(5)),
                &client,
                Path::new("/"),
                None,
            )
            .await,
            Ok(1)
        );
    }

    #[tokio::test]
    async fn a_probe_that_becomes_healthy_passes_later() {
        let dir = tempfile::tempdir().unwrap();
        // Healthy from the third probe on: each probe appends a line, and passes at three.
        let script = "echo x >> n; test $(wc -l < n) -ge 3";
        let attempts = verify(
            &probe(&["sh", "-c", script], Duration::from_secs(30)),
            &HttpProbes::new(crate::effects::http_client().unwrap()),
            dir.path(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn an_unhealthy_probe_fails_with_its_last_error() {
        let err = verify(
            &probe(&["false"], Duration::from_millis(200)),
            &HttpProbes::new(crate::effects::http_client().unwrap()),
            Path::new("/"),
            None,
        )
        .await
        .unwrap_err();
        assert!(err.attempts >= 1);
        assert_eq!(err.last, "exited with exit status: 1; stderr: ");
    }
}
