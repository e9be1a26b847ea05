//! A route's CORS policy (Istio's `corsPolicy`), applied as Envoy's CORS filter applies it.
//! A preflight (`OPTIONS` with `origin` and `access-control-request-method`) from an allowed
//! origin is answered by the waypoint and never reaches the service; the response to an
//! actual request from an allowed origin gets `access-control-allow-origin` (the origin
//! itself), `-allow-credentials` and `-expose-headers`. A request from any other origin goes
//! on unchanged, and its response gets no CORS header, so the browser refuses it.

use http::{HeaderMap, HeaderValue, Method, header};
use mesh_api::{duration, virtual_service::CorsPolicy};

use super::StrMatch;

#[derive(Clone, Debug)]
pub struct Cors {
    origins: Vec<StrMatch>,
    /// `*` is among the allowed origins: every origin is allowed.
    any_origin: bool,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    /// A preflight from an origin that is not allowed is answered here, without CORS
    /// headers (`IGNORE`), instead of going on to the service (`FORWARD`).
    answer_unmatched_preflights: bool,
}

/// What the policy makes of a request.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Not a CORS request, or one from an origin that is not allowed: it goes on as it is.
    Pass,
    /// A preflight answered here, with these headers (none for an origin not allowed).
    Preflight(HeaderMap),
    /// An actual request from this allowed origin: its response gets the CORS headers.
    Allowed(HeaderValue),
}

impl Cors {
    pub fn compile(policy: &CorsPolicy) -> Result<Self, String> {
        let mut origins = policy
            .allow_origins
            .iter()
            .map(StrMatch::compile)
            .collect::<Result<Vec<_>, _>>()?;
        origins.extend(policy.allow_origin.iter().cloned().map(StrMatch::Exact));
        let list = |values: &[String], what: &str| {
            (!values.is_empty())
                .then(|| HeaderValue::from_str(&values.join(",")))
                .transpose()
                .map_err(|_| format!("corsPolicy.{what}: not a header value"))
        };
        let max_age = policy
            .max_age
            .as_ref()
            .map(|age| duration::parse(age).map_err(|e| format!("corsPolicy.maxAge: {e}")))
            .transpose()?
            .map(|age| HeaderValue::from(age.as_secs()));
        Ok(Cors {
            any_origin: origins
                .iter()
                .any(|m| matches!(m, StrMatch::Exact(any) if any == "*")),
            origins,
            methods: list(&policy.allow_methods, "allowMethods")?,
            headers: list(&policy.allow_headers, "allowHeaders")?,
            expose: list(&policy.expose_headers, "exposeHeaders")?,
            max_age,
            credentials: policy.allow_credentials == Some(true),
            answer_unmatched_preflights: policy.unmatched_preflights.as_deref() == Some("IGNORE"),
        })
    }

    pub fn judge(&self, method: &Method, headers: &HeaderMap) -> Verdict {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Verdict::Pass;
        };
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| self.any_origin || self.origins.iter().any(|m| m.fits(origin)));
        let preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (preflight, allowed) {
            (true, true) => {
                let mut answer = HeaderMap::new();
                self.common(origin.clone(), &mut answer);
                let fields = [
                    (header::ACCESS_CONTROL_ALLOW_METHODS, &self.methods),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.headers),
                    (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
                ];
                for (name, value) in fields {
                    if let Some(value) = value {
                        answer.insert(name, value.clone());
                    }
                }
                Verdict::Preflight(answer)
            }
            (true, false) if self.answer_unmatched_preflights => {
                Verdict::Preflight(HeaderMap::new())
            }
            (false, true) => Verdict::Allowed(origin.clone()),
            (_, false) => Verdict::Pass,
        }
    }

    /// The headers an allowed actual request's response gets.
    pub fn response_headers(&self, origin: HeaderValue, response: &mut HeaderMap) {
        self.common(origin, response);
        if let Some(expose) = &self.expose {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// What every answer to an allowed origin carries.
    fn common(&self, origin: HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: serde_json::Value) -> Cors {
        Cors::compile(&serde_json::from_value(spec).unwrap()).unwrap()
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn allowed_origins_get_preflights_answered_and_responses_marked() {
        let cors = policy(serde_json::json!({
            "allowOrigins": [{"exact": "https://example.com"}, {"regex": "https://.*\\.example\\.org"}],
            "allowMethods": ["GET", "POST"],
            "allowHeaders": ["x-token"],
            "exposeHeaders": ["x-trace"],
            "maxAge": "24h",
            "allowCredentials": true,
        }));
        let preflight = request(&[
            ("origin", "https://a.example.org"),
            ("access-control-request-method", "POST"),
        ]);
        let Verdict::Preflight(answer) = cors.judge(&Method::OPTIONS, &preflight) else {
            panic!("an allowed preflight is answered here");
        };
        assert_eq!(
            answer["access-control-allow-origin"],
            "https://a.example.org"
        );
        assert_eq!(answer["access-control-allow-methods"], "GET,POST");
        assert_eq!(answer["access-control-allow-headers"], "x-token");
        assert_eq!(answer["access-control-max-age"], "86400");
        assert_eq!(answer["access-control-allow-credentials"], "true");

        let actual = request(&[("origin", "https://example.com")]);
        let Verdict::Allowed(origin) = cors.judge(&Method::GET, &actual) else {
            panic!("an allowed origin");
        };
        let mut response = HeaderMap::new();
        cors.response_headers(origin, &mut response);
        assert_eq!(
            response["access-control-allow-origin"],
            "https://example.com"
        );
        assert_eq!(response["access-control-expose-headers"], "x-trace");

        // Other origins, and requests without one, go on untouched (FORWARD by default).
        let other = request(&[
            ("origin", "https://evil.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        assert_eq!(cors.judge(&Method::OPTIONS, &other), Verdict::Pass);
        assert_eq!(cors.judge(&Method::GET, &other), Verdict::Pass);
        assert_eq!(cors.judge(&Method::GET, &HeaderMap::new()), Verdict::Pass);
    }

    #[test]
    fn unmatched_preflights_can_be_answered_without_cors_headers() {
        let cors = policy(serde_json::json!({
            "allowOrigin": ["https://example.com"],
            "unmatchedPreflights": "IGNORE",
        }));
        let other = request(&[
            ("origin", "https://evil.example.com"),
            ("access-control-request-method", "DELETE"),
        ]);
        assert_eq!(
            cors.judge(&Method::OPTIONS, &other),
            Verdict::Preflight(HeaderMap::new())
        );
        let wildcard = policy(serde_json::json!({"allowOrigins": [{"exact": "*"}]}));
        let any = request(&[("origin", "https://anyone.test")]);
        assert!(matches!(
            wildcard.judge(&Method::GET, &any),
            Verdict::Allowed(origin) if origin == "https://anyone.test"
        ));
    }
}
