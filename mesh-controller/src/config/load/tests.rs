use super::*;
use crate::config::{Kind, ObjectKey};

const GOOD: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v3}
      weight: 10
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls:
    mode: STRICT
"#;

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

#[test]
fn reads_istio_yaml_of_any_served_version() {
    let mut set = ConfigSet::default();
    let errors = parse_documents("good.yaml", GOOD, &mut set);
    assert_eq!(errors, []);
    let (_, vs) = set.virtual_services().next().unwrap();
    assert_eq!(vs.spec.http.len(), 2);
    assert_eq!(vs.spec.http[1].route[0].weight, Some(90));
    assert!(
        set.resources
            .contains_key(&key(Kind::PeerAuthentication, "default", "default")),
        "a resource without a namespace goes to `default`"
    );
}

/// Each broken document gets its own error naming the field; the good ones around it load.
#[test]
fn bad_documents_are_reported_and_the_rest_applies() {
    let broken = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: typo, namespace: shop}
spec:
  host: cart
  subsets:
  - name: v1
    lables: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wrong-type, namespace: shop}
spec:
  hosts: [cart]
  http:
  - route:
    - destination: {host: cart}
      weight: ninety
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad-mode, namespace: shop}
spec:
  mtls: {mode: STRICTEST}
---
apiVersion: security.istio.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: old, namespace: shop}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: unknown-kind, namespace: shop}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {namespace: shop}
spec: {hosts: [cart]}
"#;
    let mut set = ConfigSet::default();
    let mut errors = parse_documents("good.yaml", GOOD, &mut set);
    errors.extend(parse_documents("broken.yaml", broken, &mut set));
    errors.extend(parse_documents(
        "garbage.yaml",
        "kind: [unclosed\n  - : :",
        &mut set,
    ));
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expect = [
        "broken.yaml: document 1 (DestinationRule shop/typo): spec.subsets[0].lables: unknown field `lables`, expected one of `name`, `labels`",
        "broken.yaml: document 2 (VirtualService shop/wrong-type): spec.http[0].route[0].weight: invalid type: string \"ninety\"",
        "broken.yaml: document 3 (PeerAuthentication shop/bad-mode): spec.mtls.mode: unknown variant `STRICTEST`",
        "broken.yaml: document 4 (AuthorizationPolicy shop/old): AuthorizationPolicy is served as security.istio.io/v1beta1, v1, not security.istio.io/v1alpha1",
        "broken.yaml: document 5 (Sidecar shop/unknown-kind): Sidecar (networking.istio.io) is not served by Ambit: configures sidecar proxies",
        "broken.yaml: document 6 (VirtualService shop/?): metadata.name is required",
        "garbage.yaml: document 1 (? ?): not YAML:",
    ];
    assert_eq!(messages.len(), expect.len(), "{messages:#?}");
    for (message, expected) in messages.iter().zip(expect) {
        assert!(
            message.starts_with(expected),
            "{message}\n  should start with\n{expected}"
        );
    }
    // The good file's resources are all there, and the AuthorizationPolicy that could not be
    // read is kept as refused (it is enforced failing closed, never dropped).
    assert_eq!(set.resources.len(), 3);
    let unreadable: Vec<String> = set.unreadable.keys().map(ToString::to_string).collect();
    assert_eq!(unreadable.len(), 1);
    assert!(unreadable[0].contains("shop/old"), "{unreadable:?}");
}
