//! Where a session's results may go. A session names at most a storage *location* the cluster admin defined on
//! the agent (`--storage-locations`, the chart's `storage.locations`), never a URL: the agent runs as root with
//! the cluster's storage credentials, and a user-chosen URL would let any namespace editor write to any host
//! path or bucket. Keys stay under the session's own `<tracejobs|probepolicies>/<namespace>/` prefix, which the
//! agent checks itself rather than trusting the object.

use std::collections::BTreeMap;

use sonde_crds::ProbeSessionSpec;
use sonde_crds::results::ResultsPath;

/// The admin's storage locations: the default and the named ones.
#[derive(Clone, Debug)]
pub struct Locations {
    default: String,
    named: BTreeMap<String, String>,
}

impl Locations {
    /// `named` is `name=url,name=url` (see [`sonde_telemetry::parse_locations`]).
    /// Warns once (this is read at start) of `results+http://` locations, which carry the agent's token in clear.
    pub fn parse(default: String, named: &str) -> Result<Locations, String> {
        let named = sonde_telemetry::parse_locations(named)?;
        super::store::warn_of_clear_tokens(
            std::iter::once(default.as_str()).chain(named.values().map(String::as_str)),
        );
        Ok(Locations { default, named })
    }

    /// The default store's URL (sessions that name no location).
    pub fn default_url(&self) -> &str {
        &self.default
    }

    /// The object-store URL a session writes under, or why it may not write at all.
    pub fn destination(&self, spec: &ProbeSessionSpec, namespace: &str) -> Result<String, String> {
        check_prefix(spec, namespace)?;
        if let Some(url) = spec.storage.as_ref().and_then(|s| s.url.as_ref()) {
            return Err(format!(
                "spec.storage.url ({url}) is not accepted: results go only to a storage location the cluster \
                 admin defined (spec.storage.location)"
            ));
        }
        match spec.storage.as_ref().and_then(|s| s.location.as_deref()) {
            None => Ok(self.default.clone()),
            Some(name) => self.named.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = self.named.keys().map(String::as_str).collect();
                format!(
                    "storage location {name:?} is not defined on this node's agent (defined: {}; Helm value \
                     storage.locations)",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            }),
        }
    }
}

/// A result prefix is a results path (`sonde_crds::results::ResultsPath`: plain segments) in the session's own
/// namespace and of its own node: no way out of them, whatever the object says.
fn check_prefix(spec: &ProbeSessionSpec, namespace: &str) -> Result<(), String> {
    let prefix = &spec.result_prefix;
    let path = ResultsPath::parse(prefix).map_err(|e| format!("spec.resultPrefix: {e}"))?;
    if path.namespace != namespace {
        return Err(format!(
            "spec.resultPrefix {prefix:?} is not under {}/ (the session's namespace)",
            path.kind.namespace_folder(namespace)
        ));
    }
    if path.node != spec.node_name {
        return Err(format!(
            "spec.resultPrefix {prefix:?} names node {}, the session runs on {}",
            path.node, spec.node_name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefix: &str, storage: serde_json::Value) -> ProbeSessionSpec {
        let mut v = serde_json::json!({"nodeName": "n", "probe": "exec", "resultPrefix": prefix});
        if !storage.is_null() {
            v["storage"] = storage;
        }
        serde_json::from_value(v).unwrap()
    }

    fn locations() -> Locations {
        Locations::parse(
            "file:///var/lib/sonde/results".into(),
            "archive=s3://bucket/sonde, scratch=file:///scratch",
        )
        .unwrap()
    }

    #[test]
    fn the_default_and_named_locations_resolve() {
        let l = locations();
        let own = "tracejobs/team-a/job-1234/n";
        let d = l.destination(&spec(own, serde_json::Value::Null), "team-a");
        assert_eq!(d.unwrap(), "file:///var/lib/sonde/results");
        let d = l.destination(
            &spec(own, serde_json::json!({"location": "archive"})),
            "team-a",
        );
        assert_eq!(d.unwrap(), "s3://bucket/sonde");
    }

    #[test]
    fn unknown_locations_urls_and_foreign_prefixes_are_refused_with_the_reason() {
        let l = locations();
        let own = "tracejobs/team-a/job-1234/n";
        let e = l
            .destination(
                &spec(own, serde_json::json!({"location": "nope"})),
                "team-a",
            )
            .unwrap_err();
        assert!(
            e.contains("\"nope\"") && e.contains("archive, scratch"),
            "{e}"
        );
        let e = l
            .destination(
                &spec(own, serde_json::json!({"url": "file:///etc"})),
                "team-a",
            )
            .unwrap_err();
        assert!(
            e.contains("file:///etc") && e.contains("not accepted"),
            "{e}"
        );
        for bad in [
            "tracejobs/team-b/job/n",
            "tracejobs/team-a/../team-b/x",
            "/tracejobs/team-a/x",
            "tracejobs/team-a",
            "other/team-a/x",
            "tracejobs/team-a//x",
            "tracejobs/team-a/job-1234/other-node",
            "tracejobs/team-a/job-1234/n/below",
        ] {
            let e = l.destination(&spec(bad, serde_json::Value::Null), "team-a");
            assert!(e.is_err(), "{bad} accepted");
        }
        assert!(Locations::parse("file:///d".into(), "x=ftp://h").is_err());
        assert!(Locations::parse("file:///d".into(), "no-equals").is_err());
    }
}
