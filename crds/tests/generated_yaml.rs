//! The committed CRD YAML must be exactly what the Rust types generate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

#[test]
fn committed_crds_match_the_types() {
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart = crds.join("../helm/sonde/crds");
    let mut drift = Vec::new();
    for dir in [crds.to_path_buf(), chart] {
        for (file, crd) in sonde_crds::all_crds() {
            let want = sonde_crds::crd_yaml(&crd).unwrap();
            let path = dir.join(file);
            if std::fs::read_to_string(&path).unwrap_or_default() != want {
                drift.push(path.display().to_string());
            }
        }
    }
    assert!(
        drift.is_empty(),
        "{drift:?} differ from the types: run `cargo run -p sonde-crds --bin crdgen`"
    );
}

#[test]
fn crds_have_status_short_names_and_columns() {
    for (_, crd) in sonde_crds::all_crds() {
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{}",
            crd.spec.names.kind
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(cols.contains(&"Age"), "{cols:?}");
    }
}
