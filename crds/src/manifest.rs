//! Reading TraceJob / ProbePolicy manifests outside a cluster (`sonde run`, tests), with the same checks the
//! API server applies: the structural schema, then the CEL rules, then the typed parse.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::Value;

use crate::{ProbePolicy, TraceJob, schema_check};

/// A resource a user writes.
#[derive(Clone, Debug)]
pub enum Manifest {
    TraceJob(Box<TraceJob>),
    ProbePolicy(Box<ProbePolicy>),
}

/// Why a manifest was refused. Every message names the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: not valid YAML: {source}")]
    Yaml {
        doc: usize,
        source: serde_yaml::Error,
    },
    #[error("document {doc}: {message}")]
    Kind { doc: usize, message: String },
    #[error("document {doc} ({kind} {name}) is invalid:\n  - {}", problems.join("\n  - "))]
    Invalid {
        doc: usize,
        kind: String,
        name: String,
        problems: Vec<String>,
    },
    #[error("no TraceJob or ProbePolicy found in the input")]
    Empty,
}

impl ManifestError {
    /// The individual problems (field path and message), for tests and machine output.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ManifestError::Invalid { problems, .. } => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// Parses every document in `text`; the first invalid one is an error naming its fields.
pub fn parse_manifests(text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let value: Value =
            serde::Deserialize::deserialize(doc).map_err(|source| ManifestError::Yaml {
                doc: doc_no,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        out.push(parse_one(doc_no, value)?);
    }
    if out.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(out)
}

fn parse_one(doc: usize, value: Value) -> Result<Manifest, ManifestError> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let want = format!("{}/v1alpha1", crate::GROUP);
    if api_version != want {
        return Err(ManifestError::Kind {
            doc,
            message: format!("apiVersion is {api_version:?}, expected {want:?}"),
        });
    }
    match kind.as_str() {
        "TraceJob" => Ok(Manifest::TraceJob(Box::new(validated::<TraceJob>(
            doc, &kind, value,
        )?))),
        "ProbePolicy" => Ok(Manifest::ProbePolicy(Box::new(validated::<ProbePolicy>(
            doc, &kind, value,
        )?))),
        other => Err(ManifestError::Kind {
            doc,
            message: format!("kind {other:?} cannot be run; expected TraceJob or ProbePolicy"),
        }),
    }
}

/// Schema, CEL and typed parse, in the API server's order; all problems of a stage are reported together.
pub fn validated<K>(doc: usize, kind: &str, value: Value) -> Result<K, ManifestError>
where
    K: CustomResourceExt + serde::de::DeserializeOwned,
{
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let invalid = |problems: Vec<String>| ManifestError::Invalid {
        doc,
        kind: kind.to_string(),
        name: name.clone(),
        problems,
    };
    if value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(invalid(vec!["metadata.name: Required value".into()]));
    }
    let schema = openapi_schema::<K>();
    let mut value = value;
    schema_check::prune_nulls(&schema, &mut value);
    // metadata is the API server's own; only spec (and status) follow the CRD schema.
    let mut body = value.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.remove("metadata");
        obj.remove("apiVersion");
        obj.remove("kind");
    }
    let structural: Vec<String> = schema_check::check(&schema, &body, "")
        .iter()
        .map(|e| e.to_string())
        .collect();
    if !structural.is_empty() {
        return Err(invalid(structural));
    }
    if let Err(errors) = Validator::new().validate(&schema, &value, None) {
        return Err(invalid(
            errors.into_vec().iter().map(|e| e.to_string()).collect(),
        ));
    }
    serde_json::from_value(value).map_err(|e| invalid(vec![e.to_string()]))
}

/// The `openAPIV3Schema` of a kind's CRD as JSON.
#[expect(
    clippy::expect_used,
    reason = "the CRDs are derived in this crate, each with a schema of string-keyed maps (tested)"
)]
pub fn openapi_schema<K: CustomResourceExt>() -> Value {
    let crd = crate::crd::<K>();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("derived CRDs have a schema")).expect("schemas serialize")
}
