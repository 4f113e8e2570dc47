//! Running a command a policy declared: its argv fixed by the policy, in the config file's
//! folder, with a clean environment (plus the fault's), stdin closed, in its own process group
//! (a timeout kills the whole group), its output captured and truncated.

use super::*;

/// Output kept from a command, per stream.
pub(super) const OUTPUT_LIMIT: usize = 2048;

/// How long phoenix waits, once a command exits, for the output it wrote to be read.
pub(super) const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(100);

/// The variables of phoenix's environment that commands inherit; everything else is dropped.
pub(super) const COMMAND_ENV: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR",
];

pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `argv` in `work_dir` with stdin closed, killing it (its whole process group) after
/// `timeout`. It is done when it exits, even if something it started in the background still
/// holds its output (that keeps running; what it writes later is read and dropped). Returns its
/// trimmed, truncated stdout (None when empty) on exit status 0.
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
        // Its own process group, so that a timeout stops everything it started.
        .process_group(0)
        .kill_on_drop(true)
        // Not phoenix's environment (tokens, NOTIFY_SOCKET…): only the basics a command needs.
        .env_clear()
        .envs(
            COMMAND_ENV
                .iter()
                .filter_map(|name| Some((*name, std::env::var_os(name)?))),
        );
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    if let Some(fault) = fault {
        command
            .env("PHOENIX_FAULT_ID", &fault.id)
            .env("PHOENIX_APP", &fault.app)
            .env("PHOENIX_KIND", &fault.kind)
            .env("PHOENIX_ATTEMPT", fault.attempt.to_string());
    }
    let mut child = command
        .spawn()
        .map_err(|source| EffectError::Spawn { program, source })?;
    let group = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
    // Read by tasks of their own: what the command leaves running in the background (a server
    // a start script launched) may hold its output open and write to it long after; it is read
    // and dropped until it closes, so those writes never fail with SIGPIPE.
    let (out, err) = (Captured::default(), Captured::default());
    let mut readers = (
        tokio::spawn(read_limited(child.stdout.take(), out.clone())),
        tokio::spawn(read_limited(child.stderr.take(), err.clone())),
    );
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            // The whole group: a shell's children would otherwise live on. (Dropping the child
            // handle also kills and reaps the direct child.)
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            return Err(EffectError::Timeout(timeout));
        }
    };
    // The command is done when it exits; what it wrote just before is read in a moment.
    let _ = tokio::time::timeout(OUTPUT_AFTER_EXIT, async {
        let _ = (&mut readers.0).await;
        let _ = (&mut readers.1).await;
    })
    .await;
    let status = status.map_err(|e| EffectError::Failed {
        status: "unknown".into(),
        stderr: e.to_string(),
    })?;
    if status.success() {
        Ok(Some(out.shown()).filter(|o| !o.is_empty()))
    } else {
        Err(EffectError::Failed {
            status: status.to_string(),
            stderr: err.shown(),
        })
    }
}

/// The first [`OUTPUT_LIMIT`] bytes of a command's stream, shared with the task reading it.
#[derive(Clone, Default)]
pub(super) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// As shown in history: trimmed text, `…` when it was cut at [`OUTPUT_LIMIT`].
    fn shown(&self) -> String {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::from_utf8_lossy(&kept).trim().to_owned();
        if kept.len() >= OUTPUT_LIMIT {
            text.push('…');
        }
        text
    }
}

/// Reads a whole stream to its end, keeping only its first [`OUTPUT_LIMIT`] bytes in `kept`
/// (so a chatty command cannot block on a full pipe, nor fill phoenix's memory).
pub(super) async fn read_limited<R: tokio::io::AsyncRead + Unpin>(
    stream: Option<R>,
    kept: Captured,
) {
    let Some(mut stream) = stream else {
        return;
    };
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut kept = kept.0.lock().unwrap_or_else(|p| p.into_inner());
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}
