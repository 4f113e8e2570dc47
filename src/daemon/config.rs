//! The daemon's configuration file (`phoenix.toml`): parsing, defaults, validation, and path
//! resolution. Every key is documented in docs/configuration.md.
//!
//! Relative paths resolve against the folder holding the config file, so a config works wherever
//! the daemon is started from. With no file, [`Config::embedded_default`] uses the current
//! directory: the repository's `policies/` and `patches/`, data under `./.phoenix`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::forms::toml_error;
use crate::core::window::RateLimit;

use crate::effects::supervisor::ProgramConfig;
use crate::sandbox::Limits;
use crate::sources::alertmanager::AlertmanagerConfig;
use crate::sources::logwatch::LogConfig;
use crate::sources::probe::ProbeConfig;

/// The configuration as written in the file. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: SocketAddr,
    data_dir: PathBuf,
    policies_dir: PathBuf,
    patches_dir: PathBuf,
    workers: usize,
    max_body_bytes: usize,
    max_connections: usize,
    #[serde(with = "crate::core::forms::duration")]
    connection_idle_timeout: std::time::Duration,
    #[serde(with = "crate::core::forms::duration")]
    drain_timeout: std::time::Duration,
    #[serde(with = "crate::core::forms::duration")]
    header_timeout: std::time::Duration,
    #[serde(with = "crate::core::forms::duration")]
    body_timeout: std::time::Duration,
    max_header_bytes: usize,
    allowed_hosts: Vec<String>,
    store_cache_bytes: u64,
    min_free_bytes: u64,
    store_fsync: bool,
    sandbox: Limits,
    alertmanager: AlertmanagerConfig,
    probe: Vec<ProbeConfig>,
    log: Vec<LogConfig>,
    program: Vec<ProgramConfig>,
    breaker: crate::core::breaker::BreakerConfig,
    webhook: Vec<crate::engine::webhooks::WebhookConfig>,
    fleet: Option<crate::fleet::FleetConfig>,
    rate_limit: RateLimit,
    token: Vec<crate::http::auth::TokenConfig>,
    limits: crate::http::auth::RequestLimits,
    max_open_faults_per_app: u64,
    #[serde(with = "crate::core::forms::duration")]
    retention: std::time::Duration,
}

impl Default for RawConfig {
    fn default() -> RawConfig {
        RawConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from(".phoenix"),
            policies_dir: PathBuf::from("policies"),
            patches_dir: PathBuf::from("patches"),
            workers: 16,
            max_body_bytes: 64 << 10,
            max_connections: 512,
            connection_idle_timeout: std::time::Duration::from_secs(60),
            drain_timeout: crate::http::REQUEST_TIMEOUT,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(10),
            max_header_bytes: 16 << 10,
            allowed_hosts: Vec::new(),
            store_cache_bytes: 8 << 20,
            min_free_bytes: 64 << 20,
            store_fsync: true,
            sandbox: Limits::default(),
            alertmanager: AlertmanagerConfig::default(),
            probe: Vec::new(),
            log: Vec::new(),
            program: Vec::new(),
            breaker: crate::core::breaker::BreakerConfig {
                min_attempts: 10,
                ..Default::default()
            },
            webhook: Vec::new(),
            fleet: None,
            rate_limit: RateLimit::default(),
            token: Vec::new(),
            limits: crate::http::auth::RequestLimits::default(),
            max_open_faults_per_app: 10_000,
            retention: std::time::Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The validated configuration, with absolute paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address of the HTTP API. Port 0 picks a free port (written to `data_dir/phoenix.addr`).
    pub listen: SocketAddr,
    /// Where the store, the compiled-module cache and the address file live.
    pub data_dir: PathBuf,
    pub policies_dir: PathBuf,
    pub patches_dir: PathBuf,
    /// The folder relative paths resolve against; also the working directory of policy commands.
    pub base_dir: PathBuf,
    /// Faults healed concurrently.
    pub workers: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// HTTP connections open at once; more wait in the listen backlog (see `listener.rs`).
    pub max_connections: usize,
    /// An HTTP connection that moves no byte for this long is closed.
    pub connection_idle_timeout: std::time::Duration,
    /// At shutdown, how long open HTTP connections may take to finish.
    pub drain_timeout: std::time::Duration,
    /// A request head must arrive whole within this long (however slowly it trickles).
    pub header_timeout: std::time::Duration,
    /// A request body must arrive whole within this long once its head has.
    pub body_timeout: std::time::Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Host names, besides IP addresses and `localhost`, that requests may be addressed to
    /// (the `Host` header): what stops DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// The config file this was read from (absolute), if any: one of phoenix's own inputs,
    /// which no plan may write.
    pub config_file: Option<PathBuf>,
    /// sled page cache size.
    pub store_cache_bytes: u64,
    /// Below this much free space in the data dir, new reports are refused (507) so that the
    /// store never runs into a full disk.
    pub min_free_bytes: u64,
    /// Also fdatasync the store's log after each group flush (see `Store::fsync_each_flush`).
    pub store_fsync: bool,
    pub sandbox: Limits,
    /// Which alert labels name a fault's app and kind.
    pub alertmanager: AlertmanagerConfig,
    /// `[[probe]]`: checks run on an interval; failures become faults.
    pub probes: Vec<ProbeConfig>,
    /// `[[log]]`: followed files; matching lines become faults (paths absolute).
    pub logs: Vec<LogConfig>,
    /// `[[program]]`: programs phoenix starts and supervises.
    pub programs: Vec<ProgramConfig>,
    /// The global circuit breaker: all healing attempts, whatever the policy.
    pub breaker: crate::core::breaker::BreakerConfig,
    /// `[[webhook]]`: where events are pushed.
    pub webhooks: Vec<crate::engine::webhooks::WebhookConfig>,
    /// `[fleet]`: the NATS JetStream fleet this host joins (None: it stands alone).
    pub fleet: Option<crate::fleet::FleetConfig>,
    pub rate_limit: RateLimit,
    /// `[[token]]`: API bearer tokens (hashed). None: authentication is off, loopback only.
    pub tokens: Vec<crate::http::auth::TokenConfig>,
    /// Per-caller request budget.
    pub limits: crate::http::auth::RequestLimits,
    /// New faults of an app past this many open ones are refused (429).
    pub max_open_faults_per_app: u64,
    /// Faults that ended longer ago than this are deleted (with their history).
    pub retention: std::time::Duration,
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema; the message names the key, line and column.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// phoenix's own ground under this config, which no plan may reach.
    pub fn own_ground(&self) -> crate::effects::containment::OwnGround<'_> {
        crate::effects::containment::OwnGround {
            config_file: self.config_file.as_deref(),
            policies_dir: &self.policies_dir,
            patches_dir: &self.patches_dir,
            data_dir: &self.data_dir,
            listen: self.listen,
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let mut config = Config::parse(&text, &base).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        config.config_file = Some(std::path::absolute(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?);
        Ok(config)
    }

    /// The configuration used when `--config` is not given: defaults, relative to the current
    /// directory.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse("", Path::new(".")).map_err(|message| ConfigError::Invalid {
            path: "<default>".into(),
            message,
        })
    }

    /// Parses config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e))?;
        let base = std::path::absolute(base)
            .map_err(|e| format!("cannot resolve {}: {e}", base.display()))?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        if raw.workers == 0 || raw.workers > 1024 {
            return Err(format!(
                "`workers` must be between 1 and 1024 (got {})",
                raw.workers
            ));
        }
        if raw.max_body_bytes < 1024 || raw.max_body_bytes > 16 << 20 {
            return Err(format!(
                "`max_body_bytes` must be between 1024 and 16777216 (got {})",
                raw.max_body_bytes
            ));
        }
        if raw.max_connections == 0 || raw.max_connections > 65_536 {
            return Err(format!(
                "`max_connections` must be between 1 and 65536 (got {})",
                raw.max_connections
            ));
        }
        // Longer than any request may take, so that only a silent connection is cut.
        if raw.connection_idle_timeout <= crate::http::REQUEST_TIMEOUT {
            return Err(format!(
                "`connection_idle_timeout` must be longer than a request may take ({} s)",
                crate::http::REQUEST_TIMEOUT.as_secs()
            ));
        }
        if raw.drain_timeout.is_zero() {
            return Err("`drain_timeout` must be positive".into());
        }
        if raw.header_timeout.is_zero() || raw.header_timeout > raw.connection_idle_timeout {
            return Err(
                "`header_timeout` must be positive and at most `connection_idle_timeout`".into(),
            );
        }
        if raw.body_timeout.is_zero() || raw.body_timeout >= crate::http::REQUEST_TIMEOUT {
            return Err(format!(
                "`body_timeout` must be positive and shorter than a request may take ({} s)",
                crate::http::REQUEST_TIMEOUT.as_secs()
            ));
        }
        let head_bytes = crate::http::server::MIN_HEADER_BYTES..=1 << 20;
        if !head_bytes.contains(&raw.max_header_bytes) {
            return Err(format!(
                "`max_header_bytes` must be between {} and {} (got {})",
                head_bytes.start(),
                head_bytes.end(),
                raw.max_header_bytes
            ));
        }
        for host in &raw.allowed_hosts {
            crate::http::guard::check_host_name(host)
                .map_err(|why| format!("`allowed_hosts`: `{host}` {why}"))?;
        }
        if raw.alertmanager.app_label.is_empty() || raw.alertmanager.kind_label.is_empty() {
            return Err(
                "`alertmanager.app_label` and `alertmanager.kind_label` must not be empty".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for probe in &raw.probe {
            probe.validate()?;
            if !names.insert(("probe", probe.name.clone())) {
                return Err(format!("probe `{}` is declared twice", probe.name));
            }
        }
        for log in &raw.log {
            log.validate()?;
            if !names.insert(("log", log.name.clone())) {
                return Err(format!("log `{}` is declared twice", log.name));
            }
        }
        for program in &raw.program {
            program.validate()?;
            if !names.insert(("program", program.name.clone())) {
                return Err(format!("program `{}` is declared twice", program.name));
            }
        }
        raw.breaker.validate("breaker")?;
        crate::http::auth::Tokens::with_limits(&raw.token, raw.limits.clone())?;
        if raw.retention < std::time::Duration::from_secs(1) {
            return Err("`retention` must be at least 1s".into());
        }
        if raw.max_open_faults_per_app == 0 {
            return Err("`max_open_faults_per_app` must be positive".into());
        }
        if raw.token.is_empty() && !raw.listen.ip().is_loopback() {
            return Err(format!(
                "`listen = \"{}\"` is not a loopback address, but no [[token]] is configured: without tokens anyone could use the API (see `phoenix token new`)",
                raw.listen
            ));
        }
        if raw.rate_limit.runs_per_app == 0 || raw.rate_limit.window.is_zero() {
            return Err(
                "`rate_limit.runs_per_app` and `rate_limit.window` must be positive".into(),
            );
        }
        // Paging secrets live in files or systemd credentials (`LoadCredential=`), never here.
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        let fleet = match &raw.fleet {
            Some(fleet) => {
                fleet.validate()?;
                let mut fleet = fleet.clone();
                for file in [
                    &mut fleet.token_file,
                    &mut fleet.nkey_seed_file,
                    &mut fleet.creds_file,
                    &mut fleet.tls_ca_file,
                ] {
                    *file = file.as_deref().map(resolve);
                }
                Some(fleet)
            }
            None => None,
        };
        let mut webhooks = raw.webhook.clone();
        for webhook in &mut webhooks {
            webhook.key_file = webhook.key_file.as_deref().map(resolve);
            webhook.load(credentials.as_deref())?;
        }
        let limits = &raw.sandbox;
        if limits.fuel == 0 {
            return Err("`sandbox.fuel` must be positive".into());
        }
        if limits.deadline.is_zero() {
            return Err("`sandbox.deadline` must be positive".into());
        }
        if limits.memory_bytes < 64 << 10 {
            return Err("`sandbox.memory_bytes` must be at least 65536 (one wasm page)".into());
        }
        if limits.compile_memory_bytes < 16 << 20 {
            return Err("`sandbox.compile_memory_bytes` must be at least 16777216 (16 MiB)".into());
        }
        if limits.max_actions == 0 || limits.max_action_bytes == 0 || limits.max_module_bytes == 0 {
            return Err(
                "`sandbox.max_actions`, `max_action_bytes` and `max_module_bytes` must be positive"
                    .into(),
            );
        }
        Ok(Config {
            listen: raw.listen,
            data_dir: resolve(&raw.data_dir),
            policies_dir: resolve(&raw.policies_dir),
            patches_dir: resolve(&raw.patches_dir),
            base_dir: base.clone(),
            workers: raw.workers,
            max_body_bytes: raw.max_body_bytes,
            max_connections: raw.max_connections,
            connection_idle_timeout: raw.connection_idle_timeout,
            drain_timeout: raw.drain_timeout,
            header_timeout: raw.header_timeout,
            body_timeout: raw.body_timeout,
            max_header_bytes: raw.max_header_bytes,
            allowed_hosts: raw.allowed_hosts.clone(),
            config_file: None,
            store_cache_bytes: raw.store_cache_bytes,
            min_free_bytes: raw.min_free_bytes,
            store_fsync: raw.store_fsync,
            sandbox: raw.sandbox,
            alertmanager: raw.alertmanager,
            probes: raw.probe,
            programs: raw.program,
            breaker: raw.breaker.clone(),
            webhooks,
            fleet,
            rate_limit: raw.rate_limit.clone(),
            tokens: raw.token.clone(),
            limits: raw.limits.clone(),
            max_open_faults_per_app: raw.max_open_faults_per_app,
            retention: raw.retention,
            logs: raw
                .log
                .into_iter()
                .map(|log| LogConfig {
                    path: resolve(&log.path),
                    ..log
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_paths_resolve_against_the_config_folder() {
        let config = Config::parse(
            "data_dir = \"state\"\npatches_dir = \"/opt/p\"",
            Path::new("/etc/phoenix"),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/etc/phoenix/state"));
        assert_eq!(config.policies_dir, PathBuf::from("/etc/phoenix/policies"));
        assert_eq!(config.patches_dir, PathBuf::from("/opt/p"));
        assert_eq!(config.workers, 16);
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| Config::parse(text, Path::new("/x")).unwrap_err();
        let unknown = err("listen_addr = \"127.0.0.1:1\"");
        assert!(
            unknown.contains("unknown field `listen_addr`") && unknown.contains("line 1"),
            "{unknown}"
        );
        let bad_addr = err("listen = \"localhost\"");
        assert!(bad_addr.contains("listen"), "{bad_addr}");
        let bad_workers = err("workers = 0");
        assert!(bad_workers.contains("`workers`"), "{bad_workers}");
        let bad_type = err("workers = \"many\"");
        assert!(bad_type.contains("workers"), "{bad_type}");
        let nested = err("[sandbox]\nfuel = 1\nmemory = 5");
        assert!(nested.contains("unknown field `memory`"), "{nested}");
        let compiler = err("[sandbox]\ncompile_memory_bytes = 1000");
        assert!(
            compiler.contains("`sandbox.compile_memory_bytes`"),
            "{compiler}"
        );
        let duration = err("[sandbox]\ndeadline = \"forever\"");
        assert!(
            duration.contains("`forever` is not a duration"),
            "{duration}"
        );
    }

    #[test]
    fn probes_and_logs_are_validated_and_named_in_errors() {
        let config = Config::parse(
            "[[probe]]\nname = \"p\"\napp = \"web\"\ntcp = \"127.0.0.1:80\"\n[[log]]\nname = \"l\"\npath = \"app.log\"\npattern = \"ERROR\"\napp = \"web\"\n",
            Path::new("/etc/phoenix"),
        )
        .unwrap();
        assert_eq!(config.probes.len(), 1);
        assert_eq!(config.logs[0].path, PathBuf::from("/etc/phoenix/app.log"));
        let err = |text: &str| Config::parse(text, Path::new("/x")).unwrap_err();
        assert!(
            err("[[log]]\nname = \"l\"\npath = \"a\"\npattern = \"(\"\napp = \"w\"")
                .contains("log `l`: `pattern`")
        );
        let twice = "[[probe]]\nname = \"p\"\napp = \"w\"\ntcp = \"x:1\"\n";
        assert!(err(&format!("{twice}{twice}")).contains("probe `p` is declared twice"));
        assert!(
            err("[[probe]]\nname = \"p\"\napp = \"w\"\ntcp = \"x:1\"\nevery = \"1s\"")
                .contains("unknown field `every`")
        );
    }

    #[test]
    fn the_embedded_default_uses_the_current_directory() {
        let config = Config::embedded_default().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config.data_dir, cwd.join(".phoenix"));
        assert_eq!(config.policies_dir, cwd.join("policies"));
    }
}
