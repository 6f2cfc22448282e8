//! The probe registry, walked probe by probe: every probe is whole (a description, an example the API server's
//! rules accept, CEL rules that take its own params and metrics and refuse another probe's, a kernel threshold
//! on one of its own metrics), and every probe loads through its attach chain on this kernel with exactly the
//! kernel aggregates it declares (so policy windows reset them). A new probe gets these checks by being
//! registered; nothing here names one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

mod common;

use serde_json::{Value, json};
use sonde_crds::*;
use sonde_probes::catalogue::{self, Aggregate};
use sonde_probes::{Filter, Running};

/// The example's TraceJob spec, as JSON.
fn example_spec(probe: ProbeName) -> Value {
    let text = catalogue::info(probe).example;
    let docs =
        parse_manifests(text).unwrap_or_else(|e| panic!("{probe}'s example is refused: {e}"));
    let [Manifest::TraceJob(job)] = docs.as_slice() else {
        panic!("{probe}'s example is not one TraceJob");
    };
    assert_eq!(
        job.spec.probe, probe,
        "{probe}'s example runs another probe"
    );
    serde_json::to_value(&job.spec).unwrap()
}

/// Whether the client-side API rules (schema and CEL, as the API server) accept a TraceJob with this spec.
fn accepted(spec: &Value) -> Result<(), String> {
    let doc = json!({
        "apiVersion": "sonde.dev/v1alpha1",
        "kind": "TraceJob",
        "metadata": {"name": "registry"},
        "spec": spec,
    });
    parse_manifests(&doc.to_string()) // JSON is YAML
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A probe other than `probe`, with metrics of its own when `with_metrics`.
fn another(probe: ProbeName, with_metrics: bool) -> ProbeName {
    ProbeName::ALL
        .iter()
        .copied()
        .find(|p| *p != probe && (!with_metrics || !p.metrics().is_empty()))
        .expect("more than one probe")
}

#[test]
fn every_probe_is_registered_whole() {
    assert_eq!(catalogue::all().count(), ProbeName::ALL.len());
    for info in catalogue::all() {
        let probe = info.name;
        assert!(!info.description.is_empty(), "{probe} has no description");
        assert!(!info.hooks.is_empty(), "{probe} has no hooks");
        assert!(
            info.hooks.iter().all(|h| !h.chain.is_empty()),
            "{probe} has a hook with no way to attach"
        );
        if let Some(k) = info.kernel_threshold {
            assert!(
                probe.metrics().contains(&k.metric),
                "{probe}'s kernel threshold watches {:?}, not one of its metrics",
                k.metric
            );
        }
        let spec = example_spec(probe);

        // Its own params section (empty: every field has a default) is accepted, another probe's refused.
        let mut own = spec.clone();
        own["params"] = json!({ probe.params_key(): {} });
        accepted(&own).unwrap_or_else(|e| panic!("{probe}'s own params are refused: {e}"));
        let other = another(probe, false);
        let mut foreign = spec.clone();
        foreign["params"] = json!({ other.params_key(): {} });
        let refused = accepted(&foreign).expect_err(&format!(
            "{probe} took params.{} of {other}",
            other.params_key()
        ));
        assert!(refused.contains("own section"), "{refused}");

        // Thresholds on each of its metrics (and eventsPerSecond) are accepted, on another probe's refused.
        for metric in probe.metrics().iter().chain([&Metric::EventsPerSecond]) {
            let mut t = spec.clone();
            t["thresholds"] = json!([{"metric": metric.as_str(), "value": 1}]);
            accepted(&t)
                .unwrap_or_else(|e| panic!("{probe}'s metric {} is refused: {e}", metric.as_str()));
        }
        let other = another(probe, true);
        let mut t = spec.clone();
        t["thresholds"] = json!([{"metric": other.metrics()[0].as_str(), "value": 1}]);
        let refused = accepted(&t).expect_err(&format!(
            "{probe} took a threshold on {other}'s {}",
            other.metrics()[0].as_str()
        ));
        assert!(
            refused.contains("must be produced by the probe"),
            "{refused}"
        );
    }
}

/// Needs root and a BTF kernel, as every kernel test.
#[test]
fn every_probe_loads_through_its_chain_with_the_aggregates_it_declares() {
    sonde_tests::requires!(Root);
    for info in catalogue::all() {
        let probe = info.name;
        let spec: TraceJobSpec = serde_json::from_value(example_spec(probe)).unwrap();
        let mut cfg = common::config(
            probe,
            Filter {
                comms: spec.target.comms.clone(),
                ..Default::default()
            },
            spec.thresholds.clone(),
            spec.params.clone().unwrap_or_default(),
        );
        cfg.output = spec.output.clone();
        let running = Running::start(cfg)
            .unwrap_or_else(|e| panic!("{probe} does not load on this kernel: {e}"));
        let strategy = running.loaded.strategy();
        assert!(!strategy.is_empty(), "{probe} attached nothing");
        let maps: Vec<String> = running
            .loaded
            .ebpf
            .maps()
            .map(|(name, _)| name.to_string())
            .collect();
        for a in Aggregate::ALL {
            assert_eq!(
                maps.iter().any(|m| m == a.map()),
                info.aggregates.contains(&a),
                "{probe}: map {:?} in the object vs {:?} declared (maps: {maps:?})",
                a.map(),
                info.aggregates
            );
        }
        eprintln!("{probe}: attached via {strategy}; maps {maps:?}");
    }
}
