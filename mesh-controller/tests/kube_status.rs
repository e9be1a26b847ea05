//! Against a fake API server (kube-fake-client): resources are reconciled on create, update and
//! delete, and their status conditions are written. The fake lists but cannot watch, so each
//! step lists afresh (a new source) and runs one reconcile round.

use std::time::Duration;

mod common;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use mesh_api::networking;
use mesh_controller::{
    distribution::Distributor,
    source::{kube::KubeSource, publish_once, status::KubeStatus},
};

const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo, generation: 1}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo, generation: 1}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

async fn listed(client: &kube::Client) -> KubeSource {
    let source = KubeSource::start_with(client.clone(), common::namespaces_shim(&[]));
    tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .expect("listed within 10 s");
    source
}

fn accepted(conditions: &[mesh_api::common::Condition]) -> (String, String) {
    let c = conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .expect("an Accepted condition");
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn status_follows_create_update_and_delete() {
    let client = common::fake_client(&common::objects(YAML)).await;
    let distributor = Distributor::default();
    let mut status = KubeStatus::new(client.clone(), Some("test".to_owned()));
    let events: Api<Event> = Api::namespaced(client.clone(), "bookinfo");
    let vs_api: Api<networking::VirtualService> = Api::namespaced(client.clone(), "bookinfo");
    let dr_api: Api<networking::DestinationRule> = Api::namespaced(client.clone(), "bookinfo");

    // Created: the bad split is refused with its reason, the DestinationRule accepted.
    let mut source = listed(&client).await;
    let v1 = publish_once(&mut source, &mut status, &distributor, "cluster.local").await;
    assert_eq!(v1, Some(1));
    let vs = vs_api.get_status("reviews").await.unwrap();
    let conditions = vs.status.unwrap().conditions;
    assert_eq!(
        accepted(&conditions),
        ("False".to_owned(), "InvalidWeights".to_owned())
    );
    assert!(conditions[0].message.contains("sum to 110, not 100"));
    assert_eq!(conditions[0].observed_generation, Some(1));
    let dr = dr_api.get_status("reviews").await.unwrap();
    assert_eq!(
        accepted(&dr.status.unwrap().conditions),
        ("True".to_owned(), "Accepted".to_owned())
    );
    assert_eq!(distributor.version(), 1);
    let recorded = |reason: &str| {
        let events = events.clone();
        let reason = reason.to_owned();
        async move {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(&reason))
                .filter(|e| {
                    e.regarding.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some("VirtualService")
                            && r.name.as_deref() == Some("reviews")
                    })
                })
                .collect::<Vec<_>>()
        }
    };
    let warnings = recorded("InvalidWeights").await;
    assert_eq!(
        warnings.len(),
        1,
        "one event for the refused VirtualService"
    );
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert!(
        warnings[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("sum to 110, not 100")),
        "{:?}",
        warnings[0].note
    );

    // Updated: the fixed split is accepted.
    let fix = serde_json::json!({"spec": {"http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}
    ]}]}});
    vs_api
        .patch("reviews", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    let mut source = listed(&client).await;
    let v2 = publish_once(&mut source, &mut status, &distributor, "cluster.local").await;
    assert_eq!(v2, Some(2), "the now valid VirtualService is distributed");
    let vs = vs_api.get_status("reviews").await.unwrap();
    let conditions = vs.status.unwrap().conditions;
    assert_eq!(
        accepted(&conditions),
        ("True".to_owned(), "Accepted".to_owned())
    );
    let refs = conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .unwrap();
    assert!(!refs.message.contains("defines subset"), "{}", refs.message);
    assert_eq!(
        recorded("Accepted").await.len(),
        1,
        "accepted again: a Normal event"
    );
    assert_eq!(recorded("InvalidWeights").await.len(), 1, "no repeat");

    // Deleted: the DestinationRule leaves the configuration, and the route's subsets no longer
    // resolve (reported, still accepted).
    dr_api
        .delete("reviews", &DeleteParams::default())
        .await
        .unwrap();
    let mut source = listed(&client).await;
    let v3 = publish_once(&mut source, &mut status, &distributor, "cluster.local").await;
    assert_eq!(v3, Some(3));
    let vs = vs_api.get_status("reviews").await.unwrap();
    let conditions = vs.status.unwrap().conditions;
    let refs = conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .unwrap();
    assert_eq!(refs.status, "False");
    assert!(
        refs.message.contains(
            "no DestinationRule for reviews.bookinfo.svc.cluster.local defines subset \"v1\""
        ),
        "{}",
        refs.message
    );
}

/// A Gateway API route reports under each parent, with Ambit's controller name, as
/// `kubectl get httproute -o yaml` shows it; entries other controllers wrote stay.
#[tokio::test]
async fn an_httproute_reports_per_parent() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec: {ports: [{port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo, generation: 3}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Plugin, name: x}}]
    backendRefs: [{name: reviews, port: 9080}]
status:
  parents:
  - parentRef: {name: public-gateway}
    controllerName: example.net/ingress
    conditions: [{type: Accepted, status: "True", reason: Accepted, message: ""}]
"#;
    let client = common::fake_client(&common::objects(yaml)).await;
    let distributor = Distributor::default();
    let mut status = KubeStatus::new(client.clone(), Some("test".to_owned()));
    let mut source = listed(&client).await;
    publish_once(&mut source, &mut status, &distributor, "cluster.local").await;
    let routes: Api<mesh_api::http_route::HTTPRoute> = Api::namespaced(client.clone(), "bookinfo");
    let route = routes.get_status("reviews").await.unwrap();
    let mut parents = route.status.expect("a status").parents;
    assert_eq!(parents.len(), 2, "{parents:?}");
    // Another controller's entry stays as it was.
    let other = parents.remove(0);
    assert_eq!(
        (
            other.controller_name.as_str(),
            other.parent_ref.name.as_str()
        ),
        ("example.net/ingress", "public-gateway")
    );
    assert_eq!(accepted(&other.conditions).0, "True");
    assert_eq!(parents[0].parent_ref.name, "reviews");
    assert_eq!(parents[0].controller_name, "ambit.io/gateway-controller");
    let (status, reason) = accepted(&parents[0].conditions);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "UnsupportedValue")
    );
    assert!(
        parents[0].conditions[0].message.contains("ExtensionRef"),
        "{:?}",
        parents[0].conditions
    );
    assert_eq!(parents[0].conditions[0].observed_generation, Some(3));
}
