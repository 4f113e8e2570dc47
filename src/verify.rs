//! Verification: after a plan is applied, probe until the policy's check reports healthy or its
//! deadline passes.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::effects::{FaultEnv, run_command};
use crate::policy::Verify;

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
    http: &reqwest::Client,
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
    http: &reqwest::Client,
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
        let response = http
            .get(&probe.url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
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

    #[tokio::test]
    async fn a_healthy_probe_passes_at_once() {
        let client = crate::effects::http_client().unwrap();
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
            &crate::effects::http_client().unwrap(),
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
            &crate::effects::http_client().unwrap(),
            Path::new("/"),
            None,
        )
        .await
        .unwrap_err();
        assert!(err.attempts >= 1);
        assert_eq!(err.last, "exited with exit status: 1; stderr: ");
    }
}
