//! The resources users apply, as typed Rust, and the one validator of what they say: shared by
//! the controller (which watches and validates them), the node agent and the waypoint (which
//! enforce them). Nothing here does I/O.
//!
//! # Layout
//! - Istio's networking resources: `networking` (VirtualService, DestinationRule, Gateway,
//!   ServiceEntry), with `virtual_service`, `destination_rule` and `common` for their parts;
//! - Istio's security resources: `security` (PeerAuthentication, AuthorizationPolicy as the API
//!   server stores them) and `policy` (the same as enforcement points read them, with the
//!   validator whose verdict every enforcement point honours);
//! - the Gateway API: `gateway_api` (GatewayClass, Gateway) and `http_route`;
//! - `crds`: the CustomResourceDefinitions generated from these types;
//! - `delegate`: VirtualService delegation, as Istio merges it;
//! - `duration`: Istio's duration strings.
#![forbid(unsafe_code)]

pub mod common;
pub mod crds;
pub mod delegate;
pub mod destination_rule;
pub mod duration;
pub mod gateway_api;
pub mod http_route;
pub mod networking;
pub mod policy;
pub mod security;
pub mod virtual_service;

pub use crds::{crd_files, crds, gateway_api_crds};

/// A map whose keys YAML may write as numbers (`portLevelMtls: {8080: ...}`, as Istio's
/// documentation does), read with string keys.
pub fn string_keyed<'de, D, V>(
    deserializer: D,
) -> Result<std::collections::BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: serde::Deserialize<'de>,
{
    #[derive(serde::Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(untagged)]
    enum Key {
        Text(String),
        Number(u64),
    }
    let map: std::collections::BTreeMap<Key, V> = serde::Deserialize::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(key, value)| {
            let key = match key {
                Key::Text(text) => text,
                Key::Number(n) => n.to_string(),
            };
            (key, value)
        })
        .collect())
}
