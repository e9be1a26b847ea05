//! HBONE requests: an HTTP/2 `CONNECT` whose `:authority` is the destination workload's
//! `ip:port`, sent over mutual TLS to the destination's port 15008. Server-side checks answer
//! with the status codes Istio's ztunnel uses, so either side can talk to ztunnel.

pub mod handshake;
pub mod server;
pub mod settings;

use std::net::{IpAddr, SocketAddr};

use http::{Method, Request, StatusCode, Uri};

/// The HBONE port on every enrolled pod.
pub const PORT: u16 = 15008;
/// ALPN protocol of the TLS connection.
pub const ALPN: &[u8] = b"h2";

/// Why a CONNECT was refused, with the HTTP status it is answered with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("authority {0:?} is not ip:port")]
    BadAuthority(String),
    #[error("missing :authority")]
    MissingAuthority,
    #[error("authority {target} is not this workload ({local})")]
    WrongDestination { target: SocketAddr, local: IpAddr },
    #[error("target port {0} is one of the proxy's own ports")]
    ProxyPort(u16),
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::ProxyPort(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Who is sending, for the `baggage` header ztunnel sends (W3C baggage, OpenTelemetry keys).
#[derive(Clone, Copy, Debug)]
pub struct Baggage<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    /// The workload's name, as the metrics name it (`mesh_core::telemetry`).
    pub workload: &'a str,
}

/// Whether a stream failed because its connection is going away (GOAWAY: the server drains)
/// or the server refused it unprocessed: either way no app saw it, and it may be opened again
/// on a new connection.
pub fn went_away(error: &h2::Error) -> bool {
    error.is_go_away() || error.reason() == Some(h2::Reason::REFUSED_STREAM)
}

/// How many times a client opens a stream whose connections keep going away: a new
/// connection can reach a server in the moment it starts draining (it accepted, then sent
/// GOAWAY), so once is not always enough; a server that keeps refusing is an error.
pub const ATTEMPTS_WHILE_GOING_AWAY: usize = 3;

/// The CONNECT a client sends for `target`, with the headers ztunnel sends: `forwarded`
/// (the client's address), `baggage` (who sends) and a fresh W3C `traceparent`.
pub fn connect_request(
    target: SocketAddr,
    source: SocketAddr,
    baggage: Option<Baggage<'_>>,
) -> Request<()> {
    let authority = target.to_string();
    let mut request = Request::new(());
    *request.method_mut() = Method::CONNECT;
    // An authority-only URI: HTTP/2 CONNECT carries :authority and no :scheme or :path.
    *request.uri_mut() = Uri::builder()
        .authority(authority.as_str())
        .build()
        .expect("ip:port is a valid authority");
    let headers = request.headers_mut();
    if let Ok(value) = format!("for=\"{source}\"").parse() {
        headers.insert(http::header::FORWARDED, value);
    }
    if let Some(b) = baggage
        && let Ok(value) = format!(
            "k8s.namespace.name={},k8s.pod.name={},service.name={}",
            b.namespace, b.pod, b.workload
        )
        .parse()
    {
        headers.insert("baggage", value);
    }
    if let Ok(value) = traceparent().parse() {
        headers.insert("traceparent", value);
    }
    request
}

/// `00-<trace id>-<span id>-00`: random ids, not sampled (as ztunnel sends them).
fn traceparent() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    // Trace ids need to be unique, not secret: the std hasher's random keys are enough.
    let random = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    format!("00-{:016x}{:016x}-{:016x}-00", random(), random(), random())
}

/// Checks a CONNECT that arrived on a connection to `local` and returns its target.
pub fn parse_connect<B>(
    request: &Request<B>,
    local: IpAddr,
    proxy_ports: &[u16],
) -> Result<SocketAddr, RequestError> {
    if request.method() != Method::CONNECT {
        return Err(RequestError::NotConnect(request.method().to_string()));
    }
    let authority = request
        .uri()
        .authority()
        .ok_or(RequestError::MissingAuthority)?;
    let target: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|_| RequestError::BadAuthority(authority.as_str().to_owned()))?;
    if canonical(target.ip()) != canonical(local) {
        return Err(RequestError::WrongDestination { target, local });
    }
    if proxy_ports.contains(&target.port()) {
        return Err(RequestError::ProxyPort(target.port()));
    }
    Ok(SocketAddr::new(canonical(target.ip()), target.port()))
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    const LOCAL: [u8; 4] = [10, 0, 0, 2];

    #[test]
    fn accepts_connect_to_this_workload() {
        let baggage = Baggage {
            namespace: "shop",
            pod: "web-1",
            workload: "web",
        };
        let req = connect_request(
            "10.0.0.2:8080".parse().unwrap(),
            "10.0.1.5:40000".parse().unwrap(),
            Some(baggage),
        );
        assert_eq!(
            req.headers()["baggage"],
            "k8s.namespace.name=shop,k8s.pod.name=web-1,service.name=web"
        );
        let trace = req.headers()["traceparent"].to_str().unwrap().to_owned();
        assert!(
            trace.len() == 55 && trace.starts_with("00-") && trace.ends_with("-00"),
            "{trace}"
        );
        let other = connect_request(
            "10.0.0.2:8080".parse().unwrap(),
            "10.0.1.5:40000".parse().unwrap(),
            None,
        );
        assert_ne!(other.headers()["traceparent"], trace.as_str());
        assert_eq!(req.uri().to_string(), "10.0.0.2:8080");
        assert_eq!(req.headers()["forwarded"], "for=\"10.0.1.5:40000\"");
        assert_eq!(
            parse_connect(&req, LOCAL.into(), &[15008]),
            Ok("10.0.0.2:8080".parse().unwrap())
        );
        let v6 = request(Method::CONNECT, "[fd00::2]:80");
        assert_eq!(
            parse_connect(&v6, "fd00::2".parse().unwrap(), &[]),
            Ok("[fd00::2]:80".parse().unwrap())
        );
    }

    #[test]
    fn refuses_malformed_requests_with_ztunnels_status_codes() {
        let cases = [
            (
                request(Method::GET, "http://10.0.0.2:8080/"),
                StatusCode::BAD_REQUEST,
            ),
            (
                request(Method::CONNECT, "example.com:80"),
                StatusCode::BAD_REQUEST,
            ),
            (
                request(Method::CONNECT, "10.0.0.2"),
                StatusCode::BAD_REQUEST,
            ),
            (
                request(Method::CONNECT, "10.0.0.2:99999"),
                StatusCode::BAD_REQUEST,
            ),
            (
                request(Method::CONNECT, "10.0.0.3:8080"),
                StatusCode::BAD_REQUEST,
            ),
            (
                request(Method::CONNECT, "10.0.0.2:15008"),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (req, status) in cases {
            let err = parse_connect(&req, LOCAL.into(), &[15001, 15006, 15008]).unwrap_err();
            assert_eq!(
                err.status(),
                status,
                "{} {}: {err}",
                req.method(),
                req.uri()
            );
        }
        let no_authority = request(Method::CONNECT, "/path");
        assert_eq!(
            parse_connect(&no_authority, LOCAL.into(), &[]),
            Err(RequestError::MissingAuthority)
        );
    }
}
