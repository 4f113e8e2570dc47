//! Probes as a detection source: an HTTP, TCP or command check run on an interval. After
//! `failures` consecutive failures, a fault is reported; when the probe passes again, the
//! recovery is recorded on that fault (and closes it if phoenix has not acted yet).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::fault::{Report, Severity, Source};
use crate::effects::run_command;
use crate::sources::intake::Intake;

/// One `[[probe]]` of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Unique among probes; becomes the fault's `probe` label.
    pub name: String,
    /// The fault's `app`.
    pub app: String,
    /// The fault's `kind` (default `probe_failed`).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Exactly one of `http`, `tcp`, `exec`.
    #[serde(default)]
    pub http: Option<HttpCheck>,
    /// `host:port` to connect to.
    #[serde(default)]
    pub tcp: Option<String>,
    /// A command; exit status 0 is healthy.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default = "default_interval", with = "crate::core::forms::duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "crate::core::forms::duration")]
    pub timeout: Duration,
    /// Consecutive failures before a fault is raised.
    #[serde(default = "default_failures")]
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "default_status")]
    pub status: u16,
    /// When set, the body must contain this text.
    #[serde(default)]
    pub body_contains: Option<String>,
}

fn default_kind() -> String {
    "probe_failed".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_failures() -> u32 {
    3
}
fn default_status() -> u16 {
    200
}

impl ProbeConfig {
    /// Checks what serde cannot; the message names the probe and the key.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        let checks = usize::from(self.http.is_some())
            + usize::from(self.tcp.is_some())
            + usize::from(self.exec.is_some());
        if checks != 1 {
            return Err(format!(
                "probe `{name}`: give exactly one of `http`, `tcp`, `exec`"
            ));
        }
        if self
            .exec
            .as_ref()
            .is_some_and(|argv| argv.is_empty() || argv[0].is_empty())
        {
            return Err(format!("probe `{name}`: `exec` must name a program"));
        }
        if self.interval.is_zero() || self.timeout.is_zero() || self.failures == 0 {
            return Err(format!(
                "probe `{name}`: `interval`, `timeout` and `failures` must be positive"
            ));
        }
        self.report("")
            .validate()
            .map_err(|e| format!("probe `{name}`: {e}"))
    }

    /// The fault this probe reports; `error` is the last failure.
    fn report(&self, error: &str) -> Report {
        let target = match (&self.http, &self.tcp, &self.exec) {
            (Some(http), _, _) => http.url.clone(),
            (_, Some(addr), _) => addr.clone(),
            (_, _, Some(argv)) => argv.join(" "),
            _ => String::new(),
        };
        let mut labels = BTreeMap::new();
        labels.insert("probe".to_string(), self.name.clone());
        labels.insert("target".to_string(), truncated(&target, 1024));
        Report {
            app: self.app.clone(),
            kind: self.kind.clone(),
            labels,
            message: Some(truncated(error, crate::core::fault::MAX_MESSAGE_LEN)),
            severity: Severity::Error,
            // One fault per probe, whatever its last error says.
            dedup_key: Some(format!("probe:{}", self.name)),
            reopen_within: None,
        }
    }
}

fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Runs the check once.
pub async fn check(
    probe: &ProbeConfig,
    http: &reqwest::Client,
    work_dir: &std::path::Path,
) -> Result<(), String> {
    if let Some(check) = &probe.http {
        let response = http
            .get(&check.url)
            .timeout(probe.timeout)
            .send()
            .await
            .map_err(|e| format!("{}: {e}", check.url))?;
        let status = response.status().as_u16();
        if status != check.status {
            return Err(format!(
                "{} answered {status}, expected {}",
                check.url, check.status
            ));
        }
        if let Some(needle) = &check.body_contains {
            let body = response
                .text()
                .await
                .map_err(|e| format!("{}: {e}", check.url))?;
            if !body.contains(needle.as_str()) {
                return Err(format!("{}: body does not contain {needle:?}", check.url));
            }
        }
        return Ok(());
    }
    if let Some(addr) = &probe.tcp {
        return match tokio::time::timeout(
            probe.timeout,
            tokio::net::TcpStream::connect(addr.as_str()),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("connect {addr}: {error}")),
            Err(_) => Err(format!(
                "connect {addr}: timed out after {:?}",
                probe.timeout
            )),
        };
    }
    if let Some(argv) = &probe.exec {
        return run_command(argv, probe.timeout, work_dir, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    Err("no check configured".into())
}

/// Runs `probe` forever: reports a fault after `failures` consecutive failures, and records
/// the recovery when it passes again.
pub fn spawn(probe: ProbeConfig, intake: Intake, http: reqwest::Client, work_dir: PathBuf) {
    tokio::spawn(async move {
        let mut consecutive = 0u32;
        let mut raised = false;
        let mut ticker = tokio::time::interval(probe.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match check(&probe, &http, &work_dir).await {
                Ok(()) => {
                    if raised {
                        let detail = format!(
                            "probe `{}` healthy again after {consecutive} failures",
                            probe.name
                        );
                        tracing::info!(message = "Probe recovered.", probe = %probe.name);
                        if let Err(error) = intake.resolve(&probe.report(""), detail).await {
                            tracing::error!(message = "Cannot record probe recovery.", probe = %probe.name, %error);
                            continue; // Try again at the next healthy check.
                        }
                    }
                    consecutive = 0;
                    raised = false;
                }
                Err(error) => {
                    consecutive = consecutive.saturating_add(1);
                    if consecutive >= probe.failures && !raised {
                        tracing::warn!(message = "Probe failing; reporting a fault.", probe = %probe.name, %error, consecutive);
                        match intake
                            .submit(probe.report(&error), Source::Probe, None)
                            .await
                        {
                            Ok(_) => raised = true,
                            Err(error) => {
                                tracing::error!(message = "Cannot report probe fault.", probe = %probe.name, %error)
                            }
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(text: &str) -> Result<ProbeConfig, String> {
        let probe: ProbeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        probe.validate().map(|()| probe)
    }

    #[test]
    fn probes_need_exactly_one_check() {
        let ok = probe("name = \"p\"\napp = \"web\"\ntcp = \"127.0.0.1:1\"").unwrap();
        assert_eq!(
            (ok.failures, ok.interval, ok.kind.as_str()),
            (3, Duration::from_secs(10), "probe_failed")
        );
        let none = probe("name = \"p\"\napp = \"web\"").unwrap_err();
        assert!(none.contains("exactly one of"), "{none}");
        let two =
            probe("name = \"p\"\napp = \"web\"\ntcp = \"x:1\"\nexec = [\"true\"]").unwrap_err();
        assert!(two.contains("exactly one of"), "{two}");
        let bad_app = probe("name = \"p\"\napp = \"my app\"\ntcp = \"x:1\"").unwrap_err();
        assert!(bad_app.contains("`app` may only contain"), "{bad_app}");
    }

    #[tokio::test]
    async fn checks_pass_and_fail() {
        let http = crate::effects::http_client().unwrap();
        let dir = std::env::temp_dir();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let tcp = probe(&format!(
            "name = \"p\"\napp = \"a\"\ntcp = \"{open}\"\ntimeout = \"5s\""
        ))
        .unwrap();
        assert_eq!(check(&tcp, &http, &dir).await, Ok(()));
        drop(listener);
        let err = check(&tcp, &http, &dir).await.unwrap_err();
        assert!(err.starts_with(&format!("connect {open}")), "{err}");
        let exec = probe("name = \"p\"\napp = \"a\"\nexec = [\"sh\", \"-c\", \"exit 2\"]").unwrap();
        assert_eq!(
            check(&exec, &http, &dir).await.unwrap_err(),
            "exited with exit status: 2; stderr: "
        );
    }

    /// A loopback server that answers every request with `status` and `body`.
    async fn server(status: u16, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn http_checks_look_at_status_and_body() {
        let http = crate::effects::http_client().unwrap();
        let dir = std::env::temp_dir();
        let check_of = |url: &str, extra: &str| {
            probe(&format!(
                "name = \"p\"\napp = \"a\"\nhttp = {{ url = \"{url}\"{extra} }}"
            ))
            .unwrap()
        };
        let healthy = server(200, "status: ok").await;
        assert_eq!(
            check(&check_of(&healthy, ", body_contains = \"ok\""), &http, &dir).await,
            Ok(())
        );
        let err = check(
            &check_of(&healthy, ", body_contains = \"ready\""),
            &http,
            &dir,
        )
        .await
        .unwrap_err();
        assert!(err.ends_with("body does not contain \"ready\""), "{err}");
        let failing = server(503, "down").await;
        let err = check(&check_of(&failing, ""), &http, &dir)
            .await
            .unwrap_err();
        assert!(err.ends_with("answered 503, expected 200"), "{err}");
    }

    #[test]
    fn one_probe_is_one_fault_whatever_its_error() {
        let p = probe("name = \"p\"\napp = \"a\"\ntcp = \"x:1\"").unwrap();
        assert_eq!(
            p.report("refused").fingerprint(),
            p.report("timed out").fingerprint()
        );
    }
}
