//! Authentication and roles for the HTTP API.
//!
//! Tokens come from the config as `[[token]]` tables holding the blake3 hash of the secret, never
//! the secret itself (`phoenix token hash` prints it). A request's bearer secret is hashed and
//! compared in constant time with every token's hash. Roles are ordered: a `reporter` may report
//! and read faults of its listed apps; an `approver` may also read everything and decide on
//! approvals; an `admin` may do everything. `/healthz`, `/readyz` and `/metrics` are public.
//!
//! With no token configured, authentication is off (every caller is an anonymous admin) and the
//! daemon refuses to listen beyond loopback.

use std::net::IpAddr;
use std::sync::Arc;

use crate::core::fault::Source;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// What a token may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Reporter,
    Approver,
    Admin,
}

/// One `[[token]]` of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it; recorded as the actor of what it does (e.g. approvals).
    pub name: String,
    /// blake3 of the secret, hex (`phoenix token hash`).
    pub blake3: String,
    pub role: Role,
    /// For reporters: the apps it may report and read (`"*"`: all).
    #[serde(default)]
    pub apps: Vec<String>,
    /// Where the faults it reports come from: `api` (default), or `systemd` for the token of
    /// `phoenix-report@.service` (a policy's `match.source = "systemd"` then matches only those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl TokenConfig {
    pub fn validate(&self) -> Result<blake3::Hash, String> {
        let name = &self.name;
        if name.is_empty() || name.len() > 128 {
            return Err("`token.name` must be 1-128 characters".into());
        }
        let hash = blake3::Hash::from_hex(&self.blake3).map_err(|_| {
            format!("token `{name}`: `blake3` must be 64 hex characters (see `phoenix token hash`)")
        })?;
        if let Some(source) = self.source
            && !matches!(source, Source::Api | Source::Systemd)
        {
            return Err(format!(
                "token `{name}`: `source` may be `api` or `systemd` (`{}` faults are phoenix's own or come through their own route)",
                source.as_str()
            ));
        }
        if self.role == Role::Reporter && self.apps.is_empty() {
            return Err(format!(
                "token `{name}`: a reporter needs `apps` (or [\"*\"])"
            ));
        }
        Ok(hash)
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// None: every app.
    pub apps: Option<Vec<String>>,
    /// False when authentication is off.
    pub authenticated: bool,
    /// The source of the faults it reports (`api` unless its token says otherwise).
    pub source: Source,
}

impl Identity {
    /// Everyone, when no token is configured.
    pub fn anonymous() -> Identity {
        Identity {
            name: "anonymous".into(),
            role: Role::Admin,
            apps: None,
            authenticated: false,
            source: Source::Api,
        }
    }

    /// Who acts in a request that names `claimed` as its actor (`by`): the token's holder when
    /// authentication is on (a body cannot speak for someone else), else the name given.
    pub fn actor(&self, claimed: &str) -> String {
        if self.authenticated {
            self.name.clone()
        } else {
            claimed.trim().to_owned()
        }
    }

    pub fn may_see_app(&self, app: &str) -> bool {
        self.apps
            .as_ref()
            .is_none_or(|apps| apps.iter().any(|a| a == app))
    }
}

/// The configured tokens, hashed, and each caller's request budget.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<(blake3::Hash, TokenConfig)>,
    limits: RequestLimits,
    buckets: std::sync::Mutex<std::collections::HashMap<String, Bucket>>,
    /// Per client address (an IPv6 client by its /64): how many wrong tokens it may still try.
    failures: std::sync::Mutex<Failures>,
}

/// The failed-attempt budgets of the client addresses seen lately.
#[derive(Debug, Default)]
struct Failures {
    budgets: std::collections::HashMap<IpAddr, Bucket>,
    /// When full budgets were last dropped (at most once a second: a sweep walks them all).
    swept: Option<std::time::Instant>,
}

/// Per-caller request budget: a token bucket refilled at `requests_per_second`, holding at most
/// `burst` (`[limits]` in the config); and how many wrong tokens one client address may send a
/// minute (the same number at once), past which its requests are refused unread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    pub requests_per_second: f64,
    pub burst: f64,
    pub failed_auth_per_minute: u32,
}

impl Default for RequestLimits {
    fn default() -> RequestLimits {
        RequestLimits {
            requests_per_second: 200.0,
            burst: 400.0,
            failed_auth_per_minute: 10,
        }
    }
}

/// Client addresses whose failed attempts are remembered at most (an attacker with more
/// addresses than this goes untracked past it, and memory stays bounded).
const MAX_TRACKED_CLIENTS: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: std::time::Instant,
}

impl Bucket {
    fn full(size: f64, now: std::time::Instant) -> Bucket {
        Bucket {
            tokens: size,
            updated: now,
        }
    }

    /// Refills at `rate` a second up to `size`, then takes one if it can; when it cannot, how
    /// long until it could.
    fn take(
        &mut self,
        rate: f64,
        size: f64,
        now: std::time::Instant,
    ) -> Result<(), std::time::Duration> {
        self.refill(rate, size, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait(rate))
        }
    }

    fn refill(&mut self, rate: f64, size: f64, now: std::time::Instant) {
        let refill = now.duration_since(self.updated).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(size);
        self.updated = now;
    }

    /// How long until the bucket holds one again.
    fn wait(&self, rate: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((1.0 - self.tokens) / rate).max(0.0))
    }
}

impl Tokens {
    /// Takes one request from `caller`'s bucket; when empty, how long until the next one.
    fn take(&self, caller: &str) -> Result<(), std::time::Duration> {
        let limits = &self.limits;
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(caller.to_owned())
            .or_insert(Bucket::full(limits.burst, now))
            .take(limits.requests_per_second, limits.burst, now)
    }

    /// Failed attempts a client may make at once, and their refill rate (per second).
    fn failure_budget(&self) -> (f64, f64) {
        let per_minute = f64::from(self.limits.failed_auth_per_minute);
        (per_minute, per_minute / 60.0)
    }

    /// How long `client` must wait before phoenix looks at its token again, if it has used up
    /// its failed attempts.
    fn throttled(&self, client: IpAddr) -> Option<std::time::Duration> {
        let (size, rate) = self.failure_budget();
        let now = std::time::Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = failures.budgets.get_mut(&client_key(client))?;
        bucket.refill(rate, size, now);
        (bucket.tokens < 1.0).then(|| bucket.wait(rate))
    }

    /// Counts one wrong token from `client`.
    fn failed(&self, client: IpAddr) {
        let (size, rate) = self.failure_budget();
        let now = std::time::Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Failures { budgets, swept } = &mut *failures;
        let sweep_due = swept.is_none_or(|at| now.duration_since(at).as_secs() >= 1);
        if budgets.len() >= MAX_TRACKED_CLIENTS && sweep_due {
            // Forget the clients that have their whole budget back.
            budgets.retain(|_, bucket| {
                bucket.refill(rate, size, now);
                bucket.tokens < size
            });
            *swept = Some(now);
        }
        let key = client_key(client);
        if budgets.len() < MAX_TRACKED_CLIENTS || budgets.contains_key(&key) {
            let _ = budgets
                .entry(key)
                .or_insert(Bucket::full(size, now))
                .take(rate, size, now);
        }
    }
}

/// The address failed attempts are counted by: an IPv4 address, or an IPv6 client's /64 (one
/// host usually holds a whole /64, and could otherwise try from each of its addresses).
fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Tokens {
    /// The tokens with the default request budget.
    #[cfg(test)]
    pub fn new(configs: &[TokenConfig]) -> Result<Tokens, String> {
        Tokens::with_limits(configs, RequestLimits::default())
    }

    pub fn with_limits(configs: &[TokenConfig], limits: RequestLimits) -> Result<Tokens, String> {
        if !(limits.requests_per_second > 0.0 && limits.burst >= 1.0) {
            return Err(
                "`limits.requests_per_second` must be positive and `limits.burst` at least 1"
                    .into(),
            );
        }
        if limits.failed_auth_per_minute == 0 {
            return Err("`limits.failed_auth_per_minute` must be at least 1".into());
        }
        let mut tokens = Vec::new();
        for config in configs {
            let hash = config.validate()?;
            if tokens
                .iter()
                .any(|(_, t): &(blake3::Hash, TokenConfig)| t.name == config.name)
            {
                return Err(format!("token `{}` is declared twice", config.name));
            }
            tokens.push((hash, config.clone()));
        }
        Ok(Tokens {
            tokens,
            limits,
            buckets: Default::default(),
            failures: Default::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The identity a bearer secret belongs to. Every token is compared (in constant time), so
    /// the time taken does not tell which one, or how much of one, matched.
    pub fn identify(&self, secret: &str) -> Option<Identity> {
        let presented = blake3::hash(secret.as_bytes());
        let mut found = None;
        for (hash, config) in &self.tokens {
            // blake3::Hash's equality is constant-time.
            if presented == *hash {
                found = Some(config);
            }
        }
        found.map(|config| Identity {
            name: config.name.clone(),
            role: config.role,
            apps: (config.role == Role::Reporter && !config.apps.iter().any(|a| a == "*"))
                .then(|| config.apps.clone()),
            authenticated: true,
            source: config.source.unwrap_or(Source::Api),
        })
    }
}

/// The least role a route needs; None for public routes.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    match (method, path) {
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json") => None,
        (&Method::POST, "/v1/faults" | "/v1/alertmanager") => Some(Role::Reporter),
        (&Method::GET, "/v1/faults" | "/v1/faults/{id}" | "/v1/whoami") => Some(Role::Reporter),
        (&Method::POST, "/v1/approvals/{id}/approve" | "/v1/approvals/{id}/reject") => {
            Some(Role::Approver)
        }
        (&Method::GET, "/v1/audit" | "/v1/backup") => Some(Role::Admin),
        (&Method::GET, _) => Some(Role::Approver),
        _ => Some(Role::Admin),
    }
}

/// A refusal in the API's error format; a 401 says how to authenticate.
fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response {
    let mut response = crate::http::ApiError::new(status, code, message).into_response();
    if status == StatusCode::UNAUTHORIZED
        && let Ok(value) = header::HeaderValue::from_str("Bearer realm=\"phoenix\"")
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Middleware: authenticates the caller, checks the route's role, and hands the [`Identity`]
/// to the handler as a request extension. Counts every request by route and status.
pub async fn authenticate(state: State<Arc<Tokens>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let response = authorize(state, request, next).await;
    let status = response.status().as_u16().to_string();
    crate::core::metrics::metrics().inc(
        "phoenix_http_requests_total",
        &[("route", &route), ("status", &status)],
    );
    response
}

/// Whole seconds to wait, at least one (as `Retry-After` says it).
fn retry_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// `response` with a `Retry-After` of `wait`.
fn retry_after(mut response: Response, wait: std::time::Duration) -> Response {
    if let Ok(value) = header::HeaderValue::from_str(&retry_seconds(wait).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn authorize(
    State(tokens): State<Arc<Tokens>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(path) = path else {
        // Unmatched routes fall through to the 404 fallback.
        return next.run(request).await;
    };
    let Some(needed) = required_role(request.method(), &path) else {
        return next.run(request).await;
    };
    let identity = if tokens.enabled() {
        let secret = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(secret) = secret else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send `Authorization: Bearer <token>`",
            );
        };
        let client = request
            .extensions()
            .get::<crate::http::server::ClientAddr>()
            .map(|addr| addr.0.ip());
        // A client that guessed wrong too often is not answered on its token at all, right or
        // wrong, until its budget refills: guessing stays slow whatever it sends.
        if let Some(wait) = client.and_then(|client| tokens.throttled(client)) {
            crate::core::metrics::metrics()
                .inc("phoenix_auth_failures_total", &[("outcome", "throttled")]);
            return retry_after(
                refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_failed_attempts",
                    "too many unknown tokens from this address; retry later",
                ),
                wait,
            );
        }
        let Some(identity) = tokens.identify(secret) else {
            crate::core::metrics::metrics()
                .inc("phoenix_auth_failures_total", &[("outcome", "refused")]);
            if let Some(client) = client {
                tokens.failed(client);
            }
            return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown token");
        };
        identity
    } else {
        Identity::anonymous()
    };
    // Budgets are per token; without tokens (loopback only) there is nobody to tell apart.
    if let Some(wait) = identity
        .authenticated
        .then(|| tokens.take(&identity.name).err())
        .flatten()
    {
        let seconds = retry_seconds(wait);
        let response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!(
                "too many requests from `{}`; retry in {seconds} s",
                identity.name
            ),
        );
        return retry_after(response, wait);
    }
    if identity.role < needed {
        let message = format!(
            "token `{}` ({:?}) may not do this; it needs the {:?} role",
            identity.name, identity.role, needed
        );
        return refuse(StatusCode::FORBIDDEN, "forbidden", &message);
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, role: Role, apps: &[&str]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            blake3: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            role,
            apps: apps.iter().map(|a| a.to_string()).collect(),
            source: None,
        }
    }

    #[test]
    fn a_token_reports_as_api_or_systemd_and_never_as_phoenixs_own_sources() {
        let with_source = |source| TokenConfig {
            source: Some(source),
            ..token("units", "s", Role::Reporter, &["*"])
        };
        for own in [
            Source::Supervisor,
            Source::Probe,
            Source::Log,
            Source::Alertmanager,
        ] {
            let error = with_source(own).validate().unwrap_err();
            assert!(
                error.contains("`source` may be `api` or `systemd`"),
                "{error}"
            );
        }
        let tokens =
            Tokens::with_limits(&[with_source(Source::Systemd)], RequestLimits::default()).unwrap();
        let identity = tokens.identify("s").unwrap();
        assert_eq!(identity.source, Source::Systemd);
        let plain = Tokens::with_limits(
            &[token("app", "a", Role::Reporter, &["*"])],
            RequestLimits::default(),
        )
        .unwrap();
        assert_eq!(plain.identify("a").unwrap().source, Source::Api);
    }

    #[test]
    fn secrets_identify_their_token_and_nothing_else() {
        let tokens = Tokens::new(&[
            token("ci", "s3cret-a", Role::Reporter, &["web"]),
            token("ops", "s3cret-b", Role::Admin, &[]),
        ])
        .unwrap();
        let ci = tokens.identify("s3cret-a").unwrap();
        assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Reporter));
        assert!(ci.may_see_app("web") && !ci.may_see_app("db"));
        assert!(tokens.identify("s3cret-b").unwrap().may_see_app("db"));
        assert_eq!(tokens.identify("s3cret-c"), None);
        assert_eq!(tokens.identify(""), None);
    }

    #[test]
    fn bad_tokens_are_config_errors() {
        let mut bad = token("x", "s", Role::Admin, &[]);
        bad.blake3 = "abc".into();
        assert!(
            Tokens::new(&[bad])
                .unwrap_err()
                .contains("64 hex characters")
        );
        let reporter = token("r", "s", Role::Reporter, &[]);
        assert!(
            Tokens::new(&[reporter])
                .unwrap_err()
                .contains("needs `apps`")
        );
        let twice = token("t", "s", Role::Admin, &[]);
        assert!(
            Tokens::new(&[twice.clone(), twice])
                .unwrap_err()
                .contains("declared twice")
        );
    }

    #[test]
    fn routes_need_the_least_role_that_may_use_them() {
        assert_eq!(required_role(&Method::GET, "/healthz"), None);
        assert_eq!(
            required_role(&Method::POST, "/v1/faults"),
            Some(Role::Reporter)
        );
        assert_eq!(
            required_role(&Method::GET, "/v1/faults/{id}"),
            Some(Role::Reporter)
        );
        assert_eq!(
            required_role(&Method::GET, "/v1/approvals"),
            Some(Role::Approver)
        );
        assert_eq!(
            required_role(&Method::POST, "/v1/approvals/{id}/approve"),
            Some(Role::Approver)
        );
        assert_eq!(
            required_role(&Method::POST, "/v1/patches"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::POST, "/v1/breakers/{name}/trip"),
            Some(Role::Admin)
        );
    }

    #[test]
    fn a_client_that_guesses_wrong_too_often_is_throttled_by_its_address() {
        let limits = RequestLimits {
            failed_auth_per_minute: 3,
            ..RequestLimits::default()
        };
        let tokens = Tokens::with_limits(&[], limits).unwrap();
        let guesser: IpAddr = "192.0.2.7".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(tokens.throttled(guesser), None);
            tokens.failed(guesser);
        }
        let wait = tokens
            .throttled(guesser)
            .expect("throttled after 3 failures");
        assert!(wait > std::time::Duration::from_secs(15), "{wait:?}");
        assert_eq!(tokens.throttled(neighbour), None, "by address");
        // An IPv6 client is counted by its /64: other addresses of it share the budget.
        let v6 = |text: &str| text.parse::<IpAddr>().unwrap();
        for n in 1..=3 {
            tokens.failed(v6(&format!("2001:db8:1:2::{n}")));
        }
        assert!(tokens.throttled(v6("2001:db8:1:2::ffff")).is_some());
        assert_eq!(tokens.throttled(v6("2001:db8:1:3::1")), None);
        assert_eq!(
            client_key(v6("::ffff:192.0.2.7")),
            guesser,
            "an IPv4-mapped address is its IPv4 address"
        );
    }

    #[test]
    fn the_failures_remembered_are_bounded() {
        let tokens = Tokens::new(&[]).unwrap();
        for n in 0..(MAX_TRACKED_CLIENTS as u32 + 100) {
            tokens.failed(IpAddr::V4(std::net::Ipv4Addr::from(n)));
        }
        assert!(tokens.failures.lock().unwrap().budgets.len() <= MAX_TRACKED_CLIENTS);
    }
}
