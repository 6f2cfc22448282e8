//! The structural half of what the API server checks (types, required fields, unknown fields, enums, patterns,
//! bounds), walked over the generated CRD schema so `sonde run` rejects exactly what `kubectl apply` would.

use serde_json::Value;

/// A value that breaks the schema, with the path of the field (`spec.target.pids[0]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Checks `value` against an OpenAPI v3 (structural) schema, collecting every violation.
pub fn check(schema: &Value, value: &Value, path: &str) -> Vec<SchemaError> {
    let mut errors = Vec::new();
    walk(schema, value, path, &mut errors);
    errors
}

/// Removes every `null` the API server prunes before admission: the value of a field whose schema is not
/// `nullable` (see [`crate::crd`]). A pruned field reads as absent to the checks that follow, as in a cluster.
pub fn prune_nulls(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            fields.retain(|name, v| {
                let child = props.and_then(|p| p.get(name)).or(additional);
                !v.is_null() || child.is_some_and(nullable)
            });
            for (name, v) in fields.iter_mut() {
                if let Some(child) = props.and_then(|p| p.get(name)).or(additional) {
                    prune_nulls(child, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                items.iter_mut().for_each(|i| prune_nulls(item_schema, i));
            }
        }
        _ => {}
    }
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<SchemaError>) {
    let mut err = |message: String| {
        out.push(SchemaError {
            path: path.to_string(),
            message,
        })
    };
    if value.is_null() {
        if !nullable(schema) {
            err("must not be null".into());
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.as_i64().is_some() || value.as_u64().is_some(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        err(format!(
            "must be of type {}, got {}",
            ty.unwrap_or("?"),
            json_type(value)
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        err(format!(
            "unsupported value {value}: supported values: {}",
            names.join(", ")
        ));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            err(format!("must be at least {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            err(format!("must be at most {max} characters"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(s) => err(format!("{s:?} does not match {pattern}")),
                Ok(_) => {}
                Err(e) => err(format!("schema pattern {pattern} does not compile: {e}")),
            }
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            err(format!("must be greater than or equal to {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            err(format!("must be less than or equal to {max}"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            err(format!("must have at least {min} items"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            err(format!("must have at most {max} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                walk(item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = req.as_str()
                && !fields.contains_key(name)
            {
                out.push(SchemaError {
                    path: join(path, name),
                    message: "Required value".into(),
                });
            }
        }
        for (name, v) in fields {
            let child = join(path, name);
            match (props.and_then(|p| p.get(name)), additional) {
                (Some(s), _) => walk(s, v, &child, out),
                (None, Some(s)) if s.is_object() => walk(s, v, &child, out),
                (None, _) if preserve || props.is_none() => {}
                (None, _) => out.push(SchemaError {
                    path: child,
                    message: "field not declared in schema".into(),
                }),
            }
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
