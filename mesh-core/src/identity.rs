//! SPIFFE identities in the shape Istio uses: `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.

use std::{fmt, str::FromStr};

use serde::{Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("identity {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error("identity {0:?} is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    Shape(String),
    #[error("identity {uri:?}: {part} {value:?} has a character SPIFFE does not allow")]
    Character {
        uri: String,
        part: &'static str,
        value: String,
    },
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, Error> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }
}

impl Identity {
    /// The identity the controller serves the CA and config APIs as; agents check for it.
    pub fn controller(trust_domain: &str) -> Result<Self, Error> {
        Self::new(trust_domain, "ambit-system", "ambit-controller")
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(uri: &str) -> Result<Self, Error> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| Error::Scheme(uri.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, "ns", namespace, "sa", service_account] = parts[..] else {
            return Err(Error::Shape(uri.to_owned()));
        };
        // SPIFFE: trust domains are lower-case letters, digits, '.', '-', '_'; path segments
        // also allow upper case. Empty segments are not allowed.
        let check = |part: &'static str, value: &str, upper: bool| {
            let ok = !value.is_empty()
                && value.chars().all(|c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, '.' | '-' | '_')
                        || (upper && c.is_ascii_uppercase())
                });
            if ok {
                Ok(())
            } else {
                Err(Error::Character {
                    uri: uri.to_owned(),
                    part,
                    value: value.to_owned(),
                })
            }
        };
        check("trust domain", trust_domain, false)?;
        check("namespace", namespace, true)?;
        check("service account", service_account, true)?;
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_istio_identities() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a b/sa/c",
            "spiffe://cluster.local/ns//sa/c",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad} was accepted");
        }
    }
}
