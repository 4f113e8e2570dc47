//! Effects: carrying out one action of an allowed plan — running a declared command or sending
//! an HTTP request — with a timeout, capturing a short outcome.
//!
//! Only the engine calls this, and only for plans already checked against the policy
//! (`plan::check`); the checks here repeat the lookups they need and never widen them.

pub mod containment;
mod exec;
mod http;
pub mod supervisor;
mod write;

pub use exec::run_command;
pub use http::http_client;

use http::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::core::plan::Action;

use crate::core::fault::{FailReason, Undo};
use crate::core::plan::writable_target;
use crate::core::policy::Capabilities;
use crate::effects::containment::Containment;
use crate::effects::supervisor::{Supervisor, signal_by_name};
use crate::fs::{self, DirEntry, Found, TempName};

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EffectError {
    /// The action is not allowed by the capabilities (should have been caught by `plan::check`).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The action would reach phoenix's own files or API, which no policy can allow.
    #[error("denied: {0}")]
    ReachesPhoenix(String),
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
    /// A file could not be read, backed up, written or restored.
    #[error("file: {0}")]
    File(String),
    /// The supervised program could not be restarted or signalled.
    #[error("program: {0}")]
    Program(String),
    /// The HTTP request failed or returned a non-2xx status.
    #[error("http: {0}")]
    Http(String),
}

impl EffectError {
    /// How a fault whose action failed this way ends: `capability_denied` when it would have
    /// reached phoenix itself (it never ran), else `apply_failed`.
    pub fn fail_reason(&self) -> FailReason {
        match self {
            EffectError::ReachesPhoenix(_) => FailReason::CapabilityDenied,
            _ => FailReason::ApplyFailed,
        }
    }
}

/// Facts about the fault passed to commands as environment variables (never as argv, which the
/// policy fixes).
#[derive(Debug, Clone)]
pub struct FaultEnv {
    pub id: String,
    pub app: String,
    pub kind: String,
    /// Which patch attempt of the fault this is (1 for the first).
    pub attempt: u32,
}

impl FaultEnv {
    pub fn of(fault: &crate::core::fault::Fault) -> FaultEnv {
        FaultEnv {
            id: fault.id.clone(),
            app: fault.app.clone(),
            kind: fault.kind.clone(),
            attempt: fault.attempts,
        }
    }
}

/// Carries out actions.
#[derive(Clone)]
pub struct Effects {
    /// For `http` actions to any port but the API's.
    http: reqwest::Client,
    /// For `http` actions to the API's port: resolves names around phoenix's own listener.
    http_to_api_port: reqwest::Client,
    work_dir: PathBuf,
    supervisor: Supervisor,
    containment: Arc<Containment>,
}

impl Effects {
    /// `work_dir` is where commands run (the config file's folder); `containment` is what no
    /// action may reach.
    pub fn new(
        work_dir: PathBuf,
        supervisor: Supervisor,
        containment: Arc<Containment>,
    ) -> Result<Effects, reqwest::Error> {
        let resolver = Arc::new(ApiAvoidingResolver(Arc::clone(&containment)));
        Ok(Effects {
            http: action_http_client(None)?,
            http_to_api_port: action_http_client(Some(resolver))?,
            work_dir,
            supervisor,
            containment,
        })
    }

    /// Where commands run and relative paths resolve (the config file's folder).
    pub fn work_dir(&self) -> &std::path::Path {
        &self.work_dir
    }

    /// The first action of `plan` that would reach phoenix's own files or API, with why:
    /// checked when the plan is made, so that nobody is asked to approve it (each action is
    /// checked again when it runs).
    pub fn reaching_phoenix(&self, plan: &[Action]) -> Option<(usize, EffectError)> {
        plan.iter().enumerate().find_map(|(index, action)| {
            let refused = match action {
                Action::WriteFile { path, .. } => self.refuse_own_ground(path).err(),
                Action::Http { url, .. } => self
                    .http_client_for(url)
                    .err()
                    .filter(|e| matches!(e, EffectError::ReachesPhoenix(_))),
                _ => None,
            };
            refused.map(|error| (index, error))
        })
    }

    /// Applies one action, given the undo [`Effects::prepare_undo`] recorded for it (a write
    /// uses the temporary name recorded there); returns a one-line summary of what happened.
    pub async fn apply(
        &self,
        action: &Action,
        caps: &Capabilities,
        fault: &FaultEnv,
        undo: Option<&Undo>,
    ) -> Result<String, EffectError> {
        match action {
            Action::Exec { command, arg } => {
                let spec = caps
                    .commands
                    .get(command)
                    .filter(|spec| spec.takes(arg.as_deref()))
                    .ok_or_else(|| EffectError::NotAllowed(format!("command `{command}`")))?;
                let argv = spec.argv_with(arg.as_deref());
                let output = run_command(&argv, spec.timeout, &self.work_dir, Some(fault)).await?;
                Ok(format!(
                    "exit 0{}",
                    output.map(|o| format!("; stdout: {o}")).unwrap_or_default()
                ))
            }
            Action::WriteFile { path, content } => self.write_file(path, content, caps, undo).await,
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
                self.send_http(method, url, body.as_deref(), headers, caps)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::CommandSpec;

    fn caps(argv: &[&str], timeout: Duration) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.commands.insert(
            "c".into(),
            CommandSpec {
                args: Vec::new(),
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
            attempt: 1,
        }
    }

    /// phoenix's own ground under `base`, as a config there would put it: `phoenix.toml`,
    /// `policies/`, `patches/` and `data_dir`.
    fn containment(data_dir: &str, base: &std::path::Path) -> Arc<Containment> {
        let (config, policies, patches, data) = (
            base.join("phoenix.toml"),
            base.join("policies"),
            base.join("patches"),
            base.join(data_dir),
        );
        Arc::new(Containment::new(&crate::effects::containment::OwnGround {
            config_file: Some(&config),
            policies_dir: &policies,
            patches_dir: &patches,
            data_dir: &data,
            listen: "127.0.0.1:0".parse().unwrap(),
        }))
    }

    fn effects() -> Effects {
        let nowhere = std::path::Path::new("/phoenix-test-nowhere");
        Effects::new(
            std::env::temp_dir(),
            Supervisor::default(),
            containment(".phoenix", nowhere),
        )
        .unwrap()
    }

    /// Applies `exec` of `command` with `caps` (which declare command `c`).
    async fn exec(command: &str, caps: &Capabilities) -> Result<String, EffectError> {
        let action = Action::Exec {
            arg: None,
            command: command.into(),
        };
        effects().apply(&action, caps, &env(), None).await
    }

    /// A work dir whose `conf/file` holds "old", and a `write_file` of "new" to it.
    struct Rewrite {
        work: PathBuf,
        target: PathBuf,
        effects: Effects,
        caps: Capabilities,
        action: Action,
    }

    impl Rewrite {
        fn new(test: &str) -> Rewrite {
            let work = std::env::temp_dir().join(format!("phoenix-{test}-{}", std::process::id()));
            std::fs::create_dir_all(work.join("conf")).unwrap();
            let target = work.join("conf/file");
            std::fs::write(&target, "old").unwrap();
            let mut caps = Capabilities::default();
            caps.writable_dirs.push("conf".into());
            Rewrite {
                effects: Effects::new(
                    work.clone(),
                    Supervisor::default(),
                    containment("data", &work),
                )
                .unwrap(),
                action: Action::WriteFile {
                    path: "conf/file".into(),
                    content: "new".into(),
                },
                work,
                target,
                caps,
            }
        }

        /// Backs the file up, as the engine does before the write; returns the undo.
        async fn prepare(&self) -> Undo {
            let backup = self.work.join("backup/1-1");
            (self.effects)
                .prepare_undo(&self.action, &self.caps, &backup)
                .await
                .unwrap()
                .unwrap()
        }

        /// Backs the file up and writes "new" over it, as the engine does; returns the undo.
        async fn apply(&self) -> Undo {
            let undo = self.prepare().await;
            (self.effects)
                .apply(&self.action, &self.caps, &env(), Some(&undo))
                .await
                .unwrap();
            assert_eq!(std::fs::read_to_string(&self.target).unwrap(), "new");
            undo
        }

        async fn undo(&self, undo: &Undo) {
            self.effects.undo(undo).await.unwrap();
            assert_eq!(std::fs::read_to_string(&self.target).unwrap(), "old");
        }

        fn metadata(&self) -> std::fs::Metadata {
            std::fs::metadata(&self.target).unwrap()
        }

        /// What the target's directory holds, sorted.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.work.join("conf"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Rewrite {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }

    #[tokio::test]
    async fn what_a_crash_leaves_at_a_writes_temporary_name_is_removed() {
        let rewrite = Rewrite::new("leftover");
        let prepared = rewrite.prepare().await;
        let temp = rewrite.work.join("conf").join(prepared.temp().unwrap());
        // A crash between creating the temporary file and renaming it leaves it behind.
        let crash = || std::fs::write(&temp, "half-written").unwrap();

        // Resumed without an undo (the verification passed): the engine clears it.
        crash();
        let cleared = rewrite.effects.clear_leftover(&prepared).await.unwrap();
        assert!(cleared.unwrap().starts_with("removed the temporary file"));
        assert_eq!(rewrite.names(), ["file"]);
        assert_eq!(
            rewrite.effects.clear_leftover(&prepared).await.unwrap(),
            None
        );

        // The write run again (or a link planted at its name) removes it first, never follows it.
        std::fs::write(rewrite.work.join("secret"), "untouched").unwrap();
        std::os::unix::fs::symlink(rewrite.work.join("secret"), &temp).unwrap();
        let undo = rewrite.apply().await;
        assert_eq!(
            undo.temp(),
            prepared.temp(),
            "the same write, the same name"
        );
        assert_eq!(
            std::fs::read_to_string(rewrite.work.join("secret")).unwrap(),
            "untouched"
        );
        assert_eq!(rewrite.names(), ["file"]);

        // Rolled back: the undo removes it too.
        crash();
        rewrite.undo(&undo).await;
        assert_eq!(rewrite.names(), ["file"]);

        // A name from a damaged record is never removed unless it is phoenix's own.
        let Undo::RestoreFile { path, .. } = undo;
        let foreign = Undo::RestoreFile {
            path,
            backup: None,
            mode: None,
            owner: None,
            temp: Some("file".into()),
        };
        assert!(rewrite.effects.clear_leftover(&foreign).await.is_err());
        assert_eq!(rewrite.names(), ["file"]);
    }

    #[tokio::test]
    async fn a_written_file_keeps_its_mode_but_not_setuid_and_its_undo_restores_both() {
        use std::os::unix::fs::PermissionsExt;
        let rewrite = Rewrite::new("setuid");
        let mode = || rewrite.metadata().permissions().mode() & 0o7777;
        rustix::fs::chmod(&rewrite.target, rustix::fs::Mode::from_raw_mode(0o6750)).unwrap();
        let undo = rewrite.apply().await;
        assert_eq!(mode(), 0o750);
        rewrite.undo(&undo).await;
        assert_eq!(mode(), 0o6750);
    }

    /// Root only (CI runs as root): an unprivileged process cannot give a file away.
    #[tokio::test]
    async fn a_written_file_keeps_its_owner_and_its_undo_restores_it() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to own a file as another user");
            return;
        }
        let rewrite = Rewrite::new("owner");
        let owner = || (rewrite.metadata().uid(), rewrite.metadata().gid());
        std::os::unix::fs::chown(&rewrite.target, Some(4321), Some(8765)).unwrap();
        let undo = rewrite.apply().await;
        assert_eq!(owner(), (4321, 8765));
        std::os::unix::fs::chown(&rewrite.target, Some(0), Some(0)).unwrap();
        rewrite.undo(&undo).await;
        assert_eq!(owner(), (4321, 8765));
    }

    #[tokio::test]
    async fn exec_runs_the_declared_argv_with_the_fault_in_its_environment() {
        let caps = caps(
            &["sh", "-c", "echo $PHOENIX_FAULT_ID $PHOENIX_KIND"],
            Duration::from_secs(10),
        );
        let outcome = exec("c", &caps).await.unwrap();
        assert_eq!(outcome, "exit 0; stdout: F1 disk_full");
    }

    #[tokio::test]
    async fn a_command_is_done_when_it_exits_even_if_what_it_started_holds_its_output() {
        // A start script that leaves its server running with the script's stdout and stderr:
        // the command's outcome is its own exit, not the server's.
        let starts_a_server = caps(
            &["sh", "-c", "sleep 5 & echo started"],
            Duration::from_secs(4),
        );
        let outcome = exec("c", &starts_a_server).await;
        assert_eq!(outcome.unwrap(), "exit 0; stdout: started");
    }

    #[tokio::test]
    async fn what_a_command_leaves_running_can_still_write_its_output_after_it_exits() {
        // The server writes to the script's stdout after the script is done: phoenix keeps
        // reading (and dropping) it, so that write does not kill the server with SIGPIPE.
        let alive = std::env::temp_dir().join(format!("phoenix-alive-{}", std::process::id()));
        let script = format!(
            "(sleep 0.5; echo late; echo later >&2; touch {}) & echo started",
            alive.display()
        );
        let starts_a_server = caps(&["sh", "-c", &script], Duration::from_secs(4));
        assert_eq!(
            exec("c", &starts_a_server).await.unwrap(),
            "exit 0; stdout: started"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !alive.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the background process died writing its output"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_file(alive).unwrap();
    }

    #[tokio::test]
    async fn exec_failures_and_timeouts_are_errors() {
        let failing = caps(
            &["sh", "-c", "echo boom >&2; exit 3"],
            Duration::from_secs(10),
        );
        let err = exec("c", &failing).await.unwrap_err();
        assert_eq!(err.to_string(), "exited with exit status: 3; stderr: boom");
        let slow = caps(&["sleep", "30"], Duration::from_millis(100));
        let err = exec("c", &slow).await.unwrap_err();
        assert!(matches!(err, EffectError::Timeout(_)), "{err}");
        let undeclared = exec("x", &slow).await;
        assert!(matches!(undeclared, Err(EffectError::NotAllowed(_))));
    }

    /// A `write_file` of `path` in `rewrite`'s work dir with writable `dirs`: its outcome.
    async fn write_under(
        rewrite: &Rewrite,
        dirs: &[&str],
        path: &str,
    ) -> Result<Option<Undo>, EffectError> {
        let caps = Capabilities {
            writable_dirs: dirs.iter().map(PathBuf::from).collect(),
            ..Capabilities::default()
        };
        let action = Action::WriteFile {
            path: path.into(),
            content: "pwned".into(),
        };
        let backup = rewrite.work.join("backup/x");
        rewrite.effects.prepare_undo(&action, &caps, &backup).await
    }

    #[tokio::test]
    async fn no_write_reaches_phoenixs_own_files_whatever_the_policy_allows() {
        let rewrite = Rewrite::new("own-files");
        let work = &rewrite.work;
        std::fs::write(work.join("phoenix.toml"), "listen = \"127.0.0.1:0\"").unwrap();
        for dir in ["data/store", "policies", "patches/evil"] {
            std::fs::create_dir_all(work.join(dir)).unwrap();
        }
        let work_dir = work.display().to_string();
        // A policy the load check would refuse, given to the effects as they are: the write
        // itself is still refused.
        for (dirs, path) in [
            (vec![work_dir.as_str()], "phoenix.toml"),
            (vec!["policies"], "policies/evil.toml"),
            (vec!["patches"], "patches/evil/patch.toml"),
            (vec!["data"], "data/store/conf"),
            (vec!["data/store"], "data/store/db"),
        ] {
            let denied = write_under(&rewrite, &dirs, path).await.unwrap_err();
            assert!(
                matches!(&denied, EffectError::ReachesPhoenix(why) if why.contains("phoenix's own files")),
                "{path}: {denied}"
            );
            assert_eq!(denied.fail_reason(), FailReason::CapabilityDenied);
        }
        assert_eq!(
            std::fs::read_to_string(work.join("phoenix.toml")).unwrap(),
            "listen = \"127.0.0.1:0\""
        );
        assert!(!work.join("policies/evil.toml").exists());
        // Beside them, writes go on.
        assert!(write_under(&rewrite, &["conf"], "conf/file").await.is_ok());
    }

    #[tokio::test]
    async fn a_write_is_refused_by_the_identity_of_phoenixs_folder_not_its_path() {
        let rewrite = Rewrite::new("own-moved");
        let work = &rewrite.work;
        std::fs::create_dir_all(work.join("data/backups")).unwrap();
        // Built while the data dir is where the config says: its identity is known.
        let effects = Effects::new(
            work.clone(),
            Supervisor::default(),
            containment("data", work),
        )
        .unwrap();
        // The data dir moved under a writable folder since: no path of it is phoenix's any more.
        std::fs::rename(work.join("data"), work.join("conf/moved")).unwrap();
        let mut caps = Capabilities::default();
        caps.writable_dirs.push("conf".into());
        let action = Action::WriteFile {
            path: "conf/moved/backups/x".into(),
            content: "pwned".into(),
        };
        let denied = effects
            .prepare_undo(&action, &caps, &work.join("b"))
            .await
            .unwrap_err();
        assert!(
            denied.to_string().contains("phoenix's data_dir"),
            "{denied}"
        );
        let denied = effects
            .apply(&action, &caps, &env(), None)
            .await
            .unwrap_err();
        assert!(
            denied.to_string().contains("phoenix's data_dir"),
            "{denied}"
        );
        assert!(!work.join("conf/moved/backups/x").exists());
    }

    /// An `http` POST of `url` allowed by the policy, with phoenix's API listening at `api`.
    async fn call(api: std::net::SocketAddr, url: &str) -> Result<String, EffectError> {
        let nowhere = std::path::Path::new("/phoenix-test-nowhere");
        let containment = containment(".phoenix", nowhere);
        containment.set_listener(api);
        let effects =
            Effects::new(std::env::temp_dir(), Supervisor::default(), containment).unwrap();
        let mut caps = Capabilities::default();
        let prefix = url.rsplit_once('/').map(|(p, _)| format!("{p}/")).unwrap();
        caps.http_prefixes.push(prefix);
        let action = Action::Http {
            method: "POST".into(),
            url: url.into(),
            body: None,
            headers: std::collections::BTreeMap::new(),
        };
        effects.apply(&action, &caps, &env(), None).await
    }

    #[tokio::test]
    async fn no_http_action_reaches_phoenixs_own_api() {
        // Stands for phoenix's API: nothing may connect to it.
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = api.local_addr().unwrap();
        let port = addr.port();
        for url in [
            format!("http://127.0.0.1:{port}/v1/breakers/global/trip"),
            format!("http://localhost:{port}/v1/breakers/global/trip"),
            format!("http://0.0.0.0:{port}/v1/x"),
            format!("http://[::ffff:127.0.0.1]:{port}/v1/x"),
            format!("http://2130706433:{port}/v1/x"),
            format!("http://0x7f.1:{port}/v1/x"),
        ] {
            let denied = call(addr, &url).await.unwrap_err();
            assert!(
                matches!(&denied, EffectError::ReachesPhoenix(why) if why.contains("phoenix's own API")),
                "{url}: {denied}"
            );
        }
        // Listening on every address, each of this host's addresses is phoenix.
        let everywhere = std::net::SocketAddr::new([0, 0, 0, 0].into(), port);
        for url in [
            format!("http://127.0.0.1:{port}/v1/x"),
            format!("http://127.0.0.2:{port}/v1/x"),
        ] {
            let denied = call(everywhere, &url).await.unwrap_err();
            assert_eq!(denied.fail_reason(), FailReason::CapabilityDenied, "{url}");
        }
        let connected = tokio::time::timeout(Duration::from_millis(100), api.accept()).await;
        assert!(connected.is_err(), "an action connected to the API");
        // Another port of the same host is not phoenix: the request is sent (and refused by
        // the closed port, an ordinary failure).
        let other = call(addr, "http://127.0.0.1:9/x").await.unwrap_err();
        assert_eq!(other.fail_reason(), FailReason::ApplyFailed, "{other}");
    }
}
