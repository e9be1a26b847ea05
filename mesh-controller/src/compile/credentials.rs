//! Secrets as TLS credentials for ingress gateways. Only a Secret an accepted Istio Gateway's
//! `credentialName` names in the Gateway's own namespace leaves the controller (with its
//! `<name>-cacert` companion, where Istio looks for a separate client CA), or one an accepted
//! Gateway API ingress's `certificateRefs` name, and only to the gateways that name it: each
//! Secret carries its readers, the service accounts its Gateways' proxies run as (named as
//! the Gateway), and `distribution` sends it to those subscribers only.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use mesh_core::config_pb as pb;

use crate::config::{ConfigSet, validate::Validation};
use mesh_api::gateway_api::GatewayRole;

/// The suffix of a Secret holding only the CA of the Secret it is named after.
const CA_SUFFIX: &str = "-cacert";

/// Every Secret an accepted Gateway refers to, by (namespace, name), with the service
/// accounts that may read it: those of the Gateways naming it (each named as its Gateway).
pub fn referenced(
    set: &ConfigSet,
    validation: &Validation,
) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut readers: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut grant = |namespace: &str, secret: String, gateway: &str| {
        readers
            .entry((namespace.to_owned(), secret))
            .or_default()
            .insert(crate::waypoint::proxy_service_account(gateway));
    };
    for (key, gateway) in set.gateways() {
        if !validation.accepted(key) {
            continue;
        }
        let servers = gateway.spec.servers.iter();
        for credential in servers.filter_map(|s| s.tls.as_ref()?.credential_name.as_ref()) {
            grant(&key.namespace, credential.clone(), &key.name);
            grant(
                &key.namespace,
                format!("{credential}{CA_SUFFIX}"),
                &key.name,
            );
        }
    }
    // A Gateway API ingress's certificates, in its own namespace (validation refuses others).
    for (key, gateway) in set.k8s_gateways() {
        if !validation.accepted(key) || set.gateway_role(gateway) != Some(GatewayRole::Ingress) {
            continue;
        }
        let tls = gateway.spec.listeners.iter().filter_map(|l| l.tls.as_ref());
        for reference in tls.flat_map(|tls| &tls.certificate_refs) {
            grant(&key.namespace, reference.name.clone(), &key.name);
        }
    }
    readers
}

/// The certificate, key and CA a Secret holds, in either of the layouts Istio reads:
/// `tls.crt`/`tls.key`/`ca.crt` (type `kubernetes.io/tls`) or `cert`/`key`/`cacert`.
pub fn of(secret: &Secret) -> pb::TlsCredential {
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| {
                let data = secret.data.as_ref().and_then(|d| d.get(*name));
                let text = data.and_then(|bytes| String::from_utf8(bytes.0.clone()).ok());
                text.or_else(|| secret.string_data.as_ref()?.get(*name).cloned())
            })
            .unwrap_or_default()
    };
    pb::TlsCredential {
        certificate_chain: field(&["tls.crt", "cert"]),
        private_key: field(&["tls.key", "key"]),
        ca_certificates: field(&["ca.crt", "cacert"]),
        readers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        compile::compile,
        config::{ConfigSet, load::parse_documents, validate::validate},
    };
    use mesh_core::config_pb::resource::Body;

    const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: istio-system}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: MUTUAL, credentialName: web-cert}
---
apiVersion: v1
kind: Secret
metadata: {name: web-cert, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
---
apiVersion: v1
kind: Secret
metadata: {name: web-cert-cacert, namespace: istio-system}
stringData: {cacert: CA}
---
apiVersion: v1
kind: Secret
metadata: {name: database-password, namespace: istio-system}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Secret
metadata: {name: web-cert, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
"#;

    #[test]
    fn only_secrets_a_gateway_names_in_its_namespace_go_out() {
        let mut set = ConfigSet::default();
        assert_eq!(parse_documents("t.yaml", YAML, &mut set), []);
        let out = compile(&set, &validate(&set, "cluster.local"), "cluster.local");
        let credentials: Vec<_> = out
            .iter()
            .filter_map(|r| match &r.body {
                Some(Body::Credential(c)) => {
                    let key = r.key.as_ref()?;
                    Some((format!("{}/{}", key.namespace, key.name), c.clone()))
                }
                _ => None,
            })
            .collect();
        let names: Vec<&str> = credentials.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["istio-system/web-cert", "istio-system/web-cert-cacert"]
        );
        let (cert, ca) = (&credentials[0].1, &credentials[1].1);
        assert_eq!(
            (cert.certificate_chain.as_str(), cert.private_key.as_str()),
            ("CERT", "KEY"),
            "base64 data decoded"
        );
        assert_eq!(
            ca.ca_certificates, "CA",
            "stringData and the cert/key/cacert layout"
        );
    }
}
