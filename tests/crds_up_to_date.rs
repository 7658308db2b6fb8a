//! `crds/` is generated from the Rust types; this fails when someone changes one without the other.

use smart_operator::manifests::{GENERATED_HEADER, rendered};

#[test]
fn crds_directory_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let expected = rendered().expect("manifests render");
    let mut stale = Vec::new();
    for (file, yaml) in &expected {
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if on_disk != format!("{GENERATED_HEADER}{yaml}") {
            stale.push(file.clone());
        }
    }
    let extra: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && !expected.iter().any(|(e, _)| e == f))
        .collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "crds/ is out of date (stale: {stale:?}, not generated: {extra:?}); run `cargo run --bin crdgen -- crds`"
    );
}
