//! Kubernetes mode's own pieces: node agents authenticated by TokenReview (against an API
//! server played by a function, where the exact request matters), and the CA root kept in a
//! Secret and published in a ConfigMap (against kube-fake-client).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::{reflector::store::Writer, watcher},
};
use mesh_controller::{
    ca_service::{Caller, NodeAuthorizer},
    kubernetes::{
        CA_SECRET, KubeAuthorizer, NODE_NAME_EXTRA, ROOT_CERT_KEY, ROOT_CONFIG_MAP,
        certificate_authority, publish_root,
    },
};
use mesh_core::Identity;

const NODE_ACCOUNT: &str = "system:serviceaccount:ambit-system:ambit-node";

/// (path, body) of each request the scripted API server received.
type Requests = Arc<Mutex<Vec<(String, String)>>>;

/// An API server played by a function: it answers each review (TokenReview,
/// SubjectAccessReview) with the review and the `status` that `judge` gives it, and records
/// each request's path and body.
fn reviewer(
    judge: impl Fn(&serde_json::Value) -> serde_json::Value + Clone + Send + 'static,
) -> (Client, Requests) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (record, judge) = (record.clone(), judge.clone());
        async move {
            let path = request.uri().path().to_owned();
            let body = request.into_body().collect().await?.to_bytes();
            let review: serde_json::Value = serde_json::from_slice(&body)?;
            record
                .lock()
                .unwrap()
                .push((path, String::from_utf8_lossy(&body).into_owned()));
            let mut answer = review;
            answer["status"] = judge(&answer);
            let body = Full::new(Bytes::from(serde_json::to_vec(&answer)?));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::new(body))
        }
    });
    (Client::new(service, "default"), seen)
}

/// An API server that answers every TokenReview with `user`'s fields (or unauthenticated for
/// the token "bad").
fn token_reviewer(user: serde_json::Value) -> (Client, Requests) {
    reviewer(move |review| {
        if review["spec"]["token"] == "bad" {
            serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
        } else {
            serde_json::json!({"authenticated": true, "audiences": ["ambit"], "user": user})
        }
    })
}

fn authorizer(client: Client, pods: &[serde_json::Value]) -> KubeAuthorizer {
    let ar = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
    let mut writer = Writer::<DynamicObject>::new(ar);
    for pod in pods {
        let pod: DynamicObject = serde_json::from_value(pod.clone()).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(pod));
    }
    KubeAuthorizer {
        client,
        node_account: NODE_ACCOUNT.to_owned(),
        audience: "ambit".to_owned(),
        pods: writer.as_reader(),
        reviews: Default::default(),
        access_reviews: Default::default(),
    }
}

fn pod(name: &str, node: &str, account: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"nodeName": node, "serviceAccountName": account, "containers": []}
    })
}

#[tokio::test]
async fn a_node_is_who_its_bound_token_says_and_signs_only_for_its_pods() {
    let user = serde_json::json!({
        "username": NODE_ACCOUNT,
        "extra": {NODE_NAME_EXTRA: ["worker-1"], "authentication.kubernetes.io/pod-name": ["ambit-node-x"]}
    });
    let (client, seen) = token_reviewer(user);
    let authorizer = authorizer(
        client,
        &[
            pod("cart", "worker-1", "cart"),
            pod("pay", "worker-2", "pay"),
        ],
    );
    assert_eq!(
        authorizer.caller_of("token-of-worker-1").await,
        Some(Caller::Node("worker-1".to_owned()))
    );
    {
        let seen = seen.lock().unwrap();
        let (path, body) = &seen[0];
        assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
        let review: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(review["spec"]["token"], "token-of-worker-1");
        assert_eq!(review["spec"]["audiences"], serde_json::json!(["ambit"]));
    }
    assert_eq!(authorizer.caller_of("bad").await, None, "unauthenticated");

    let cart = Identity::new("cluster.local", "shop", "cart").unwrap();
    let pay = Identity::new("cluster.local", "shop", "pay").unwrap();
    assert!(authorizer.may_issue("worker-1", &cart));
    assert!(
        !authorizer.may_issue("worker-1", &pay),
        "pay runs on another node"
    );
}

#[tokio::test]
async fn other_accounts_are_workloads_and_unbound_node_tokens_are_refused() {
    // A waypoint's pod, with its own token: a workload that may have only its own identity.
    let waypoint = serde_json::json!({
        "username": "system:serviceaccount:shop:waypoint",
        "extra": {NODE_NAME_EXTRA: ["worker-1"]}
    });
    let (client, _) = token_reviewer(waypoint);
    assert_eq!(
        authorizer(client, &[]).caller_of("t").await,
        Some(Caller::Workload {
            namespace: "shop".to_owned(),
            service_account: "waypoint".to_owned()
        })
    );
    let not_an_account = serde_json::json!({"username": "admin"});
    let (client, _) = token_reviewer(not_an_account);
    assert_eq!(authorizer(client, &[]).caller_of("t").await, None);
    let unbound = serde_json::json!({"username": NODE_ACCOUNT});
    let (client, _) = token_reviewer(unbound);
    assert_eq!(
        authorizer(client, &[]).caller_of("t").await,
        None,
        "a token not bound to a pod names no node"
    );
}

#[tokio::test]
async fn the_root_is_made_once_kept_in_a_secret_and_published() {
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let first = certificate_authority(&client, "ambit-system", "cluster.local")
        .await
        .unwrap();
    let again = certificate_authority(&client, "ambit-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(
        first.bundle_pem(),
        again.bundle_pem(),
        "a restart keeps the root"
    );
    let secret = Api::<Secret>::namespaced(client.clone(), "ambit-system")
        .get(CA_SECRET)
        .await
        .unwrap();
    assert!(secret.data.unwrap().contains_key("root-key.pem"));

    publish_root(&client, "ambit-system", first.bundle_pem())
        .await
        .unwrap();
    let published = Api::<ConfigMap>::namespaced(client, "ambit-system")
        .get(ROOT_CONFIG_MAP)
        .await
        .unwrap();
    let data = published.data.unwrap();
    assert_eq!(data[ROOT_CERT_KEY], first.bundle_pem());
    assert!(
        !data.values().any(|v| v.contains("PRIVATE KEY")),
        "the key is never published"
    );
}

/// An API server that allows `get secrets` in namespace "shop" to the account "custom-gateway"
/// only, answering SubjectAccessReviews.
fn access_reviewer() -> (Client, Requests) {
    reviewer(|review| {
        let spec = &review["spec"];
        let allowed = spec["user"] == "system:serviceaccount:shop:custom-gateway"
            && spec["resourceAttributes"]["namespace"] == "shop"
            && spec["resourceAttributes"]["resource"] == "secrets"
            && spec["resourceAttributes"]["verb"] == "get"
            && spec["resourceAttributes"]["name"].is_null();
        serde_json::json!({"allowed": allowed})
    })
}

#[tokio::test]
async fn a_gateway_reads_its_namespace_s_secrets_only_if_the_api_server_says_so() {
    let (client, seen) = access_reviewer();
    let authorizer = authorizer(client, &[]);
    assert!(authorizer.reads_secrets("shop", "custom-gateway").await);
    assert!(!authorizer.reads_secrets("shop", "web").await);
    assert!(
        !authorizer.reads_secrets("other", "custom-gateway").await,
        "another namespace"
    );
    // Answers are kept: asking again does not reach the API server.
    assert!(authorizer.reads_secrets("shop", "custom-gateway").await);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|(path, _)| path == "/apis/authorization.k8s.io/v1/subjectaccessreviews")
    );
}
