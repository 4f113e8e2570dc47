//! Command-line interface: the daemon (`serve`), offline tools (`check`, `patch test`,
//! `token`), and the client commands that talk to a running daemon (see `client.rs`).

/// `println!` for the CLI's output: a reader that went away (`phoenix faults list | head`)
/// ends the command quietly instead of a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod client;
mod patch;
mod upload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use phoenix::daemon::config::Config;
use phoenix::daemon::{self, DaemonError, EXIT_USAGE};
use phoenix::patch::registry::{TestResult, evaluate};
use phoenix::sandbox::Sandbox;

#[derive(Debug, Parser)]
#[command(name = "phoenix", version, about = "A self-healing supervisor daemon")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: crate::cli::client::Connection,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file (TOML). Without it: ./policies, ./patches, data in ./.phoenix.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate config, policies and patches offline (static checks and contract tests).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Work with one patch: new, build, test.
    Patch {
        #[command(subcommand)]
        command: patch::PatchCommand,
    },
    /// Replace a stopped daemon's store with a backup (`phoenix backup`).
    Restore {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
    /// API tokens for `[[token]]` in the config.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    #[command(flatten)]
    Client(crate::cli::client::ClientCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Write phoenix's man pages (roff: phoenix.1 and one per subcommand) into a folder.
    #[command(hide = true)]
    Manpages {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Internal: the daemon's patch compiler child (module on stdin, artifact on stdout).
    #[command(hide = true)]
    CompilePatch {
        /// The sandbox limits, as JSON.
        #[arg(long)]
        limits: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print the blake3 hash of a secret read from standard input (for `[[token]] blake3`).
    Hash,
    /// Make a new random secret; print it and its hash (the secret is shown only once).
    New,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn parse() -> Cli {
    Cli::parse()
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config, log_format } => {
            phoenix::daemon::logging::init(matches!(log_format, LogFormat::Json));
            serve(config.as_deref())
        }
        Command::Check { config } => report(check(config.as_deref())),
        Command::Patch { command } => report(patch::run(command)),
        Command::Token { command } => report(token(command)),
        Command::Restore { config, from } => report(restore(config.as_deref(), &from)),
        Command::Client(command) => crate::cli::client::run(cli.connection, command),
        Command::CompilePatch { limits } => phoenix::sandbox::compile_child(&limits),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "phoenix", &mut script);
            write_out(format_args!("{}", String::from_utf8_lossy(&script)));
            ExitCode::SUCCESS
        }
        Command::Manpages { dir } => report(manpages(&dir)),
    }
}

/// Writes to standard output. When the reader has gone (a closed pipe), the command ends here
/// with status 0, as if its output had been read; any other failure to write ends it with 74
/// (sysexits' EX_IOERR).
pub(crate) fn write_out(text: std::fmt::Arguments) {
    use std::io::Write;
    let written = std::io::stdout().lock().write_fmt(text);
    if let Err(error) = written.and_then(|()| std::io::stdout().flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("phoenix: cannot write the output: {error}");
        std::process::exit(74);
    }
}

/// Writes the man pages into `dir`: `phoenix.1` and one per subcommand (`phoenix-serve.1`…),
/// from the clap definitions, so they cannot drift from `--help`.
fn manpages(dir: &Path) -> anyhow::Result<bool> {
    let command = <Cli as clap::CommandFactory>::command();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))?;
    Ok(true)
}

fn load_config(path: Option<&Path>) -> Result<Config, DaemonError> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default()?,
    })
}

fn serve(config: Option<&Path>) -> ExitCode {
    let result = load_config(config).and_then(|config| {
        let runtime = tokio::runtime::Runtime::new().map_err(|source| DaemonError::Io {
            what: "tokio runtime".into(),
            source,
        })?;
        runtime.block_on(daemon::serve(config))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Plain stderr, not the log: it must be readable even before logging is set up.
            eprintln!("phoenix: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Prints an anyhow error chain and maps it to an exit code (64 for bad input).
fn report(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("phoenix: {error:#}");
            let usage = error
                .downcast_ref::<DaemonError>()
                .map(DaemonError::exit_code);
            ExitCode::from(usage.unwrap_or(EXIT_USAGE))
        }
    }
}

pub(crate) fn scratch_sandbox(config: &Config) -> anyhow::Result<(Sandbox, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("phoenix-check-{}", std::process::id()));
    let sandbox =
        Sandbox::new(config.sandbox.clone(), dir.clone()).context("building the sandbox")?;
    Ok((sandbox, dir))
}

/// Prints each test result; returns true when the patch is usable.
pub(crate) fn print_evaluation(name: &str, problems: &[String], tests: &[TestResult]) -> bool {
    for problem in problems {
        say!("FAIL {name}: static check: {problem}");
    }
    for test in tests {
        if test.passed {
            say!("ok   {name}: {}", test.name);
        } else {
            say!("FAIL {name}: {}: {}", test.name, test.detail);
        }
    }
    problems.is_empty() && tests.iter().all(|t| t.passed)
}

fn check(config: Option<&Path>) -> anyhow::Result<bool> {
    let config = load_config(config)?;
    // The containment check against the configured address (a running daemon's, when its
    // listen port is fixed).
    let containment = phoenix::effects::containment::Containment::new(&config.own_ground());
    let (policies, patches) = daemon::load_inputs(&config, &containment)?;
    let (sandbox, scratch) = scratch_sandbox(&config)?;
    let mut ok = true;
    for patch in &patches {
        if let Some(source) = &patch.manifest.source {
            let stale = phoenix::patch::build::needs_build(&patch.dir, &patch.manifest);
            say!(
                "{}: {} from {}{}",
                patch.manifest.name,
                source.language.as_str(),
                source.path,
                if stale {
                    " (patch.wasm is not built from this source: `phoenix patch build` it)"
                } else {
                    ""
                }
            );
        }
        let (problems, tests) = evaluate(&sandbox, patch);
        ok &= print_evaluation(&patch.manifest.name, &problems, &tests);
    }
    for policy in policies.iter() {
        if !patches.iter().any(|p| p.manifest.name == policy.patch.name) {
            say!(
                "FAIL policy {}: patch `{}` is not in {}",
                policy.name,
                policy.patch.name,
                config.patches_dir.display()
            );
            ok = false;
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
    say!(
        "{}: {} policies, {} patches",
        if ok { "ok" } else { "FAILED" },
        policies.len(),
        patches.len()
    );
    Ok(ok)
}

/// Offline: the daemon must be stopped (its store is locked while it runs).
fn restore(config: Option<&Path>, from: &Path) -> anyhow::Result<bool> {
    let config = load_config(config)?;
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let entries = phoenix::store::backup::decode(&text)
        .with_context(|| format!("{} is not a usable backup", from.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let count = runtime.block_on(async {
        let store_path = config.data_dir.join("store");
        phoenix::fs::create_private_dir(&config.data_dir)?;
        let store = phoenix::store::Store::open(&store_path, config.store_cache_bytes)
            .with_context(|| {
                format!(
                    "opening {} (is phoenix still running?)",
                    store_path.display()
                )
            })?;
        anyhow::Ok(store.restore(entries).await?)
    })?;
    say!(
        "restored {count} entries into {}",
        config.data_dir.display()
    );
    Ok(true)
}

fn token(command: TokenCommand) -> anyhow::Result<bool> {
    use std::io::Read;
    let secret = match command {
        TokenCommand::Hash => {
            let mut secret = String::new();
            std::io::stdin()
                .read_to_string(&mut secret)
                .context("reading the secret from standard input")?;
            secret.trim_end_matches(['\n', '\r']).to_owned()
        }
        TokenCommand::New => {
            let mut bytes = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut random| random.read_exact(&mut bytes))
                .context("reading /dev/urandom")?;
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            say!("secret: {secret}");
            secret
        }
    };
    anyhow::ensure!(!secret.is_empty(), "the secret is empty");
    say!("blake3: {}", blake3::hash(secret.as_bytes()).to_hex());
    Ok(true)
}
