//! A route's retry policy: how many tries, how long each may take, and which failures are
//! retried.

use std::time::Duration;

use http::StatusCode;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
}

/// Which failures are retried (Envoy's `retry_on` conditions Istio exposes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub server_error: bool,
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    pub retriable_4xx: bool,
    pub statuses: Vec<u16>,
}

impl RetryOn {
    pub(super) fn parse(text: &str) -> Self {
        let mut on = RetryOn::default();
        for item in text.split(',').map(str::trim) {
            match item {
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "reset" => on.reset = true,
                "retriable-4xx" => on.retriable_4xx = true,
                // gRPC conditions are read from `grpc-status` as their HTTP equivalents.
                "unavailable" | "cancelled" | "resource-exhausted" | "deadline-exceeded" => {
                    on.gateway_error = true
                }
                other => on.statuses.extend(other.parse::<u16>().ok()),
            }
        }
        on
    }

    /// Whether a response with `status` is retried.
    pub fn status(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        (self.server_error && status.is_server_error())
            || (self.gateway_error && matches!(code, 502..=504))
            || (self.retriable_4xx && code == 409)
            || self.statuses.contains(&code)
    }
}

impl RetryPolicy {
    /// Istio's default when a route says nothing: two retries of connection failures, refused
    /// streams and 503s.
    pub fn istio_default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                statuses: vec![503],
                ..RetryOn::default()
            },
        }
    }
}
