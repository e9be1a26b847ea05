//! The examples in deploy/examples/ load and pass Ambit's own validation: what users start
//! from is accepted as written. Each file is an alternative (two route `reviews`), so each is
//! checked on its own.

use std::path::Path;

use mesh_controller::config::{ConfigSet, load, validate};

#[test]
fn every_example_is_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 9);
    for file in files {
        let mut set = ConfigSet::default();
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.display().to_string();
        let errors = load::parse_documents(&name, &text, &mut set);
        assert_eq!(errors, [], "{name} must load");
        assert!(!set.resources.is_empty(), "{name} is empty");
        let validation = validate::validate(&set, "cluster.local");
        for key in set.resources.keys() {
            assert!(
                validation.accepted(key),
                "{name}: {key}: {:?}",
                validation.findings.get(key)
            );
        }
    }
}
