//! VirtualService delegation, as Istio merges it: a root route with `delegate` is replaced by
//! the routes of the delegate VirtualService (one without hosts), each narrowed by the root
//! route's matches. A delegate match must lie within the root's (a path prefix under the
//! root's prefix, the same exact values, no header or port the root contradicts); a pair of
//! matches that contradict each other is dropped. What the delegate route leaves unset
//! (rewrite, timeout, retries, fault, mirror, headers, CORS) it takes from the root route.

use std::collections::BTreeMap;

use crate::{
    common::StringMatch,
    virtual_service::{HttpMatchRequest, HttpRoute},
};

/// `leaf` (a route of the delegate) as it applies under `root`; `None` when none of their
/// matches can hold together.
pub fn merge(root: &HttpRoute, leaf: &HttpRoute) -> Option<HttpRoute> {
    let matches = match (root.matches.as_slice(), leaf.matches.as_slice()) {
        ([], _) => leaf.matches.clone(),
        (_, []) => root.matches.clone(),
        (roots, leaves) => {
            let merged: Vec<HttpMatchRequest> = roots
                .iter()
                .flat_map(|r| leaves.iter().filter_map(move |l| merge_match(r, l)))
                .collect();
            if merged.is_empty() {
                return None;
            }
            merged
        }
    };
    Some(HttpRoute {
        name: leaf.name.clone().or_else(|| root.name.clone()),
        matches,
        rewrite: either(&leaf.rewrite, &root.rewrite),
        timeout: either(&leaf.timeout, &root.timeout),
        retries: either(&leaf.retries, &root.retries),
        fault: either(&leaf.fault, &root.fault),
        mirror: either(&leaf.mirror, &root.mirror),
        mirror_percentage: either(&leaf.mirror_percentage, &root.mirror_percentage),
        mirrors: match leaf.mirrors.is_empty() {
            true => root.mirrors.clone(),
            false => leaf.mirrors.clone(),
        },
        headers: either(&leaf.headers, &root.headers),
        cors_policy: either(&leaf.cors_policy, &root.cors_policy),
        delegate: None,
        ..leaf.clone()
    })
}

/// The delegate route's setting, else the root route's.
fn either<T: Clone>(leaf: &Option<T>, root: &Option<T>) -> Option<T> {
    leaf.clone().or_else(|| root.clone())
}

/// One root match and one delegate match as one, `None` when they contradict.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> Option<HttpMatchRequest> {
    Some(HttpMatchRequest {
        name: leaf.name.clone().or_else(|| root.name.clone()),
        stat_prefix: leaf
            .stat_prefix
            .clone()
            .or_else(|| root.stat_prefix.clone()),
        uri: narrower(root.uri.as_ref(), leaf.uri.as_ref())?,
        scheme: narrower(root.scheme.as_ref(), leaf.scheme.as_ref())?,
        method: narrower(root.method.as_ref(), leaf.method.as_ref())?,
        authority: narrower(root.authority.as_ref(), leaf.authority.as_ref())?,
        headers: union(&root.headers, &leaf.headers)?,
        query_params: union(&root.query_params, &leaf.query_params)?,
        without_headers: union(&root.without_headers, &leaf.without_headers)?,
        port: same(root.port, leaf.port)?,
        source_labels: {
            let mut labels = root.source_labels.clone();
            for (k, v) in &leaf.source_labels {
                if labels
                    .insert(k.clone(), v.clone())
                    .is_some_and(|old| old != *v)
                {
                    return None;
                }
            }
            labels
        },
        gateways: match leaf.gateways.is_empty() {
            true => root.gateways.clone(),
            false => leaf.gateways.clone(),
        },
        ignore_uri_case: root.ignore_uri_case.or(leaf.ignore_uri_case),
        source_namespace: same(root.source_namespace.clone(), leaf.source_namespace.clone())?,
    })
}

/// Both, or either; `None` (outer) when they differ.
fn same<T: PartialEq>(root: Option<T>, leaf: Option<T>) -> Option<Option<T>> {
    match (root, leaf) {
        (Some(r), Some(l)) if r != l => None,
        (r, l) => Some(l.or(r)),
    }
}

/// The delegate's string match when it lies within the root's (the root's when the delegate
/// has none); `None` (outer) when it does not: a prefix under the root's prefix, an exact
/// value the root's prefix or exact value allows, or the very same regex.
fn narrower(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> Option<Option<StringMatch>> {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return Some(leaf.or(root).cloned());
    };
    let within = match (&root.prefix, &root.exact, &root.regex) {
        (Some(prefix), _, _) => leaf
            .prefix
            .as_ref()
            .or(leaf.exact.as_ref())
            .is_some_and(|value| value.starts_with(prefix.as_str())),
        (_, Some(exact), _) => leaf.exact.as_ref() == Some(exact),
        (_, _, Some(regex)) => leaf.regex.as_ref() == Some(regex),
        _ => true,
    };
    within.then(|| Some(leaf.clone()))
}

/// Header or query matches of both; `None` when they name one key with different matches.
fn union(
    root: &BTreeMap<String, StringMatch>,
    leaf: &BTreeMap<String, StringMatch>,
) -> Option<BTreeMap<String, StringMatch>> {
    let mut all = root.clone();
    for (key, leaf_match) in leaf {
        match all.get(key) {
            Some(root_match) => {
                all.insert(key.clone(), narrower(Some(root_match), Some(leaf_match))??);
            }
            None => {
                all.insert(key.clone(), leaf_match.clone());
            }
        }
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::merge;
    use crate::virtual_service::HttpRoute;

    fn route(yaml: &str) -> HttpRoute {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn delegate_routes_are_narrowed_by_the_root() {
        let root = route(
            "match: [{uri: {prefix: /productpage}}]\ndelegate: {name: productpage}\ntimeout: 5s\n",
        );
        let v2 = route(
            "match: [{uri: {prefix: /productpage/v2}, headers: {end-user: {exact: jason}}}]\nroute: [{destination: {host: productpage, subset: v2}}]\n",
        );
        let merged = merge(&root, &v2).expect("within the root's prefix");
        assert_eq!(merged.matches.len(), 1);
        let m = &merged.matches[0];
        assert_eq!(
            m.uri.as_ref().unwrap().prefix.as_deref(),
            Some("/productpage/v2")
        );
        assert!(m.headers.contains_key("end-user"));
        assert_eq!(
            merged.timeout.as_deref(),
            Some("5s"),
            "inherited from the root"
        );
        assert!(merged.delegate.is_none());
        assert_eq!(merged.route.len(), 1);

        // No match of its own: the root's.
        let default = route("route: [{destination: {host: productpage, subset: v1}}]\n");
        let merged = merge(&root, &default).unwrap();
        assert_eq!(
            merged.matches[0].uri.as_ref().unwrap().prefix.as_deref(),
            Some("/productpage")
        );

        // Outside the root's prefix, or another port: dropped.
        let outside =
            route("match: [{uri: {prefix: /reviews}}]\nroute: [{destination: {host: reviews}}]\n");
        assert!(merge(&root, &outside).is_none());
        let ported = route("match: [{port: 80}]\nroute: [{destination: {host: reviews}}]\n");
        let root_on_8080 = route("match: [{port: 8080}]\ndelegate: {name: x}\n");
        assert!(merge(&root_on_8080, &ported).is_none());
    }
}
