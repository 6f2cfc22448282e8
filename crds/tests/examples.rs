//! Every example parses into the Rust types; every bad manifest is refused with a message naming its field.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::path::{Path, PathBuf};

use sonde_crds::{Manifest, parse_manifests};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_parses() {
    let files = yaml_files(&examples_dir());
    assert!(
        files.len() >= 4,
        "expected the field-case examples, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = parse_manifests(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for m in parsed {
            match m {
                Manifest::TraceJob(j) => {
                    assert!(sonde_crds::parse_duration(&j.spec.duration).is_ok())
                }
                Manifest::ProbePolicy(p) => assert!(!p.spec.thresholds.is_empty()),
            }
        }
    }
}

/// Each bad manifest says on its first line `# expect: <field path>`; the refusal must name that field.
#[test]
fn bad_manifests_are_refused_naming_the_field() {
    let files = yaml_files(&examples_dir().join("bad"));
    assert!(files.len() >= 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let field = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("expect line")
            .trim();
        let err = match parse_manifests(&text) {
            Ok(_) => panic!("{} was accepted", file.display()),
            Err(e) => e,
        };
        let problems = err.problems();
        assert!(
            problems.iter().any(|p| p.contains(field)),
            "{}: expected a problem naming {field}, got {problems:#?}",
            file.display()
        );
    }
}

#[test]
fn spec_is_immutable() {
    let text = std::fs::read_to_string(examples_dir().join("wakeups.yaml")).unwrap();
    let Manifest::TraceJob(job) = parse_manifests(&text).unwrap().remove(0) else {
        panic!("not a TraceJob")
    };
    let mut changed = (*job).clone();
    changed.spec.duration = "30s".into();
    let err = changed
        .validate_cel_update(&job)
        .expect_err("a changed spec must be refused");
    assert!(err.to_string().contains("immutable"), "{err}");
    assert!(job.validate_cel_update(&job).is_ok());
}
