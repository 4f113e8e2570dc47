//! Effects: carrying out one action of an allowed plan — running a declared command or sending
//! an HTTP request — with a timeout, capturing a short outcome.
//!
//! Only the engine calls this, and only for plans already checked against the policy
//! (`plan::check`); the checks here repeat the lookups they need and never widen them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::plan::Action;
use crate::policy::Capabilities;
use crate::supervisor::{Supervisor, signal_by_name};

/// Output kept from a command, per stream.
const OUTPUT_LIMIT: usize = 2048;
/// Timeout of an `http` action.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EffectError {
    /// The action is not allowed by the capabilities (should have been caught by `plan::check`).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The command could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The command ran past its timeout and was killed.
    #[error("timed out after {0:?} and was killed")]
    Timeout(Duration),
    /// The command exited unsuccessfully.
    #[error("exited with {status}; stderr: {stderr}")]
    Failed { status: String, stderr: String },
    /// The supervised program could not be restarted or signalled.
    #[error("program: {0}")]
    Program(String),
    /// The HTTP request failed or returned a non-2xx status.
    #[error("http: {0}")]
    Http(String),
}

/// The HTTP client for effects and probes: rustls with the ring provider (installed here, once
/// per process, because reqwest is built without a default provider).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build()
}

/// Facts about the fault passed to commands as environment variables (never as argv, which the
/// policy fixes).
#[derive(Debug, Clone)]
pub struct FaultEnv {
    pub id: String,
    pub app: String,
    pub kind: String,
}

/// Carries out actions.
#[derive(Clone)]
pub struct Effects {
    http: reqwest::Client,
    work_dir: PathBuf,
    supervisor: Supervisor,
}

impl Effects {
    /// `work_dir` is where commands run (the config file's folder).
    pub fn new(http: reqwest::Client, work_dir: PathBuf, supervisor: Supervisor) -> Effects {
        Effects {
            http,
            work_dir,
            supervisor,
        }
    }

    /// Applies one action; returns a one-line summary of what happened.
    pub async fn apply(
        &self,
        action: &Action,
        caps: &Capabilities,
        fault: &FaultEnv,
    ) -> Result<String, EffectError> {
        match action {
            Action::Exec { command } => {
                let spec = caps
                    .commands
                    .get(command)
                    .ok_or_else(|| EffectError::NotAllowed(format!("command `{command}`")))?;
                let output =
                    run_command(&spec.argv, spec.timeout, &self.work_dir, Some(fault)).await?;
                Ok(format!(
                    "exit 0{}",
                    output.map(|o| format!("; stdout: {o}")).unwrap_or_default()
                ))
            }
            Action::Restart { program } => {
                if !caps.covers_program(program) {
                    return Err(EffectError::NotAllowed(format!("program `{program}`")));
                }
                let restarted = self
                    .supervisor
                    .restart(program)
                    .await
                    .map_err(EffectError::Program)?;
                Ok(format!(
                    "restarted, pid {} (backoff {} ms)",
                    restarted.pid,
                    restarted.backoff.as_millis()
                ))
            }
            Action::Signal { program, signal } => {
                let known = signal_by_name(signal);
                let Some(sig) = known.filter(|_| caps.covers_program(program)) else {
                    return Err(EffectError::NotAllowed(format!(
                        "signal {signal} to `{program}`"
                    )));
                };
                self.supervisor
                    .signal(program, sig)
                    .await
                    .map_err(EffectError::Program)?;
                Ok(format!("sent {signal}"))
            }
            Action::Http {
                method,
                url,
                body,
                headers,
            } => {
                let method = reqwest::Method::from_bytes(method.as_bytes())
                    .map_err(|e| EffectError::NotAllowed(format!("method {method}: {e}")))?;
                let mut request = self.http.request(method, url).timeout(HTTP_TIMEOUT);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                if let Some(body) = body {
                    request = request.body(body.clone());
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| EffectError::Http(e.to_string()))?;
                let status = response.status();
                if status.is_success() {
                    Ok(format!("HTTP {}", status.as_u16()))
                } else {
                    Err(EffectError::Http(format!("{url} answered {status}")))
                }
            }
        }
    }
}

/// Runs `argv` in `work_dir` with stdin closed, killing it after `timeout`. Returns its trimmed,
/// truncated stdout (None when empty) on exit status 0.
pub async fn run_command(
    argv: &[String],
    timeout: Duration,
    work_dir: &std::path::Path,
    fault: Option<&FaultEnv>,
) -> Result<Option<String>, EffectError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&argv[1..])
        .current_dir(work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(fault) = fault {
        command
            .env("PHOENIX_FAULT_ID", &fault.id)
            .env("PHOENIX_APP", &fault.app)
            .env("PHOENIX_KIND", &fault.kind);
    }
    let mut child = command
        .spawn()
        .map_err(|source| EffectError::Spawn { program, source })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let (out, err, status) =
            tokio::join!(read_limited(stdout), read_limited(stderr), child.wait());
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        // Dropping the future drops the child handle, whose kill_on_drop kills it.
        Err(_) => return Err(EffectError::Timeout(timeout)),
    };
    let status = status.map_err(|e| EffectError::Failed {
        status: "unknown".into(),
        stderr: e.to_string(),
    })?;
    if status.success() {
        Ok(Some(out).filter(|o| !o.is_empty()))
    } else {
        Err(EffectError::Failed {
            status: status.to_string(),
            stderr: err,
        })
    }
}

/// Reads a whole stream but keeps only its first [`OUTPUT_LIMIT`] bytes (so a chatty command
/// cannot block on a full pipe, nor fill phoenix's memory).
async fn read_limited<R: tokio::io::AsyncRead + Unpin>(stream: Option<R>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).trim().to_owned();
    if kept.len() >= OUTPUT_LIMIT {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::CommandSpec;

    fn caps(argv: &[&str], timeout: Duration) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.commands.insert(
            "c".into(),
            CommandSpec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                timeout,
            },
        );
        caps
    }

    fn env() -> FaultEnv {
        FaultEnv {
            id: "F1".into(),
            app: "demo".into(),
            kind: "disk_full".into(),
        }
    }

    fn effects() -> Effects {
        Effects::new(
            http_client().unwrap(),
            std::env::temp_dir(),
            Supervisor::default(),
        )
    }

    #[tokio::test]
    async fn exec_runs_the_declared_argv_with_the_fault_in_its_environment() {
        let caps = caps(
            &["sh", "-c", "echo $PHOENIX_FAULT_ID $PHOENIX_KIND"],
            Duration::from_secs(10),
        );
        let outcome = effects()
            .apply(
                &Action::Exec {
                    command: "c".into(),
                },
                &caps,
                &env(),
            )
            .await
            .unwrap();
        assert_eq!(outcome, "exit 0; stdout: F1 disk_full");
    }

    #[tokio::test]
    async fn exec_failures_and_timeouts_are_errors() {
        let failing = caps(
            &["sh", "-c", "echo boom >&2; exit 3"],
            Duration::from_secs(10),
        );
        let err = effects()
            .apply(
                &Action::Exec {
                    command: "c".into(),
                },
                &failing,
                &env(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "exited with exit status: 3; stderr: boom");
        let slow = caps(&["sleep", "30"], Duration::from_millis(100));
        let err = effects()
            .apply(
                &Action::Exec {
                    command: "c".into(),
                },
                &slow,
                &env(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, EffectError::Timeout(_)), "{err}");
        let undeclared = effects()
            .apply(
                &Action::Exec {
                    command: "x".into(),
                },
                &slow,
                &env(),
            )
            .await;
        assert!(matches!(undeclared, Err(EffectError::NotAllowed(_))));
    }
}
