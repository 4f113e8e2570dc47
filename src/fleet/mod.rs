//! The fleet (opt-in: a `[fleet]` table in the config): phoenix hosts sharing a NATS JetStream
//! server or cluster. What it does today: **blast-radius budgets** — at most N hosts remediate
//! with one policy (or one app) at a time, fleet-wide, by leases in a JetStream key-value bucket.
//!
//! A budget of N is N slots, `SLOT.0` … `SLOT.N-1`. A lease is a slot created with
//! compare-and-set (`create` fails when the key exists), renewed by revision-checked `update`,
//! and released by a revision-checked delete; nothing reads then writes. The bucket's `max_age`
//! is the lease's time to live: a slot its holder stopped renewing (the host died, or lost
//! NATS) disappears by itself and can be taken again.
//!
//! **Invariant:** only this module imports `async_nats` (`tests/layers.rs`). Nothing of phoenix
//! but lease records (host, fault id, budget name) goes over NATS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OnceCell};

pub use crate::core::fault::Lease;
use crate::core::forms::duration;

/// `[fleet]` in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://…`); more than one for a cluster.
    pub servers: Vec<String>,
    /// This host's name in the fleet (default: the machine's host name).
    #[serde(default)]
    pub host: Option<String>,
    /// A file holding a NATS token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and nkey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for TLS to the servers; TLS is then required.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The prefix of the buckets phoenix creates (`PREFIX_budgets`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long a lease lives without renewal (the bucket's `max_age`). Renewed every third of
    /// it while its fault patches and tests.
    #[serde(default = "default_lease_ttl", with = "duration")]
    pub lease_ttl: Duration,
    /// Replicas of the buckets (1, or 3 or 5 on a cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// One decision for the fleet: an approval or rejection made on one host is recorded in
    /// NATS, and every host applies it to its own faults waiting on the same policy and patch.
    #[serde(default)]
    pub shared_approvals: bool,
}

/// A decision shared with the fleet: who decided what on which (policy, patch) plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedDecision {
    pub policy: String,
    pub patch_hash: String,
    pub by: String,
    pub approve: bool,
    #[serde(default)]
    pub comment: String,
    /// The host it was made on.
    pub host: String,
    pub at: crate::core::fault::Timestamp,
}

/// How long a shared decision stays in the bucket (hosts that start later still see it).
const DECISIONS_KEPT: Duration = Duration::from_secs(24 * 3600);

fn default_prefix() -> String {
    "phoenix".into()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_replicas() -> usize {
    1
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("`fleet.servers` must name at least one NATS server".into());
        }
        for server in &self.servers {
            let scheme = server.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("nats" | "tls")) {
                return Err(format!(
                    "`fleet.servers`: `{server}` must be a nats:// or tls:// URL"
                ));
            }
        }
        let auth = [&self.token_file, &self.nkey_seed_file, &self.creds_file];
        if auth.iter().filter(|a| a.is_some()).count() > 1 {
            return Err(
                "`fleet`: give at most one of `token_file`, `nkey_seed_file`, `creds_file`".into(),
            );
        }
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        if !valid_name(&self.prefix) {
            return Err("`fleet.prefix` must be 1-64 letters, digits, `-` or `_`".into());
        }
        if let Some(host) = &self.host
            && !valid_name(host)
        {
            return Err("`fleet.host` must be 1-64 letters, digits, `-` or `_`".into());
        }
        if self.lease_ttl < Duration::from_secs(3) {
            return Err("`fleet.lease_ttl` must be at least 3s".into());
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err("`fleet.replicas` must be 1, 3 or 5".into());
        }
        Ok(())
    }

    /// The host name to use: `host`, else the machine's, made a valid name.
    pub fn host_name(&self) -> String {
        if let Some(host) = &self.host {
            return host.clone();
        }
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name: String = machine
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if name.is_empty() { "host".into() } else { name }
    }
}

/// Why a fleet operation failed. The caller treats every failure as "no lease".
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn nats<E: std::fmt::Display>(error: E) -> FleetError {
    FleetError::Nats(error.to_string())
}

/// What a renewal found.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewed {
    /// Still held, at this revision now.
    Held(Lease),
    /// Someone else holds the slot, or it expired: the lease is gone.
    Lost,
}

/// The connection to the fleet. Cheap to share (`Arc`).
pub struct Fleet {
    host: String,
    config: FleetConfig,
    client: async_nats::Client,
    budgets: OnceCell<async_nats::jetstream::kv::Store>,
    hosts: OnceCell<async_nats::jetstream::kv::Store>,
    decisions: OnceCell<async_nats::jetstream::kv::Store>,
    /// Woken whenever any host gives a lease back (a waiting fault asks again at once).
    released: Arc<Notify>,
}

/// What `GET /v1/fleet` shows: this host, the hosts seen lately, and every lease held.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    pub host: String,
    /// Whether this host is connected to NATS now.
    pub connected: bool,
    /// Hosts that said they were alive within three heartbeats.
    pub hosts: Vec<serde_json::Value>,
    /// Leases held fleet-wide: slot, revision, holder.
    pub leases: Vec<serde_json::Value>,
    /// Why a part could not be read (NATS out of reach), if one could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// How often a host says it is alive; it is forgotten after three missed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The most entries a status lists (of hosts, and of leases).
const STATUS_LIMIT: usize = 1000;

/// How long one NATS request may take (a lease attempt fails, and is retried, after it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Fleet {
    /// Connects (in the background: phoenix starts and heals without NATS; lease requests fail
    /// until the connection is up).
    pub async fn connect(config: &FleetConfig) -> Result<Fleet, FleetError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|source| FleetError::Read {
                    path: path.to_owned(),
                    source,
                })
        };
        let host = config.host_name();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("phoenix@{host}"))
            .retry_on_initial_connect()
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT));
        if let Some(path) = &config.token_file {
            options = options.token(read(path)?);
        }
        if let Some(path) = &config.nkey_seed_file {
            options = options.nkey(read(path)?);
        }
        if let Some(path) = &config.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|source| FleetError::Read {
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(path) = &config.tls_ca_file {
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .map(|s| s.parse().map_err(nats))
            .collect::<Result<_, _>>()?;
        let client = options.connect(servers).await.map_err(nats)?;
        Ok(Fleet {
            host,
            config: config.clone(),
            client,
            budgets: OnceCell::new(),
            hosts: OnceCell::new(),
            decisions: OnceCell::new(),
            released: Arc::new(Notify::new()),
        })
    }

    /// Resolves when a lease of any budget is given back anywhere in the fleet (a lease that
    /// expires says nothing: waiters also retry on a timer).
    pub async fn released(&self) {
        self.released.notified().await;
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// How often a held lease is renewed.
    pub fn renew_every(&self) -> Duration {
        self.config.lease_ttl / 3
    }

    /// The budgets bucket, created (idempotently) on first use; from then on its releases are
    /// watched.
    async fn budgets(&self) -> Result<&async_nats::jetstream::kv::Store, FleetError> {
        self.budgets
            .get_or_try_init(|| async {
                let store = self
                    .bucket(
                        "budgets",
                        "phoenix blast-radius budget leases",
                        self.config.lease_ttl,
                    )
                    .await?;
                // From then on, releases anywhere wake this host's waiting faults.
                tokio::spawn(watch_releases(store.clone(), Arc::clone(&self.released)));
                Ok(store)
            })
            .await
    }

    /// The hosts bucket (heartbeats), created on first use.
    async fn hosts(&self) -> Result<&async_nats::jetstream::kv::Store, FleetError> {
        self.hosts
            .get_or_try_init(|| self.bucket("hosts", "phoenix hosts alive", HEARTBEAT * 3))
            .await
    }

    /// The bucket `PREFIX_NAME`: the one there, else made with history 1 and `max_age`.
    async fn bucket(
        &self,
        name: &str,
        description: &str,
        max_age: Duration,
    ) -> Result<async_nats::jetstream::kv::Store, FleetError> {
        let mut jetstream = async_nats::jetstream::new(self.client.clone());
        jetstream.set_timeout(REQUEST_TIMEOUT);
        let config = async_nats::jetstream::kv::Config {
            bucket: format!("{}_{name}", self.config.prefix),
            description: description.into(),
            history: 1,
            max_age,
            num_replicas: self.config.replicas,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        match jetstream.get_key_value(config.bucket.clone()).await {
            Ok(store) => Ok(store),
            Err(_) => jetstream.create_key_value(config).await.map_err(nats),
        }
    }

    /// Opens the buckets (and the watch of releases) now, retrying until NATS answers, so that
    /// a fault's first lease request is one request, not several.
    pub async fn warm_up(&self) {
        loop {
            let ready = self.budgets().await.is_ok()
                && (!self.config.shared_approvals || self.decisions().await.is_ok());
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Whether decisions are shared with the fleet (`shared_approvals`).
    pub fn shares_approvals(&self) -> bool {
        self.config.shared_approvals
    }

    async fn decisions(&self) -> Result<&async_nats::jetstream::kv::Store, FleetError> {
        self.decisions
            .get_or_try_init(|| {
                self.bucket(
                    "approvals",
                    "phoenix decisions shared by the fleet",
                    DECISIONS_KEPT,
                )
            })
            .await
    }

    /// Records `decision` for the fleet: one key per (plan, decider), so a quorum counts
    /// distinct people fleet-wide.
    pub async fn share_decision(&self, decision: &SharedDecision) -> Result<(), FleetError> {
        let plan = blake3::hash(format!("{}\n{}", decision.policy, decision.patch_hash).as_bytes());
        let by = blake3::hash(decision.by.as_bytes());
        let key = format!("{}.{}", &plan.to_hex()[..24], &by.to_hex()[..16]);
        let value = serde_json::to_vec(decision).map_err(nats)?;
        self.decisions()
            .await?
            .put(key, value.into())
            .await
            .map(|_| ())
            .map_err(nats)
    }

    /// Every shared decision, those recorded before first (within a day), then new ones as
    /// they come, until the connection ends (call again then).
    pub async fn decisions_stream(
        &self,
    ) -> Result<impl futures_util::Stream<Item = SharedDecision> + use<>, FleetError> {
        use futures_util::StreamExt;
        let watch = self.decisions().await?.watch_all().await.map_err(nats)?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok()?;
            (entry.operation == async_nats::jetstream::kv::Operation::Put)
                .then(|| serde_json::from_slice(&entry.value).ok())
                .flatten()
        }))
    }

    /// Says this host is alive (`version`: phoenix's).
    pub async fn heartbeat(&self, version: &str) -> Result<(), FleetError> {
        let value = serde_json::json!({
            "host": self.host,
            "version": version,
            "at": crate::core::fault::Timestamp::now(),
        });
        self.hosts()
            .await?
            .put(&self.host, value.to_string().into())
            .await
            .map(|_| ())
            .map_err(nats)
    }

    /// This host, the hosts seen lately and every lease held (each list at most 1000).
    pub async fn status(&self) -> FleetStatus {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let mut status = FleetStatus {
            host: self.host.clone(),
            connected,
            hosts: Vec::new(),
            leases: Vec::new(),
            problem: None,
        };
        let read = async {
            status.hosts = entries(self.hosts().await?).await?;
            status.leases = entries(self.budgets().await?).await?;
            Ok::<_, FleetError>(())
        };
        if let Err(error) = tokio::time::timeout(REQUEST_TIMEOUT * 2, read)
            .await
            .unwrap_or_else(|_| Err(FleetError::Nats("timed out".into())))
        {
            status.problem = Some(error.to_string());
        }
        status
    }

    /// Takes a free slot of `budget` (at most `max` held at once, fleet-wide) for `fault`, or
    /// None when all are held.
    pub async fn acquire(
        &self,
        budget: &str,
        max: u32,
        fault: &str,
    ) -> Result<Option<Lease>, FleetError> {
        let store = self.budgets().await?;
        let value = self.holder(budget, fault);
        for slot in 0..max {
            let key = slot_key(budget, slot);
            match store.create(&key, value.clone().into()).await {
                Ok(revision) => return Ok(Some(Lease { key, revision })),
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                    continue;
                }
                Err(e) => return Err(nats(e)),
            }
        }
        Ok(None)
    }

    /// Renews `lease` (held for `fault`): a write that succeeds only if nobody wrote the slot
    /// since.
    pub async fn renew(
        &self,
        budget: &str,
        lease: &Lease,
        fault: &str,
    ) -> Result<Renewed, FleetError> {
        let store = self.budgets().await?;
        let value = self.holder(budget, fault);
        match store.update(&lease.key, value.into(), lease.revision).await {
            Ok(revision) => Ok(Renewed::Held(Lease {
                key: lease.key.clone(),
                revision,
            })),
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Renewed::Lost)
            }
            Err(e) => Err(nats(e)),
        }
    }

    /// Gives back `lease` of `budget`, held for `fault` (only if still ours: a slot taken over
    /// since is left alone). A renewal that landed after its revision was last read (the
    /// renewer stopped mid-request) is recognised by the holder written, and deleted at its own
    /// revision, rather than left to expire.
    pub async fn release(
        &self,
        lease: &Lease,
        budget: &str,
        fault: &str,
    ) -> Result<(), FleetError> {
        use async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision;
        let store = self.budgets().await?;
        match store
            .delete_expect_revision(&lease.key, Some(lease.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == WrongLastRevision => {
                let Some(entry) = store.entry(lease.key.clone()).await.map_err(nats)? else {
                    return Ok(());
                };
                let ours = entry.operation == async_nats::jetstream::kv::Operation::Put
                    && entry.value.as_ref() == self.holder(budget, fault).as_bytes();
                if !ours {
                    return Ok(());
                }
                match store
                    .delete_expect_revision(&lease.key, Some(entry.revision))
                    .await
                {
                    Err(e) if e.kind() != WrongLastRevision => Err(nats(e)),
                    _ => Ok(()),
                }
            }
            Err(e) => Err(nats(e)),
        }
    }

    fn holder(&self, budget: &str, fault: &str) -> String {
        serde_json::json!({ "host": self.host, "fault": fault, "budget": budget }).to_string()
    }
}

/// Wakes `released`'s waiters at every delete in the budgets bucket, for as long as phoenix
/// runs (the watch is made again after an error).
async fn watch_releases(store: async_nats::jetstream::kv::Store, released: Arc<Notify>) {
    use futures_util::StreamExt;
    loop {
        match store.watch_all().await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry)
                            if entry.operation != async_nats::jetstream::kv::Operation::Put =>
                        {
                            released.notify_waiters();
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            Err(error) => tracing::debug!(message = "Cannot watch fleet releases.", %error),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every entry of `store` (at most [`STATUS_LIMIT`]): its key, revision and JSON value.
async fn entries(
    store: &async_nats::jetstream::kv::Store,
) -> Result<Vec<serde_json::Value>, FleetError> {
    use futures_util::StreamExt;
    let mut keys = store.keys().await.map_err(nats)?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(nats)?;
        if let Some(entry) = store.entry(key.clone()).await.map_err(nats)?
            && entry.operation == async_nats::jetstream::kv::Operation::Put
        {
            let value = serde_json::from_slice(&entry.value).unwrap_or(serde_json::Value::Null);
            out.push(serde_json::json!({ "key": key, "revision": entry.revision, "value": value }));
        }
        if out.len() >= STATUS_LIMIT {
            break;
        }
    }
    Ok(out)
}

/// The key of `slot` of `budget`: KV keys allow `[-/_=.A-Za-z0-9]`, budget names (`policy:NAME`,
/// `app:NAME`) may hold more, so the name is a readable part plus a digest of the whole.
pub fn slot_key(budget: &str, slot: u32) -> String {
    let readable: String = budget
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let digest = blake3::hash(budget.as_bytes()).to_hex();
    format!("{readable}-{}.{slot}", &digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<FleetConfig, String> {
        let config: FleetConfig =
            toml::from_str(&format!("servers = [\"nats://127.0.0.1:4222\"]\n{extra}"))
                .map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn the_fleet_config_refuses_what_cannot_work() {
        let refused = |extra: &str, why: &str| {
            let error = config(extra).unwrap_err();
            assert!(error.contains(why), "{extra}: {error}");
        };
        assert!(
            toml::from_str::<FleetConfig>("servers = []")
                .unwrap()
                .validate()
                .unwrap_err()
                .contains("at least one")
        );
        refused("lease_ttl = \"1s\"", "at least 3s");
        refused("replicas = 2", "1, 3 or 5");
        refused("prefix = \"a.b\"", "`fleet.prefix`");
        refused("host = \"\"", "`fleet.host`");
        refused("token_file = \"/t\"\ncreds_file = \"/c\"", "at most one of");
        refused("password = \"x\"", "unknown field");
        let bad_url: FleetConfig = toml::from_str("servers = [\"http://h:4222\"]").unwrap();
        assert!(
            bad_url
                .validate()
                .unwrap_err()
                .contains("nats:// or tls://")
        );
        let ok = config("").unwrap();
        assert_eq!(ok.lease_ttl, Duration::from_secs(30));
        assert_eq!(ok.prefix, "phoenix");
    }

    #[test]
    fn slot_keys_are_valid_kv_keys_and_distinct_per_budget() {
        let a = slot_key("policy:restart unit@x", 0);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b)),
            "{a}"
        );
        assert_ne!(slot_key("policy:a_b", 0), slot_key("policy:a:b", 0));
        assert_ne!(slot_key("policy:a", 0), slot_key("policy:a", 1));
    }
}
