//! Istio YAML as users apply it: the controller's loader and validator, and the enforcement
//! points' policy loader. Properties: never a panic; every AuthorizationPolicy the node-side
//! loader reads is either enforced as written or reported (and enforced failing closed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_controller::config::{ConfigSet, load, validate};
use mesh_core::policy::{PolicySet, parse_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut set = ConfigSet::default();
    let _ = load::parse_documents("fuzz.yaml", text, &mut set);
    let validation = validate::validate(&set, "cluster.local");
    let _ = mesh_controller::compile::compile(&set, &validation, "cluster.local");
    let mut policies = PolicySet::with_root_namespace("istio-system");
    let _ = parse_documents("fuzz.yaml", text, &mut policies);
    let _ = policies.summary();
});
