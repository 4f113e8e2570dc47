//! Supervised programs: phoenix starts the `[[program]]`s of its config, notices each exit at
//! once (tokio's child wait, driven by SIGCHLD — no polling loop), reports it as a fault, and
//! restarts a program only when a patch's plan asks for it (`restart` action), after a backoff.
//!
//! Each program is owned by one task (an actor) fed by commands, so its child, its restart
//! count and its backoff have exactly one writer. Children run in their own process group, so
//! stopping a program stops everything it started: SIGTERM to the group, SIGKILL after
//! `stop_grace`.
//!
//! **Orphans after `kill -9` of phoenix:** the children keep running (nothing can run in a
//! SIGKILLed process). Each child's pid and kernel start time are written to
//! `data_dir/programs/NAME.json`; at the next start phoenix stops that process group (if the pid
//! still belongs to the same process) before starting a fresh child. phoenix cannot adopt them:
//! only a parent can wait for a child's exit. Under systemd, `KillMode=control-group` also
//! stops them when the unit stops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::core::fault::{Report, Severity};
use crate::core::plan::SignalName;

/// One `[[program]]` of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramConfig {
    /// Unique; the `app` of its faults.
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (relative: against the config file's folder; default: that folder).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// When set, verification after a restart waits for this URL to answer 200.
    #[serde(default)]
    pub health_url: Option<String>,
    /// Files that receive the program's output (appended); default: discarded.
    #[serde(default)]
    pub stdout: Option<PathBuf>,
    #[serde(default)]
    pub stderr: Option<PathBuf>,
    /// Backoff before the second restart of a crash loop; doubles per crash up to `backoff_max`.
    /// The first restart is immediate.
    #[serde(
        default = "default_backoff_initial",
        with = "crate::core::forms::duration"
    )]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "crate::core::forms::duration")]
    pub backoff_max: Duration,
    /// A program that ran this long before it exited was stable: its backoff resets, and its
    /// exit is a new fault rather than the recurrence of the last one.
    #[serde(
        default = "default_stable_after",
        with = "crate::core::forms::duration"
    )]
    pub stable_after: Duration,
    /// Without `health_url`, a restarted program is healthy when still running after this.
    #[serde(default = "default_start_grace", with = "crate::core::forms::duration")]
    pub start_grace: Duration,
    /// SIGTERM, then SIGKILL after this long.
    #[serde(default = "default_stop_grace", with = "crate::core::forms::duration")]
    pub stop_grace: Duration,
}

fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_stable_after() -> Duration {
    Duration::from_secs(10)
}
fn default_start_grace() -> Duration {
    Duration::from_secs(1)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(5)
}

impl ProgramConfig {
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(format!("program `{name}`: `argv` must name a program"));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(format!(
                "program `{name}`: `backoff_max` must be at least `backoff_initial`"
            ));
        }
        if self.stop_grace.is_zero() || self.stable_after.is_zero() {
            return Err(format!(
                "program `{name}`: `stop_grace` and `stable_after` must be positive"
            ));
        }
        exit_report(self, "x", Duration::ZERO)
            .validate()
            .map_err(|e| format!("program `{name}`: {e}"))
    }

    /// Delay before restart number `crashes` of a crash loop (1 = the first crash).
    pub fn backoff(&self, crashes: u32) -> Duration {
        if crashes <= 1 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(crashes - 2);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// The fault for an exit: one fault per program (the dedup key), which a crash soon after a
/// healed restart reopens.
fn exit_report(config: &ProgramConfig, how: &str, ran: Duration) -> Report {
    let mut labels = BTreeMap::new();
    labels.insert("supervisor".to_string(), "phoenix".to_string());
    if let Some(code) = how.strip_prefix("exit code ") {
        labels.insert("exit_code".to_string(), code.to_string());
    } else if let Some(signal) = how.strip_prefix("signal ") {
        labels.insert("signal".to_string(), signal.to_string());
    }
    Report {
        app: config.name.clone(),
        kind: "exited".into(),
        labels,
        message: Some(format!(
            "program `{}` exited ({how}) after {:.1}s",
            config.name,
            ran.as_secs_f64()
        )),
        severity: Severity::Error,
        dedup_key: Some(format!("program:{}", config.name)),
        reopen_within: Some(config.stable_after),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown status".into(),
    }
}

/// A program's state, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgramStatus {
    pub name: String,
    pub running: bool,
    pub pid: Option<u32>,
    /// Starts since phoenix started (the first start included).
    pub starts: u32,
    /// Crashes in the current crash loop (reset after `stable_after` of running).
    pub crash_loop: u32,
    pub uptime_ms: Option<u64>,
    pub last_exit: Option<String>,
}

/// What a restart did.
#[derive(Debug, Clone)]
pub struct Restarted {
    pub pid: u32,
    pub backoff: Duration,
}

enum Request {
    Restart(oneshot::Sender<Result<Restarted, String>>),
    Signal(Signal, oneshot::Sender<Result<(), String>>),
    Status(oneshot::Sender<ProgramStatus>),
    Stop(oneshot::Sender<()>),
}

/// Handle to every supervised program. Cheap to clone.
#[derive(Clone, Default)]
pub struct Supervisor {
    programs: Arc<BTreeMap<String, (ProgramConfig, mpsc::Sender<Request>)>>,
}

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
#[error("supervisor state dir {path}: {source}")]
pub struct SupervisorError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The system signal for a `signal` action's name (see [`SignalName`]).
pub fn signal_by_name(name: &str) -> Option<Signal> {
    Some(match SignalName::parse(name)? {
        SignalName::Hup => Signal::HUP,
        SignalName::Int => Signal::INT,
        SignalName::Quit => Signal::QUIT,
        SignalName::Usr1 => Signal::USR1,
        SignalName::Usr2 => Signal::USR2,
        SignalName::Term => Signal::TERM,
        SignalName::Kill => Signal::KILL,
        SignalName::Cont => Signal::CONT,
    })
}

impl Supervisor {
    /// Stops what a previous phoenix left running, then starts every program. Exits are sent
    /// as reports on the returned channel (the daemon forwards them to the intake).
    pub fn start(
        programs: &[ProgramConfig],
        state_dir: &Path,
        work_dir: &Path,
    ) -> Result<(Supervisor, mpsc::UnboundedReceiver<Report>), SupervisorError> {
        crate::fs::create_private_dir(state_dir).map_err(|source| SupervisorError {
            path: state_dir.to_owned(),
            source,
        })?;
        let (reports, exits) = mpsc::unbounded_channel();
        let mut handles = BTreeMap::new();
        for config in programs {
            let state_file = state_dir.join(format!("{}.json", config.name));
            stop_previous_generation(&state_file, config.stop_grace);
            let (commands, inbox) = mpsc::channel(16);
            let program = Program {
                config: config.clone(),
                work_dir: work_dir.to_owned(),
                state_file,
                child: None,
                started_at: Instant::now(),
                starts: 0,
                crash_loop: 0,
                last_exit: None,
            };
            tokio::spawn(program.run(inbox, reports.clone()));
            handles.insert(config.name.clone(), (config.clone(), commands));
        }
        Ok((
            Supervisor {
                programs: Arc::new(handles),
            },
            exits,
        ))
    }

    pub fn config(&self, name: &str) -> Option<&ProgramConfig> {
        self.programs.get(name).map(|(config, _)| config)
    }

    async fn ask<T>(
        &self,
        name: &str,
        command: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, String> {
        let (_, commands) = self
            .programs
            .get(name)
            .ok_or_else(|| format!("no supervised program `{name}`"))?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(command(reply))
            .await
            .map_err(|_| "the supervisor is shutting down".to_string())?;
        answer
            .await
            .map_err(|_| "the supervisor is shutting down".to_string())
    }

    /// Stops the program if running, waits its backoff, starts it again.
    pub async fn restart(&self, name: &str) -> Result<Restarted, String> {
        self.ask(name, Request::Restart).await?
    }

    pub async fn signal(&self, name: &str, signal: Signal) -> Result<(), String> {
        self.ask(name, |reply| Request::Signal(signal, reply))
            .await?
    }

    pub async fn status(&self, name: &str) -> Result<ProgramStatus, String> {
        self.ask(name, Request::Status).await
    }

    pub async fn statuses(&self) -> Vec<ProgramStatus> {
        let mut all = Vec::new();
        for name in self.programs.keys() {
            if let Ok(status) = self.status(name).await {
                all.push(status);
            }
        }
        all
    }

    /// Healthy after a restart: its `health_url` answers 200 within `within`, or (without one)
    /// it is still running `start_grace` after it started.
    pub async fn verify(
        &self,
        name: &str,
        within: Duration,
        interval: Duration,
        http: &reqwest::Client,
    ) -> Result<(), String> {
        let config = self
            .config(name)
            .ok_or_else(|| format!("no supervised program `{name}`"))?
            .clone();
        let deadline = Instant::now() + within;
        let Some(url) = &config.health_url else {
            let status = self.status(name).await?;
            let up = Duration::from_millis(status.uptime_ms.unwrap_or(0));
            tokio::time::sleep(config.start_grace.saturating_sub(up).min(within)).await;
            let after = self.status(name).await?;
            return if after.running && after.pid == status.pid {
                Ok(())
            } else {
                Err(format!(
                    "program `{name}` did not stay up for {:?}",
                    config.start_grace
                ))
            };
        };
        let mut last = String::from("not probed");
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match http
                .get(url)
                .timeout(left.max(Duration::from_millis(50)))
                .send()
                .await
            {
                Ok(response) if response.status().as_u16() == 200 => return Ok(()),
                Ok(response) => last = format!("{url} answered {}", response.status()),
                Err(error) => last = format!("{url}: {error}"),
            }
            tokio::time::sleep(interval.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        Err(format!(
            "program `{name}` not healthy within {within:?}; last: {last}"
        ))
    }

    /// Stops every program (SIGTERM, then SIGKILL after its grace), in parallel.
    pub async fn shutdown(&self) {
        let stops: Vec<_> = self
            .programs
            .keys()
            .map(|name| self.ask(name, Request::Stop))
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
    }
}

/// The actor owning one program.
struct Program {
    config: ProgramConfig,
    work_dir: PathBuf,
    state_file: PathBuf,
    child: Option<Child>,
    started_at: Instant,
    starts: u32,
    crash_loop: u32,
    last_exit: Option<String>,
}

/// What survives a phoenix crash: enough to find (and only find) the same process again.
#[derive(Debug, Serialize, Deserialize)]
struct Generation {
    pid: i32,
    start_time: u64,
}

impl Program {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Request>,
        reports: mpsc::UnboundedSender<Report>,
    ) {
        if let Err(error) = self.spawn() {
            tracing::error!(message = "Cannot start program.", program = %self.config.name, %error);
            self.crash_loop = 1;
            let _ = reports.send(exit_report(
                &self.config,
                &format!("failed to start: {error}"),
                Duration::ZERO,
            ));
        }
        loop {
            tokio::select! {
                status = wait(&mut self.child) => {
                    let ran = self.started_at.elapsed();
                    self.child = None;
                    let _ = std::fs::remove_file(&self.state_file);
                    let how = status.map(describe).unwrap_or_else(|e| format!("wait failed: {e}"));
                    self.crash_loop = if ran >= self.config.stable_after { 1 } else { self.crash_loop + 1 };
                    tracing::warn!(message = "Supervised program exited.", program = %self.config.name, how = %how, ran_ms = ran.as_millis() as u64, crash_loop = self.crash_loop);
                    let _ = reports.send(exit_report(&self.config, &how, ran));
                    self.last_exit = Some(how);
                }
                command = inbox.recv() => match command {
                    None => break,
                    Some(Request::Restart(reply)) => {
                        let _ = reply.send(self.restart().await);
                    }
                    Some(Request::Signal(signal, reply)) => {
                        let _ = reply.send(self.signal(signal));
                    }
                    Some(Request::Status(reply)) => {
                        let _ = reply.send(self.status());
                    }
                    Some(Request::Stop(reply)) => {
                        self.stop().await;
                        let _ = reply.send(());
                        break;
                    }
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<u32, String> {
        let config = &self.config;
        let cwd = match &config.cwd {
            Some(cwd) if cwd.is_absolute() => cwd.clone(),
            Some(cwd) => self.work_dir.join(cwd),
            None => self.work_dir.clone(),
        };
        let output = |path: &Option<PathBuf>| -> Result<Stdio, String> {
            match path {
                None => Ok(Stdio::null()),
                Some(path) => {
                    let path = if path.is_absolute() {
                        path.clone()
                    } else {
                        self.work_dir.join(path)
                    };
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map(Stdio::from)
                        .map_err(|e| format!("{}: {e}", path.display()))
                }
            }
        };
        // A relative program path with a slash means "relative to the program's cwd" here (the
        // standard library leaves that case platform-defined).
        let program = Path::new(&config.argv[0]);
        let program = if program.is_relative() && config.argv[0].contains('/') {
            cwd.join(program)
        } else {
            program.to_owned()
        };
        let mut command = Command::new(&program);
        command
            .args(&config.argv[1..])
            .envs(&config.env)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(output(&config.stdout)?)
            .stderr(output(&config.stderr)?)
            // Its own process group: a stop reaches everything it started.
            .process_group(0)
            .kill_on_drop(false);
        let child = command
            .spawn()
            .map_err(|e| format!("{}: {e}", config.argv[0]))?;
        let pid = child.id().unwrap_or(0);
        if let Some(start_time) = process_start_time(pid) {
            let generation = Generation {
                pid: pid as i32,
                start_time,
            };
            if let Ok(json) = serde_json::to_vec(&generation) {
                let _ = crate::fs::write_private(&self.state_file, &json);
            }
        }
        self.child = Some(child);
        self.started_at = Instant::now();
        self.starts += 1;
        tracing::info!(message = "Supervised program started.", program = %config.name, pid);
        Ok(pid)
    }

    async fn restart(&mut self) -> Result<Restarted, String> {
        self.stop().await;
        let backoff = self.config.backoff(self.crash_loop);
        if !backoff.is_zero() {
            tracing::info!(message = "Restart backoff.", program = %self.config.name, backoff_ms = backoff.as_millis() as u64);
            tokio::time::sleep(backoff).await;
        }
        let pid = self.spawn()?;
        Ok(Restarted { pid, backoff })
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| format!("program `{}` is not running", self.config.name))?;
        let pid = Pid::from_raw(pid as i32).ok_or("bad pid")?;
        rustix::process::kill_process_group(pid, signal).map_err(|e| e.to_string())
    }

    /// SIGTERM to the group, SIGKILL after the grace period; waits for the exit.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|pid| Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process_group(pid, Signal::TERM);
            if tokio::time::timeout(self.config.stop_grace, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(message = "Program ignored SIGTERM; killing it.", program = %self.config.name);
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
            // Also stop what it left behind in its group.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        let _ = child.wait().await;
        let _ = std::fs::remove_file(&self.state_file);
    }

    fn status(&self) -> ProgramStatus {
        let pid = self.child.as_ref().and_then(Child::id);
        ProgramStatus {
            name: self.config.name.clone(),
            running: pid.is_some(),
            pid,
            starts: self.starts,
            crash_loop: self.crash_loop,
            uptime_ms: pid.map(|_| self.started_at.elapsed().as_millis() as u64),
            last_exit: self.last_exit.clone(),
        }
    }
}

/// Waits for the child's exit, or forever when there is none.
async fn wait(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// The kernel's start time of `pid` (field 22 of /proc/PID/stat), which tells a live process
/// from a later one that reused its pid. (Public for the test harness, which stops the
/// programs a SIGKILLed phoenix leaves behind.)
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the process group a previous phoenix started, if that exact process still runs.
fn stop_previous_generation(state_file: &Path, grace: Duration) {
    let Some(generation) = std::fs::read(state_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Generation>(&b).ok())
    else {
        return;
    };
    let _ = std::fs::remove_file(state_file);
    if process_start_time(generation.pid as u32) != Some(generation.start_time) {
        return;
    }
    let Some(pid) = Pid::from_raw(generation.pid) else {
        return;
    };
    tracing::warn!(
        message = "Stopping a program left running by a previous phoenix.",
        pid = generation.pid
    );
    let _ = rustix::process::kill_process_group(pid, Signal::TERM);
    // Bounded wait at start-up only: the old process is not our child, so it cannot be awaited.
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline
        && process_start_time(generation.pid as u32).is_some()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ProgramConfig {
        toml::from_str(&format!(
            "name = \"web\"\nargv = [\"sleep\", \"60\"]\n{text}"
        ))
        .unwrap()
    }

    #[test]
    fn backoff_is_immediate_then_doubles_to_the_cap() {
        let config = config("backoff_initial = \"100ms\"\nbackoff_max = \"1s\"");
        let delays: Vec<u64> = (1..=7)
            .map(|n| config.backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            config.backoff(u32::MAX),
            Duration::from_secs(1),
            "no overflow"
        );
    }

    #[test]
    fn programs_are_validated() {
        assert_eq!(config("").validate(), Ok(()));
        let bad = config("backoff_initial = \"2s\"\nbackoff_max = \"1s\"");
        assert!(bad.validate().unwrap_err().contains("`backoff_max`"));
        let mut unnamed = config("");
        unnamed.name = "my web".into();
        assert!(
            unnamed
                .validate()
                .unwrap_err()
                .contains("`app` may only contain")
        );
    }

    #[test]
    fn exits_are_one_fault_per_program() {
        let config = config("");
        let killed = exit_report(&config, "signal 9", Duration::from_secs(1));
        let failed = exit_report(&config, "exit code 3", Duration::from_secs(1));
        assert_eq!(killed.labels["signal"], "9");
        assert_eq!(failed.labels["exit_code"], "3");
        assert_eq!(killed.fingerprint(), failed.fingerprint());
    }

    #[test]
    fn start_times_identify_live_processes() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(u32::MAX), None);
    }
}
