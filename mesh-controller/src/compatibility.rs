//! What Ambit does with every field of Istio's resources, in one place: implemented (the
//! default), ignored (a traffic field Ambit accepts and names in an `IgnoredFields` condition),
//! or failing closed (a security field Ambit does not enforce: what it would allow is refused,
//! and a `FailsClosed` condition says so). The validator reports from this table, and
//! docs/compatibility.md is generated from it and the resource types (a test fails on drift).
//!
//! # Layout
//! - here: looking a field up;
//! - `table`: the entries, kind by kind;
//! - `fields`: walking a kind's schema (every field) or a resource (the fields it sets);
//! - `doc`: docs/compatibility.md.

pub mod doc;
pub mod fields;
mod table;

use table::TABLE;

/// What Ambit does with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Honoured as Istio documents it (a note says where it differs).
    Implemented(Option<&'static str>),
    /// Accepted with no effect: a traffic field, named in the `IgnoredFields` condition.
    Ignored(&'static str),
    /// Not enforced, so what it would allow is refused: a security field, named in the
    /// `FailsClosed` condition.
    FailsClosed(&'static str),
}

/// Why Ambit does not serve `kind` of `group`, if it is one of Istio's kinds it does not.
pub fn not_served(group: &str, kind: &str) -> Option<&'static str> {
    doc::NOT_SERVED
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
        .map(|(_, _, why)| *why)
}

/// What Ambit does with `path` of `kind` (paths as [`fields`] writes them).
pub fn support(kind: &str, path: &str) -> Support {
    TABLE
        .iter()
        .filter(|e| e.kind == kind)
        .find(|e| fits(e.pattern, path))
        .map_or(Support::Implemented(None), |e| e.support)
}

/// Whether `path` is the field `pattern` names or one under it.
fn fits(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let path: Vec<&str> = path.split('.').collect();
    fits_segments(&pattern, &path)
}

fn fits_segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        // The pattern is used up: the path is the field or under it.
        None => true,
        Some((&"**", rest)) => (0..=path.len()).any(|skip| fits_segments(rest, &path[skip..])),
        Some((first, rest)) => path.split_first().is_some_and(|(segment, tail)| {
            // `x` names the field whatever it holds: `x[]` (its items), `x{}` (its values).
            let bare = segment.trim_end_matches("[]").trim_end_matches("{}");
            (*segment == *first || bare == *first) && fits_segments(rest, tail)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DR: &str = "DestinationRule";
    const SE: &str = "ServiceEntry";
    const VS: &str = "VirtualService";

    #[test]
    fn patterns_name_a_field_and_what_is_under_it() {
        assert!(fits("spec.exportTo", "spec.exportTo[]"));
        assert!(fits(
            "spec.http[].retries.backoff",
            "spec.http[].retries.backoff"
        ));
        assert!(!fits(
            "spec.http[].retries.backoff",
            "spec.http[].retries.attempts"
        ));
        assert!(fits(
            "spec.**.connectionPool.tcp.connectTimeout",
            "spec.subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.connectTimeout"
        ));
        assert!(fits("spec.**.tls", "spec.trafficPolicy.tls.sni"));
        assert!(!fits("spec.**.tls", "spec.trafficPolicy.loadBalancer"));
        assert!(fits("spec.**", "spec.endpoints[].address"));
    }

    #[test]
    fn the_first_fitting_entry_decides() {
        assert_eq!(
            support(DR, "spec.trafficPolicy.tls.mode"),
            Support::Implemented(Some(
                "ISTIO_MUTUAL and DISABLE: the mesh's own mutual TLS (HBONE); SIMPLE and MUTUAL fail closed"
            ))
        );
        assert!(matches!(
            support(DR, "spec.trafficPolicy.tls.sni"),
            Support::FailsClosed(_)
        ));
        assert!(matches!(
            support(SE, "spec.hosts[]"),
            Support::Implemented(_)
        ));
        assert!(matches!(support(SE, "spec.location"), Support::Ignored(_)));
        assert_eq!(
            support(VS, "spec.http[].route[].weight"),
            Support::Implemented(None)
        );
    }
}
