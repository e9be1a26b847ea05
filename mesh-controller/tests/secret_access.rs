//! Gateway Secrets reach only the gateway whose Gateway names them: a pod of the same
//! namespace with a token of its own, subscribing as a waypoint, gets none of them (it used to
//! get every Secret any Gateway of its namespace named, private keys included).

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use mesh_controller::{
    ca_service::{Caller, NodeAuthorizer},
    compile::compile,
    config::{ConfigSet, load, validate},
    distribution::{Distributor, service::ConfigStreamService},
};
use mesh_core::{
    Identity,
    config_client::{ConfigView, follow},
    config_pb::{
        Role, config_service_client::ConfigServiceClient,
        config_service_server::ConfigServiceServer, resource::Body,
    },
};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, credentialName: public-cert}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: partners, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["partners.example.com"]
    tls: {mode: SIMPLE, credentialName: partners-cert}
---
apiVersion: v1
kind: Secret
metadata: {name: public-cert, namespace: istio-system}
stringData: {tls.crt: "CERT", tls.key: "KEY"}
---
apiVersion: v1
kind: Secret
metadata: {name: partners-cert, namespace: istio-system}
stringData: {tls.crt: "CERT2", tls.key: "KEY2"}
"#;

/// Tokens named after the service account (of `istio-system`) they belong to.
struct Tokens;

impl NodeAuthorizer for Tokens {
    fn caller_of<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Caller>> {
        Box::pin(async move {
            Some(Caller::Workload {
                namespace: "istio-system".to_owned(),
                service_account: token.to_owned(),
            })
        })
    }

    fn may_issue(&self, _: &str, _: &Identity) -> bool {
        false
    }
}

/// The Secrets a waypoint subscriber with `token` receives.
async fn secrets_for(
    client: &ConfigServiceClient<tonic::transport::Channel>,
    token: &str,
) -> Vec<String> {
    let mut client = client.clone();
    let mut view = ConfigView::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = async {
        follow(
            &mut client,
            Role::Waypoint,
            Some(token),
            &mut view,
            |_| Ok(()),
            |view, _| {
                let _ = tx.send(view.clone());
            },
        )
        .await
    };
    let first = tokio::select! {
        view = rx.recv() => view.expect("a first update"),
        result = follower => panic!("stream ended: {result:?}"),
        () = tokio::time::sleep(Duration::from_secs(10)) => panic!("no update"),
    };
    first
        .resources
        .iter()
        .filter(|(_, r)| matches!(r.body, Some(Body::Credential(_))))
        .map(|(k, _)| k.2.clone())
        .collect()
}

#[tokio::test]
async fn a_secret_goes_only_to_the_gateway_that_names_it() {
    let mut set = ConfigSet::default();
    assert_eq!(load::parse_documents("gw.yaml", CONFIG, &mut set), []);
    let validation = validate::validate(&set, "cluster.local");
    let distributor = Arc::new(Distributor::default());
    distributor.publish(compile(&set, &validation, "cluster.local"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ConfigStreamService {
        distributor,
        authorizer: Some(Arc::new(Tokens)),
        nodes_read_secrets: false,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = ConfigServiceClient::new(channel);

    // Each gateway's proxies (running as the service account named as their Gateway) get
    // their own certificate; another pod of the namespace gets none.
    assert_eq!(secrets_for(&client, "public").await, ["public-cert"]);
    assert_eq!(secrets_for(&client, "partners").await, ["partners-cert"]);
    assert!(secrets_for(&client, "hostile").await.is_empty());
}
