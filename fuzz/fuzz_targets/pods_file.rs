//! Local mode's pods file, which decides what is captured. Properties: never a panic; what
//! parses writes back to the same thing.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mesh_core::pods::PodsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = PodsFile::parse(Path::new("pods.yaml"), text) {
        let written = serde_yaml_written(&file);
        let again =
            PodsFile::parse(Path::new("pods.yaml"), &written).expect("what was written parses");
        assert_eq!(again, file);
    }
});

fn serde_yaml_written(file: &PodsFile) -> String {
    // A file with no pods and no namespaces writes as `{}`: still a file that says so.
    let text = serde_yaml::to_string(file).expect("a pods file serializes");
    if text.trim().is_empty() {
        "pods: []\n".to_owned()
    } else {
        text
    }
}
