//! What a request must be before any route sees it: addressed to phoenix, not sent by another
//! web site, and with a body that arrives whole, in time and within its size.
//!
//! - **Host**: a request whose `Host` is not one of phoenix's names gets 421. Its names are every
//!   IP address (a page can only reach phoenix by IP from phoenix's own origin), `localhost`, the
//!   machine's host name when phoenix listens on every address, and `allowed_hosts`. A web page
//!   on `attacker.example` whose name its owner re-points at 127.0.0.1 (DNS rebinding) sends
//!   `Host: attacker.example`, so it is refused, with or without tokens.
//! - **Cross-site writes**: a request that changes state (any method but GET, HEAD, OPTIONS)
//!   must say `Content-Type: application/json` (415 otherwise), which a browser sends
//!   cross-site only after a CORS preflight that phoenix never grants; and when it carries an
//!   `Origin`, that must be phoenix's own (the console's), else 403. A form or a `text/plain`
//!   `fetch` from any page the operator visits can no longer approve a plan.
//! - **Bodies**: a declared `Content-Length` over `max_body_bytes` is refused (413) before a byte
//!   is read; once the caller is authenticated ([`read_body`], a layer inside authentication, so
//!   a caller without a token cannot make phoenix hold bodies), a body is read whole within
//!   `body_timeout` (408 otherwise, however it trickles) and never past `max_body_bytes`.
//!   Handlers then get it from memory.
//!
//! The request head's own deadline and size are set on the connection (`crate::http::server`).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;

use crate::http::ApiError;

/// The rules every request is checked against (built once from the config).
#[derive(Debug, Clone)]
pub struct RequestRules {
    /// Names (lower case, no port) a request may be addressed to, besides IP addresses.
    hosts: Vec<String>,
    max_body_bytes: usize,
    body_timeout: Duration,
}

impl RequestRules {
    /// `allowed_hosts` and, when phoenix listens on every address (`listening_everywhere`), the
    /// machine's host name, besides IP addresses and `localhost`.
    pub fn new(
        allowed_hosts: &[String],
        listening_everywhere: bool,
        max_body_bytes: usize,
        body_timeout: Duration,
    ) -> RequestRules {
        let mut hosts: Vec<String> = allowed_hosts.iter().map(|h| normalized(h)).collect();
        hosts.push("localhost".into());
        if listening_everywhere
            && let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname")
            && check_host_name(name.trim()).is_ok()
        {
            hosts.push(normalized(name.trim()));
        }
        RequestRules {
            hosts,
            max_body_bytes,
            body_timeout,
        }
    }

    /// The largest request body.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Whether `host` (a `Host` header's value, port included or not) names phoenix.
    fn addressed_to_phoenix(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // `[v6]` or `[v6]:port`.
            Some(rest) => {
                return rest.split_once(']').is_some_and(|(address, port)| {
                    address.parse::<Ipv6Addr>().is_ok()
                        && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
                });
            }
            None => match host.rsplit_once(':') {
                Some((name, port)) if is_port(port) => name,
                Some(_) => return false,
                None => host,
            },
        };
        name.parse::<IpAddr>().is_ok() || self.hosts.contains(&normalized(name))
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A host name as compared: lower case, without the root's trailing dot.
fn normalized(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why `name` cannot be an `allowed_hosts` entry, if it cannot: a DNS name of letters, digits,
/// dots and dashes, without a port.
pub fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be a host name of 1-253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err("must be a host name (letters, digits, `.` and `-`; no port, no scheme)");
    }
    Ok(())
}

/// Middleware, before routing: refuses a request that is not addressed to phoenix, a cross-site
/// write, or one that declares a body too large. Nothing of the body is read here.
pub async fn check(
    State(rules): State<Arc<RequestRules>>,
    request: Request,
    next: Next,
) -> Response {
    match refusal(&rules, &request) {
        None => next.run(request).await,
        Some(refusal) => closing(refusal),
    }
}

/// Middleware, after authentication (a caller phoenix does not know never gets its body read):
/// reads the body whole within `body_timeout` and `max_body_bytes`, and hands it on in memory.
pub async fn read_body(
    State(rules): State<Arc<RequestRules>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(rules.body_timeout, whole(body, rules.max_body_bytes)).await;
    match read {
        Ok(Ok(body)) => next.run(Request::from_parts(parts, Body::from(body))).await,
        Ok(Err(refusal)) => closing(refusal),
        Err(_) => closing(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms",
                rules.body_timeout.as_millis()
            ),
        )),
    }
}

/// `refusal` as a response that closes the connection: what is left of the request's body is
/// never read.
fn closing(refusal: ApiError) -> Response {
    let mut response = refusal.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Why `request` is refused before routing, if it is.
fn refusal(rules: &RequestRules, request: &Request) -> Option<ApiError> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !rules.addressed_to_phoenix(host) {
        return Some(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            format!(
                "this is phoenix, not `{}`: requests must be addressed to an IP address, localhost or a name in `allowed_hosts`",
                crate::core::escape::escaped(host)
            ),
        ));
    }
    if changes_state(request.method())
        && let Err(refusal) = refuse_cross_site(headers, host)
    {
        return Some(refusal);
    }
    match declared_length(headers) {
        Some(length) if length > rules.max_body_bytes as u64 => {
            Some(too_large(rules.max_body_bytes))
        }
        _ => None,
    }
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A write must be JSON (so a browser sends it cross-site only after a preflight phoenix never
/// grants), and come from phoenix's own origin when it names one.
fn refuse_cross_site(headers: &HeaderMap, host: &str) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "requests that change something must send `Content-Type: application/json`",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !same_origin(origin, host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!(
                    "a request from `{}` may not change anything here: only phoenix's own pages may",
                    crate::core::escape::escaped(origin)
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of pages served at `host` (the
/// request's `Host`): the same authority, the scheme's default port spelt out or not.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let (authority, host) = (authority.to_ascii_lowercase(), host.to_ascii_lowercase());
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    !authority.is_empty()
        && (authority == host
            || format!("{authority}{default_port}") == host
            || format!("{host}{default_port}") == authority)
}

/// The `Content-Length` a request declares, if any (an unparsable one is left to hyper, which
/// refuses it before this runs).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than {max} bytes"),
    )
}

/// The whole body, refused as soon as it passes `max` bytes. One chunk (the usual case) is
/// handed on as it is, without a copy.
async fn whole(body: Body, max: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let (mut first, mut joined, mut total) = (Bytes::new(), Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::bad_request("invalid_body", format!("reading the body: {error}"))
        })?;
        total += chunk.len();
        if total > max {
            return Err(too_large(max));
        }
        if first.is_empty() && joined.is_empty() {
            first = chunk;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&chunk);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        Bytes::from(joined)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tower::ServiceExt as _;

    fn rules() -> RequestRules {
        RequestRules::new(
            &["phoenix.example.com".to_string()],
            false,
            64,
            Duration::from_millis(200),
        )
    }

    /// A router behind the guard whose routes answer with the body they got.
    fn app() -> axum::Router {
        axum::Router::new()
            .route("/read", get(|| async { "read" }))
            .route("/write", post(|body: Bytes| async move { body }))
            .route_layer(axum::middleware::from_fn_with_state(
                Arc::new(rules()),
                read_body,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(rules()),
                check,
            ))
    }

    /// The status and body `app` answers to `request`.
    async fn answer(request: axum::http::Request<Body>) -> (u16, String) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn write(host: &str, headers: &[(&str, &str)], body: &str) -> axum::http::Request<Body> {
        let mut request = axum::http::Request::post("/write").header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from(body.to_owned())).unwrap()
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[tokio::test]
    async fn only_requests_addressed_to_phoenix_are_served() {
        for host in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:7070",
            "[::1]",
            "localhost:7070",
            "LOCALHOST",
            "phoenix.example.com:443",
            "Phoenix.Example.Com.",
        ] {
            let request = axum::http::Request::get("/read")
                .header("host", host)
                .body(Body::empty())
                .unwrap();
            assert_eq!(answer(request).await, (200, "read".into()), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:7070",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "[::1",
            "[not-v6]:1",
            "localhost:http",
            "",
        ] {
            let request = axum::http::Request::get("/read")
                .header("host", host)
                .body(Body::empty())
                .unwrap();
            let (status, body) = answer(request).await;
            assert_eq!(status, 421, "{host}: {body}");
            assert!(body.contains("unknown_host"), "{body}");
        }
        let no_host = axum::http::Request::get("/read")
            .body(Body::empty())
            .unwrap();
        assert_eq!(answer(no_host).await.0, 421);
    }

    #[tokio::test]
    async fn a_write_must_be_json_from_phoenixs_own_origin() {
        let host = "127.0.0.1:7070";
        assert_eq!(answer(write(host, &[JSON], "{}")).await, (200, "{}".into()));
        let charset = ("content-type", "Application/JSON; charset=utf-8");
        assert_eq!(answer(write(host, &[charset], "{}")).await.0, 200);
        for kind in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
        ] {
            let (status, body) = answer(write(host, &[("content-type", kind)], "{}")).await;
            assert_eq!(status, 415, "{kind}: {body}");
        }
        assert_eq!(answer(write(host, &[], "{}")).await.0, 415, "no type");
        let own = [JSON, ("origin", "http://127.0.0.1:7070")];
        assert_eq!(answer(write(host, &own, "{}")).await.0, 200);
        let proxied = [JSON, ("origin", "https://phoenix.example.com")];
        assert_eq!(
            answer(write("phoenix.example.com", &proxied, "{}")).await.0,
            200
        );
        for origin in [
            "http://attacker.example",
            "http://127.0.0.1:8080",
            "https://127.0.0.1:7070.attacker.example",
            "null",
            "",
        ] {
            let (status, body) = answer(write(host, &[JSON, ("origin", origin)], "{}")).await;
            assert_eq!(status, 403, "{origin}: {body}");
            assert!(body.contains("cross_origin"), "{body}");
        }
    }

    #[tokio::test]
    async fn a_body_too_large_is_refused_before_it_is_read_and_one_too_slow_in_time() {
        let host = "127.0.0.1:7070";
        // Declared too large: refused with nothing read (this body never ends).
        let endless =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let request = axum::http::Request::post("/write")
            .header("host", host)
            .header("content-type", "application/json")
            .header("content-length", "1000000000000")
            .body(endless)
            .unwrap();
        let started = std::time::Instant::now();
        let (status, body) = answer(request).await;
        assert_eq!(status, 413, "{body}");
        assert!(started.elapsed() < Duration::from_millis(200), "not read");
        // Undeclared, and larger than allowed once read.
        let big = "x".repeat(65);
        assert_eq!(answer(write(host, &[JSON], &big)).await.0, 413);
        let exact = "x".repeat(64);
        assert_eq!(answer(write(host, &[JSON], &exact)).await, (200, exact));
        // A body that never finishes: 408 at the body deadline.
        let trickle = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("{"))])
            .chain(futures_util::stream::pending());
        let request = axum::http::Request::post("/write")
            .header("host", host)
            .header("content-type", "application/json")
            .body(Body::from_stream(trickle))
            .unwrap();
        let (status, body) = answer(request).await;
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("body_timeout"), "{body}");
    }

    #[tokio::test]
    async fn a_body_in_chunks_arrives_whole() {
        let chunks = ["{\"a\":", "1", "}"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c)));
        let request = axum::http::Request::post("/write")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
        assert_eq!(answer(request).await, (200, "{\"a\":1}".into()));
    }
}
