//! Istio's YAML as users write it (tests/data/istio-corpus.yaml: every field of the six kinds
//! Ambit serves, deprecated spellings included) loads in every version Istio serves; the
//! fields Ambit ignores or does not enforce are named in conditions, as the compatibility
//! table says; the CRDs keep every field the corpus sets (none would be pruned); and the
//! corpus sets every field the types have, so none goes untested.

use std::collections::{BTreeMap, BTreeSet};

use mesh_controller::{
    compatibility::{Support, fields, support},
    config::{
        ConfigSet, Resource,
        load::parse_documents,
        validate::{FAILS_CLOSED, IGNORED_FIELDS, validate},
    },
};

const CORPUS: &str = include_str!("data/istio-corpus.yaml");

fn documents() -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(CORPUS)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|doc: &serde_yaml::Value| !doc.is_null())
        .collect()
}

fn load(text: &str) -> ConfigSet {
    let mut set = ConfigSet::default();
    let errors = parse_documents("istio-corpus.yaml", text, &mut set);
    assert!(errors.is_empty(), "{errors:#?}");
    set
}

#[test]
fn every_document_loads_in_every_served_version() {
    let documents = documents();
    assert!(documents.len() >= 40, "{} documents", documents.len());
    for document in &documents {
        let api_version = document["apiVersion"].as_str().unwrap();
        let group = api_version.split('/').next().unwrap();
        let versions: &[&str] = match group {
            "networking.istio.io" => &["v1alpha3", "v1beta1", "v1"],
            "security.istio.io" => &["v1beta1", "v1"],
            other => panic!("unexpected group {other}"),
        };
        for version in versions {
            let mut copy = document.clone();
            copy["apiVersion"] = format!("{group}/{version}").into();
            let set = load(&serde_yaml::to_string(&copy).unwrap());
            assert_eq!(set.resources.len(), 1, "{version}: {document:?}");
        }
    }
}

/// Every resource applies (but faults Istio itself refuses); ignored fields and fields that
/// fail closed are named in their conditions, exactly those the table says.
#[test]
fn ignored_and_closed_fields_are_named_in_conditions() {
    let set = load(CORPUS);
    let validation = validate(&set, "cluster.local");
    let schemas = fields::spec_schemas();
    let mut named = [0usize; 2];
    for (key, resource) in &set.resources {
        let conditions = validation.conditions(key, None);
        let accepted = conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
        if key.name == "ratings-chaos" {
            assert_eq!(accepted.status, "False");
            for what in ["fault.abort needs one of", "fault.delay needs fixedDelay"] {
                assert!(accepted.message.contains(what), "{}", accepted.message);
            }
        } else {
            assert_eq!(accepted.status, "True", "{key}: {}", accepted.message);
        }
        let spec = spec_of(resource);
        let (kind, schema) = schemas
            .iter()
            .find(|(kind, _)| kind == key.kind.name())
            .unwrap();
        let set_paths = fields::set_paths(schema, &spec, ("spec", "spec"));
        // The fields it sets; `tls` with only `tls.mode` set is `tls.mode`.
        let leaves = set_paths.iter().filter(|(path, _)| {
            !set_paths
                .iter()
                .any(|(other, _)| other.len() > path.len() && path_has_named_children(other, path))
        });
        for (path, general) in leaves {
            let (type_, index) = match support(kind, general) {
                Support::Implemented(_) => continue,
                Support::Ignored(_) => (IGNORED_FIELDS, 0),
                Support::FailsClosed(_) => (FAILS_CLOSED, 1),
            };
            let condition = conditions.iter().find(|c| c.type_ == type_);
            assert!(
                condition.is_some_and(|c| c.status == "True" && c.message.contains(path.as_str())),
                "{key}: {path} should be named in {type_}: {conditions:#?}"
            );
            named[index] += 1;
        }
    }
    assert!(named[0] > 100 && named[1] > 10, "{named:?}");
}

/// Whether `other` is a field under `path`.
fn path_has_named_children(other: &str, path: &str) -> bool {
    other.starts_with(&format!("{path}.")) || other.starts_with(&format!("{path}["))
}

fn spec_of(resource: &Resource) -> serde_json::Value {
    resource
        .istio_spec()
        .unwrap_or_else(|| panic!("unexpected {:?}", resource.key()))
}

/// The CRDs' schemas name every field the corpus sets (an API server would prune nothing),
/// and the corpus sets every field the schemas name.
#[test]
fn the_crds_keep_every_field_and_the_corpus_sets_every_field() {
    let set = load(CORPUS);
    let mut set_by_kind: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let schemas = fields::spec_schemas();
    for (key, resource) in &set.resources {
        let (_, schema) = schemas
            .iter()
            .find(|(kind, _)| kind == key.kind.name())
            .unwrap();
        let paths = fields::set_paths(schema, &spec_of(resource), ("spec", "spec"));
        set_by_kind
            .entry(key.kind.name().to_owned())
            .or_default()
            .extend(paths.into_iter().map(|(_, general)| general));
    }
    for (kind, schema) in schemas {
        let mut all = Vec::new();
        fields::all_paths(schema, "spec", &mut all);
        let all: BTreeSet<String> = all.into_iter().collect();
        let set = &set_by_kind[kind];
        let pruned: Vec<&String> = set.difference(&all).collect();
        assert!(pruned.is_empty(), "{kind}: the CRD lacks {pruned:#?}");
        let untested: Vec<&String> = all
            .iter()
            .filter(|path| !set.contains(*path))
            // A list's or a map's own row is covered by its items.
            .filter(|path| {
                !set.iter().any(|s| {
                    s.starts_with(&format!("{path}[]")) || s.starts_with(&format!("{path}{{}}"))
                })
            })
            .collect();
        assert!(
            untested.is_empty(),
            "{kind}: the corpus never sets {untested:#?}"
        );
    }
}

/// Deprecated spellings are read as what replaced them.
#[test]
fn deprecated_spellings_are_read_as_their_replacements() {
    let set = load(CORPUS);
    let mut mirror_percent = 0;
    let mut fault_percent = 0;
    for (_, vs) in set.virtual_services() {
        for http in &vs.spec.http {
            if let Some(n) = http.mirror_percent.or(http.mirror_percent_snake)
                && http.mirror_percentage.is_some()
            {
                mirror_percent += 1;
                let _ = n;
            }
            if let Some(abort) = http.fault.as_ref().and_then(|f| f.abort.as_ref())
                && let Some(percent) = abort.percent
            {
                assert!(abort.percentage.is_some(), "abort percent {percent} read");
                fault_percent += 1;
            }
        }
    }
    assert!(mirror_percent >= 2, "mirrorPercent and mirror_percent");
    assert!(fault_percent >= 1, "fault.abort.percent");
}
