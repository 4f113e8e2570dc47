//! The daemon's start-up and shutdown: load config, policies and patches, open the store, start
//! the engine (which resumes open faults), serve the API until SIGTERM/SIGINT.
//!
//! Everything that can be wrong with the input is checked before the listener is bound, so a
//! bad config, policy or patch manifest exits with [`EXIT_USAGE`] and changes nothing.

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;

use crate::api::{AppState, Readiness, router};
use crate::config::{Config, ConfigError};
use crate::effects::Effects;
use crate::engine::{self, EngineParts};
use crate::intake::Intake;
use crate::patch::{PatchError, PatchSource};
use crate::policy::{PolicyError, PolicySet};
use crate::registry;
use crate::sandbox::{Sandbox, SandboxError};
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
    /// The data directory or the listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

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
            _ => 1,
        }
    }
}

/// Loads policies and patch sources: the part of start-up that only reads input files. Reload
/// (a later issue) will reuse it.
pub fn load_inputs(config: &Config) -> Result<(PolicySet, Vec<PatchSource>), DaemonError> {
    let policies = PolicySet::load_dir(&config.policies_dir).map_err(DaemonError::Policies)?;
    let patches = PatchSource::load_all(&config.patches_dir).map_err(DaemonError::Patches)?;
    Ok((policies, patches))
}

/// Runs the daemon until a shutdown signal.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    let (policies, patches) = load_inputs(&config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| DaemonError::Io {
        what: format!("data dir {}", config.data_dir.display()),
        source,
    })?;
    let addr_file = config.data_dir.join("phoenix.addr");
    let _ = std::fs::remove_file(&addr_file);

    let store_path = config.data_dir.join("store");
    let store_error = |source| DaemonError::Store {
        path: store_path.display().to_string(),
        source,
    };
    let store = Arc::new(Store::open(&store_path, config.store_cache_bytes).map_err(store_error)?);
    let sandbox = Arc::new(Sandbox::new(
        config.sandbox.clone(),
        config.data_dir.join("modules"),
    )?);

    let patch_count = patches.len();
    for patch in patches {
        let record = registry::register_dir_patch(&store, &sandbox, patch)
            .await
            .map_err(store_error)?;
        if !record.checks_passed() {
            tracing::warn!(message = "Patch failed its static checks; it will not be used.", patch = %record.name, problems = %record.check_problems.join("; "));
        } else if !record.tests_passed() {
            tracing::warn!(message = "Patch failed its contract tests; it will not be used.", patch = %record.name);
        } else {
            tracing::info!(message = "Patch registered.", patch = %record.name, version = %record.version, hash = %record.hash);
        }
    }
    for policy in policies.iter() {
        tracing::info!(message = "Policy loaded.", policy = %policy.name, patch = %policy.patch.name);
    }
    let readiness = Arc::new(Readiness {
        policies: policies.len(),
        patches: patch_count,
    });

    let http = crate::effects::http_client().map_err(|e| DaemonError::Io {
        what: "HTTP client".into(),
        source: std::io::Error::other(e),
    })?;
    let engine = engine::start(EngineParts {
        store: Arc::clone(&store),
        sandbox,
        policies: Arc::new(RwLock::new(Arc::new(policies))),
        effects: Effects::new(http.clone(), config.base_dir.clone()),
        http,
        work_dir: config.base_dir.clone(),
        workers: config.workers,
    })
    .map_err(store_error)?;

    let intake = Intake::new(Arc::clone(&store), engine);
    let app = router(
        AppState {
            intake,
            store,
            readiness,
        },
        config.max_body_bytes,
    );
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
    write_addr_file(&addr_file, &addr.to_string())?;
    if !addr.ip().is_loopback() {
        // Authentication arrives with the operations work; until then anyone who can reach the
        // port can report faults and read them.
        tracing::warn!(message = "Listening on a non-loopback address without authentication.", %addr);
    }
    tracing::info!(message = "phoenix is serving.", %addr, data_dir = %config.data_dir.display());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| DaemonError::Io {
            what: "HTTP server".into(),
            source,
        })?;
    tracing::info!(message = "phoenix stopped; open faults resume at the next start.");
    Ok(())
}

/// Writes the bound address (useful with port 0) atomically, so a reader never sees half of it.
fn write_addr_file(path: &Path, addr: &str) -> Result<(), DaemonError> {
    let temp = path.with_extension("addr.tmp");
    std::fs::write(&temp, addr)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|source| DaemonError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        })
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(message = "Cannot listen for SIGTERM.", %error);
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!(message = "Shutdown requested; draining requests.");
}
