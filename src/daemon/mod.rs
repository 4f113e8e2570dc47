//! The daemon's start-up and shutdown: load config, policies and patches, open the store, start
//! the engine (which resumes open faults), serve the API until SIGTERM/SIGINT.
//!
//! Everything that can be wrong with the input is checked before the listener is bound, so a
//! bad config, policy or patch manifest exits with [`EXIT_USAGE`] and changes nothing.

pub mod config;
mod fleet;
mod inputs;
pub mod logging;
pub mod notify;
mod signals;
mod tasks;
pub mod watch;

pub use inputs::{SharedPolicies, load_inputs, load_policies};

use inputs::*;
use signals::*;
use tasks::*;

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::core::fault::Source;
use crate::core::policy::{PolicyError, PolicySet};
use crate::daemon::config::{Config, ConfigError};
use crate::daemon::watch::{Control, watch};
use crate::effects::Effects;
use crate::effects::containment::Containment;
use crate::effects::supervisor::Supervisor;
use crate::engine::{self, EngineParts};
use crate::http::{AppState, Readiness, router};
use crate::patch::registry;
use crate::patch::{PatchError, PatchSource};
use crate::sandbox::{Compiler, Sandbox, SandboxError};
use crate::sources::intake::Intake;
use crate::sources::{logwatch, probe};
use crate::store::{Store, StoreError};

/// Exit status for bad input (config, policies, patches): sysexits' EX_USAGE.
pub const EXIT_USAGE: u8 = 64;

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// One or more policy files are invalid (all are listed).
    #[error("invalid policies:\n  {}", list(.0))]
    Policies(Vec<PolicyError>),
    /// One or more patch directories are invalid (all are listed).
    #[error("invalid patches:\n  {}", list(.0))]
    Patches(Vec<PatchError>),
    /// The store could not be opened or written.
    #[error("store at {path}: {source}")]
    Store { path: String, source: StoreError },
    /// The sandbox could not be built.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The supervisor's state directory is unusable.
    #[error(transparent)]
    Supervisor(#[from] crate::effects::supervisor::SupervisorError),
    /// policies/ or patches/ cannot be watched for changes.
    #[error(transparent)]
    Watch(#[from] crate::daemon::watch::WatchError),
    /// The data directory or the listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// phoenix stopped on purpose to be started again (e.g. to reopen its store once a full
    /// disk has room again). Exit status 75 (EX_TEMPFAIL): systemd's `Restart=on-failure`
    /// starts it again.
    #[error("restart needed: {0}")]
    RestartNeeded(String),
}

/// Exit status asking the service manager for a restart: sysexits' EX_TEMPFAIL.
pub const EXIT_RESTART: u8 = 75;

fn list<E: std::fmt::Display>(errors: &[E]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl DaemonError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::Policies(_) | DaemonError::Patches(_) => {
                EXIT_USAGE
            }
            DaemonError::RestartNeeded(_) => EXIT_RESTART,
            _ => 1,
        }
    }
}

/// Runs the daemon until a shutdown signal.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    // Check the input files before creating anything (a policy's reach into phoenix's own API
    // against the configured address: with port 0, against the bound one below).
    load_inputs(&config, &Containment::new(&config.own_ground()))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Io {
            what: format!("cannot listen on {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Io {
        what: "listener address".into(),
        source,
    })?;
    create_private_dir(&config.data_dir)?;
    let addr_file = config.data_dir.join("phoenix.addr");
    let _ = std::fs::remove_file(&addr_file);
    let containment = Arc::new(Containment::new(&config.own_ground()));
    containment.set_listener(addr);

    let store_path = config.data_dir.join("store");
    let store_error = |source| DaemonError::Store {
        path: store_path.display().to_string(),
        source,
    };
    let mut store = Store::open(&store_path, config.store_cache_bytes)
        .map_err(store_error)?
        .limit_open_faults(config.max_open_faults_per_app)
        .keep_free(config.min_free_bytes);
    if config.store_fsync {
        store = store.fsync_each_flush().map_err(store_error)?;
    }
    let store = Arc::new(store);
    let sandbox = Arc::new(
        Sandbox::new(config.sandbox.clone(), config.data_dir.join("modules"))?
            .compile_with(Compiler::Subprocess("/proc/self/exe".into())),
    );
    let inputs = Arc::new(Inputs {
        config: config.clone(),
        containment: Arc::clone(&containment),
        store: Arc::clone(&store),
        sandbox: Arc::clone(&sandbox),
        policies: SharedPolicies::default(),
        readiness: Arc::new(RwLock::new(Readiness::default())),
    });
    inputs.load().await?;

    let events = crate::engine::events::Events::default();
    // Programs start now; their exits wait in `exits` until the intake exists.
    let (supervisor, mut exits) = Supervisor::start(
        &config.programs,
        &config.data_dir.join("programs"),
        &config.base_dir,
    )?;

    let fleet = match &config.fleet {
        Some(fleet) => {
            let joined = crate::fleet::Fleet::connect(fleet).await.map_err(|error| {
                DaemonError::Config(ConfigError::Invalid {
                    path: "<config>".into(),
                    message: format!("`[fleet]`: {error}"),
                })
            })?;
            tracing::info!(message = "Fleet joined (connecting in the background).", host = %joined.host(), servers = ?fleet.servers);
            let joined = Arc::new(joined);
            let warming = Arc::clone(&joined);
            tokio::spawn(async move { warming.warm_up().await });
            let beating = Arc::clone(&joined);
            tokio::spawn(async move {
                loop {
                    if let Err(error) = beating.heartbeat(env!("CARGO_PKG_VERSION")).await {
                        tracing::debug!(message = "Fleet heartbeat not sent.", %error);
                    }
                    tokio::time::sleep(crate::fleet::HEARTBEAT).await;
                }
            });
            Some(joined)
        }
        None => None,
    };
    let http = crate::effects::http_client().map_err(http_client_error)?;
    let effects = Effects::new(
        config.base_dir.clone(),
        supervisor.clone(),
        Arc::clone(&containment),
    )
    .map_err(http_client_error)?;
    let engine = engine::start(EngineParts {
        store: Arc::clone(&store),
        sandbox,
        policies: Arc::clone(&inputs.policies),
        effects,
        http,
        work_dir: config.base_dir.clone(),
        workers: config.workers,
        supervisor: supervisor.clone(),
        backup_dir: backup_dir(&config.data_dir),
        global_breaker: config.breaker.clone(),
        rate_limit: config.rate_limit.clone(),
        events: events.clone(),
        fleet: fleet.clone(),
    })
    .map_err(store_error)?;

    // Control: the watcher and SIGHUP ask for reloads; one task performs them, in order.
    let (control, mut controls) = mpsc::channel::<Control>(16);
    let _watcher = watch(
        &[config.policies_dir.clone(), config.patches_dir.clone()],
        control.clone(),
    )?;
    spawn_sighup(control);
    let reloader = Arc::clone(&inputs);
    tokio::spawn(async move {
        while let Some(Control::Reload) = controls.recv().await {
            reloader.reload().await;
        }
    });

    let http_for_webhooks = crate::effects::http_client().map_err(http_client_error)?;
    let intake = Intake::new(Arc::clone(&store), engine);
    let engine_handle = intake.engine().clone();
    let engine_watch = engine_handle.clone();
    let tokens = crate::http::auth::Tokens::with_limits(&config.tokens, config.limits.clone())
        .map_err(|message| {
            DaemonError::Config(ConfigError::Invalid {
                path: "<config>".into(),
                message,
            })
        })?;
    if !tokens.enabled() {
        tracing::warn!(
            message = "AUTHENTICATION IS OFF: no [[token]] configured, so any local process may use the API. phoenix listens on loopback only in this mode."
        );
    }
    start_sources(&config, &intake)?;
    spawn_retention(
        Arc::clone(&store),
        config.retention,
        backup_dir(&config.data_dir),
    );
    crate::engine::webhooks::spawn_webhooks(&events, config.webhooks.clone(), http_for_webhooks);
    let exit_intake = intake.clone();
    tokio::spawn(async move {
        while let Some(report) = exits.recv().await {
            if let Err(error) = exit_intake.submit(report, Source::Supervisor, None).await {
                tracing::error!(message = "Cannot record a program exit.", %error);
            }
        }
    });
    let operations = crate::engine::operations::Operations::new(
        Arc::clone(&store),
        Arc::clone(&inputs.sandbox),
        events.clone(),
        engine_handle,
    );
    if let Some(fleet) = &fleet
        && fleet.shares_approvals()
    {
        fleet::spawn_shared_decisions(Arc::clone(fleet), Arc::clone(&store), operations.clone());
    }
    let app = router(
        AppState {
            operations,
            intake,
            store,
            readiness: Arc::clone(&inputs.readiness),
            alertmanager: Arc::new(config.alertmanager.clone()),
            supervisor: supervisor.clone(),
            events: events.clone(),
            fleet,
        },
        crate::http::guard::RequestRules::new(
            &config.allowed_hosts,
            config.listen.ip().is_unspecified(),
            config.max_body_bytes,
            config.body_timeout,
        ),
        Arc::new(tokens),
    );
    let listener = crate::http::listener::GuardedListener::new(
        listener,
        config.max_connections,
        config.connection_idle_timeout,
    );
    let shutdown = ShutdownSignals::listen();
    write_addr_file(&addr_file, &addr.to_string())?;
    tracing::info!(message = "phoenix is serving.", %addr, data_dir = %config.data_dir.display());
    // Ready: store open, policies loaded, listener bound (connections queue until served).
    crate::daemon::notify::notify(&format!("READY=1\nSTATUS=serving on {addr}"));
    if let Some(interval) = crate::daemon::notify::watchdog_interval() {
        spawn_watchdog(interval, engine_watch, Arc::clone(&inputs.store));
    }
    let (restart_tx, restart_rx) = tokio::sync::oneshot::channel::<String>();
    spawn_full_disk_watch(Arc::clone(&inputs.store), restart_tx);
    let restart = Arc::new(std::sync::Mutex::new(None::<String>));
    let restart_reason = Arc::clone(&restart);
    let draining = Arc::new(tokio::sync::Notify::new());
    let drain_started = Arc::clone(&draining);
    let stop = async move {
        tokio::select! {
            () = shutdown.received() => {}
            Ok(reason) = restart_rx => {
                tracing::warn!(message = "Restarting.", %reason);
                *restart_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            }
        }
        drain_started.notify_one();
    };
    let limits = crate::http::server::HttpLimits {
        header_timeout: config.header_timeout,
        max_header_bytes: config.max_header_bytes,
    };
    let server = crate::http::server::serve(listener, app, limits, stop);
    // The drain waits for open connections, and a client can keep one from ever finishing (a
    // request sent half-way): after `drain_timeout` phoenix stops anyway.
    let drain_timeout = config.drain_timeout;
    tokio::select! {
        () = server => {}
        () = async {
            draining.notified().await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            tracing::warn!(message = "Connections still open at the drain timeout; stopping without them.", seconds = drain_timeout.as_secs());
        }
    }
    crate::daemon::notify::notify("STOPPING=1");
    tracing::info!(message = "Stopping supervised programs.");
    supervisor.shutdown().await;
    tracing::info!(message = "phoenix stopped; open faults resume at the next start.");
    match restart.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(reason) => Err(DaemonError::RestartNeeded(reason)),
        None => Ok(()),
    }
}

/// Why an HTTP client could not be built (its TLS set-up failed).
fn http_client_error(error: reqwest::Error) -> DaemonError {
    DaemonError::Io {
        what: "HTTP client".into(),
        source: std::io::Error::other(error),
    }
}

/// Creates phoenix's data dir (and its parents) if needed, and makes it private (0700): the
/// store, file backups and compiled patches are phoenix's alone, whatever the umask (or
/// systemd's `StateDirectoryMode`) made of the folder. Every folder phoenix makes inside it is
/// 0700 and every file 0600 too (sled's files are then out of reach whatever their mode).
fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| DaemonError::Io {
        what: format!("data dir {}", dir.display()),
        source,
    };
    crate::fs::create_private_dir(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes the bound address (useful with port 0) atomically, so a reader never sees half of it.
fn write_addr_file(path: &Path, addr: &str) -> Result<(), DaemonError> {
    let temp = path.with_extension("addr.tmp");
    crate::fs::write_private(&temp, addr.as_bytes())
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|source| DaemonError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        })
}
