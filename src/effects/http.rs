//! HTTP for actions, probes and webhooks: the clients, and for a plan's `http` actions the
//! resolver that leaves out phoenix's own listener and the request itself (no proxy, no
//! redirect, the policy's timeout).

use super::*;

/// An `http` action refused because its address is phoenix's own API.
pub(super) fn api_refused(url: &str) -> EffectError {
    EffectError::ReachesPhoenix(format!(
        "`{url}` is phoenix's own API: no plan may call phoenix itself"
    ))
}

/// The HTTP client for probes and webhooks (URLs the operator wrote): rustls with the ring
/// provider (installed here, once per process, because reqwest is built without a default
/// provider).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build()
}

/// An HTTP client for a plan's `http` actions. It never follows a redirect: the policy allowed
/// the URL the patch named, not wherever its target points next (a 307 would even resend the
/// method and body there); a redirect answer fails the action instead. It uses no proxy from
/// the environment (`HTTP_PROXY`…): the request goes to the address the URL names, the one
/// phoenix checked. `resolver`, when given, resolves host names instead of the system's.
pub(super) fn action_http_client(
    resolver: Option<Arc<ApiAvoidingResolver>>,
) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    match resolver {
        Some(resolver) => builder.dns_resolver(resolver),
        None => builder,
    }
    .build()
}

/// Resolves host names for `http` actions sent to the port phoenix's API listens on, leaving
/// out every address that is phoenix's own listener: a name that resolves (now, whatever it
/// resolved to when the policy loaded) only to phoenix fails with [`ReachesApi`].
#[derive(Debug)]
pub(super) struct ApiAvoidingResolver(pub(super) Arc<Containment>);

/// An `http` action would reach phoenix's own API.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` resolves only to phoenix's own API")]
pub(super) struct ReachesApi(String);

impl reqwest::dns::Resolve for ApiAvoidingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let containment = Arc::clone(&self.0);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let port = containment.listener_port();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|addr| !containment.reaches_api(*addr))
                .collect();
            if allowed.is_empty() && !all.is_empty() {
                return Err(Box::new(ReachesApi(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `error` (or what caused it) is [`ReachesApi`].
pub(super) fn reached_api(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<ReachesApi>() {
            return true;
        }
        cause = error.source();
    }
    false
}

impl Effects {
    /// The client for an `http` action to `url`, or why it may not be sent: its address is
    /// phoenix's own API. (A host name is checked as it resolves, by the client's resolver.)
    pub(super) fn http_client_for(&self, url: &str) -> Result<&reqwest::Client, EffectError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| EffectError::NotAllowed(format!("URL `{url}`: {e}")))?;
        let port = parsed.port_or_known_default().unwrap_or(0);
        let host = parsed.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<std::net::IpAddr>()
            && self.containment.reaches_api(SocketAddr::new(ip, port))
        {
            return Err(api_refused(url));
        }
        Ok(if port == self.containment.listener_port() {
            &self.http_to_api_port
        } else {
            &self.http
        })
    }

    /// Sends an `http` action's request: under the policy's timeout, to an address that is not
    /// phoenix's own, no redirect followed.
    pub(super) async fn send_http(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
        headers: &std::collections::BTreeMap<String, String>,
        caps: &Capabilities,
    ) -> Result<String, EffectError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| EffectError::NotAllowed(format!("method {method}: {e}")))?;
        let client = self.http_client_for(url)?;
        let mut request = client.request(method, url).timeout(caps.http_timeout);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.map_err(|e| {
            if reached_api(&e) {
                return api_refused(url);
            }
            EffectError::Http(if e.is_timeout() {
                format!("{url}: timed out after {:?}", caps.http_timeout)
            } else {
                format!("{url}: {e}")
            })
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(format!("HTTP {}", status.as_u16()))
        } else if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                .unwrap_or_default();
            Err(EffectError::Http(format!(
                "{url} answered {status} to `{location}`: redirects are not followed (only the URL the policy allows is called)"
            )))
        } else {
            Err(EffectError::Http(format!("{url} answered {status}")))
        }
    }
}
