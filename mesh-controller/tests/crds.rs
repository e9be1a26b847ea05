//! deploy/crds/ and docs/compatibility.md must be what the resource types generate: a change to
//! a type (or to the compatibility table) without `cargo xtask codegen` fails here.

use std::path::Path;

#[test]
fn deploy_crds_match_the_resource_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let files = mesh_api::crd_files().unwrap();
    assert_eq!(files.len(), 6, "every Istio kind has a CRD");
    for (name, yaml) in files {
        let on_disk = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("deploy/crds/{name}: {e}; run `cargo xtask codegen`"));
        assert!(
            on_disk == yaml,
            "deploy/crds/{name} differs from what the types generate; run `cargo xtask codegen`"
        );
    }
}

#[test]
fn istio_kinds_are_served_in_every_version_istio_serves() {
    let crds = mesh_api::crds();
    let versions = |kind: &str| -> Vec<(String, bool)> {
        let crd = crds
            .iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap_or_else(|| panic!("no CRD for {kind}"));
        crd.spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.storage))
            .collect()
    };
    let stored_v1 = |names: &[&str]| -> Vec<(String, bool)> {
        names.iter().map(|n| (n.to_string(), *n == "v1")).collect()
    };
    for kind in [
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
    ] {
        assert_eq!(
            versions(kind),
            stored_v1(&["v1alpha3", "v1beta1", "v1"]),
            "{kind}"
        );
    }
    for kind in ["PeerAuthentication", "AuthorizationPolicy"] {
        assert_eq!(versions(kind), stored_v1(&["v1beta1", "v1"]), "{kind}");
    }
}

#[test]
fn the_compatibility_table_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/compatibility.md");
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask codegen`", path.display()));
    assert!(
        on_disk == mesh_controller::compatibility::doc::render(),
        "docs/compatibility.md differs from what the types and table generate; run `cargo xtask codegen`"
    );
}
