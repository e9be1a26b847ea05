use super::*;

const DOMAIN: &str = "cluster.local";

fn set(yaml: &str) -> ConfigSet {
    let mut set = ConfigSet::default();
    let errors = load::parse_documents("test.yaml", yaml, &mut set);
    assert!(errors.is_empty(), "{errors:?}");
    set
}

const RULES: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

#[test]
fn a_service_without_routing_is_editable() {
    let listed = services(&set(RULES), DOMAIN);
    assert_eq!(listed.len(), 1);
    let reviews = &listed[0];
    assert_eq!(reviews.host, "reviews.shop.svc.cluster.local");
    assert_eq!(reviews.subsets, ["v1", "v2"]);
    assert!(reviews.editable && reviews.weights.is_empty());
    let change = WeightChange {
        namespace: "shop".to_owned(),
        service: "reviews".to_owned(),
        weights: [("v1".to_owned(), 50), ("v2".to_owned(), 50)].into(),
    };
    check(reviews, &change).unwrap();
    // What the page writes reads back as the weights it was given.
    let written = virtual_service(reviews, &change.weights);
    let mut with = set(RULES);
    with.insert(resource_of(&written).unwrap());
    let after = &services(&with, DOMAIN)[0];
    assert_eq!(after.weights, change.weights);
    assert!(after.editable, "{:?}", after.reason);
    assert_eq!(after.route.as_deref(), Some("shop/reviews"));
}

#[test]
fn bad_weights_and_subsets_are_refused() {
    let reviews = &services(&set(RULES), DOMAIN)[0];
    let change = |weights: &[(&str, u32)]| WeightChange {
        namespace: "shop".to_owned(),
        service: "reviews".to_owned(),
        weights: weights.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect(),
    };
    let sum = check(reviews, &change(&[("v1", 50), ("v2", 40)])).unwrap_err();
    assert!(sum.contains("90"), "{sum}");
    let subset = check(reviews, &change(&[("v1", 50), ("v3", 50)])).unwrap_err();
    assert!(subset.contains("no subset v3"), "{subset}");
}

#[test]
fn a_virtual_service_of_someone_else_is_left_alone() {
    let theirs = format!(
        "{RULES}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-canary, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 10}}
"
    );
    let reviews = &services(&set(&theirs), DOMAIN)[0];
    assert_eq!(
        reviews.weights,
        [("v1".to_owned(), 90), ("v2".to_owned(), 10)].into()
    );
    assert!(!reviews.editable);
    assert!(reviews.reason.as_deref().unwrap().contains("kiali_wizard"));
    // Labelled as Kiali's wizard labels its own, it may be shifted.
    let wizard = theirs.replace(
        "{name: reviews-canary, namespace: shop}",
        "{name: reviews-canary, namespace: shop, labels: {kiali_wizard: weighted_routing}}",
    );
    assert!(services(&set(&wizard), DOMAIN)[0].editable);
    // Routing by more than weight is not the page's to change.
    let matched = wizard.replace(
        "  - route:\n",
        "  - match: [{headers: {end-user: {exact: jason}}}]\n    route:\n",
    );
    let reviews = &services(&set(&matched), DOMAIN)[0];
    assert!(!reviews.editable && reviews.weights.is_empty());
}
