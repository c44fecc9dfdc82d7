//! `docs/openapi.yaml` is kept true to the types the node serves: every operation's request
//! and response schemas have exactly the fields of the type that writes them, with the same
//! JSON types, recursively.

use std::collections::{BTreeMap, BTreeSet};

use fab_client::types::*;
use schemars::JsonSchema;
use serde_json::Value;

/// What a schema says about a JSON value, with references resolved and `null` set aside.
#[derive(Debug)]
enum Shape {
    /// Free-form, or a union this check does not take apart.
    Any,
    Scalar(BTreeSet<String>),
    Array(Box<Shape>),
    Object(BTreeMap<String, Shape>),
    /// An object with arbitrary keys and values of one shape.
    Map(Box<Shape>),
    /// `type: object` and nothing more: fine for a free-form value, not for a typed one.
    Undescribed,
}

/// Resolves `#/...` references against `root`.
fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    while let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let ptr = r.strip_prefix('#').unwrap_or(r);
        s = root
            .pointer(ptr)
            .unwrap_or_else(|| panic!("unresolved reference {r}"));
    }
    s
}

fn shape(root: &Value, s: &Value) -> Shape {
    let s = resolve(root, s);
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        let mut props = BTreeMap::new();
        for part in all {
            match shape(root, part) {
                Shape::Object(p) => props.extend(p),
                other => panic!("allOf of a non-object: {other:?}"),
            }
        }
        return Shape::Object(props);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = s.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = alts
                .iter()
                .filter(|a| resolve(root, a).get("type") != Some(&Value::from("null")))
                .collect();
            return match non_null.as_slice() {
                [one] => shape(root, one),
                _ => Shape::Any,
            };
        }
    }
    let types: BTreeSet<String> = match s.get("type") {
        Some(Value::String(t)) => [t.clone()].into(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    };
    let types: BTreeSet<String> = types.into_iter().filter(|t| t != "null").collect();
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        return Shape::Object(
            props
                .iter()
                .map(|(k, v)| (k.clone(), shape(root, v)))
                .collect(),
        );
    }
    if types.len() == 1 && types.contains("object") {
        return match s.get("additionalProperties") {
            Some(v) if v.is_object() => Shape::Map(Box::new(shape(root, v))),
            _ => Shape::Undescribed,
        };
    }
    if types.len() == 1 && types.contains("array") {
        return Shape::Array(Box::new(
            s.get("items").map_or(Shape::Any, |i| shape(root, i)),
        ));
    }
    if types.is_empty() {
        return Shape::Any;
    }
    Shape::Scalar(types)
}

/// Every difference between the documented shape and the type's, by JSON path.
fn compare(at: &str, doc: &Shape, typed: &Shape, errors: &mut Vec<String>) {
    match (doc, typed) {
        (Shape::Any, _) | (_, Shape::Any) | (Shape::Undescribed, Shape::Map(_)) => {}
        (Shape::Object(d), Shape::Object(t)) => {
            for k in t.keys().filter(|k| !d.contains_key(*k)) {
                errors.push(format!("{at}.{k}: served but not documented"));
            }
            for k in d.keys().filter(|k| !t.contains_key(*k)) {
                errors.push(format!("{at}.{k}: documented but not served"));
            }
            for (k, ds) in d {
                if let Some(ts) = t.get(k) {
                    compare(&format!("{at}.{k}"), ds, ts, errors);
                }
            }
        }
        (Shape::Array(d), Shape::Array(t)) | (Shape::Map(d), Shape::Map(t)) => {
            compare(&format!("{at}[]"), d, t, errors)
        }
        (Shape::Scalar(d), Shape::Scalar(t)) if d == t => {}
        _ => errors.push(format!("{at}: documented as {doc:?}, served as {typed:?}")),
    }
}

fn typed<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("a schema is JSON")
}

/// The documented schema of an operation's response (or request body with `status` None).
fn documented<'a>(doc: &'a Value, path: &str, method: &str, status: Option<&str>) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let content = match status {
        Some(s) => {
            let r = &op["responses"][s];
            assert!(
                r.is_object(),
                "{method} {path} has no {s} response documented"
            );
            &resolve(doc, r)["content"]
        }
        None => &op["requestBody"]["content"],
    };
    &content["application/json"]["schema"]
}

#[test]
fn openapi_yaml_matches_the_types_the_node_serves() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .expect("docs/openapi.yaml is readable");
    let doc: Value = serde_yaml::from_str(&text).expect("docs/openapi.yaml is YAML");
    // (path, method, status or None for the request body, the type).
    let table: Vec<(&str, &str, Option<&str>, Value)> = vec![
        ("/v1/health", "get", Some("200"), typed::<Health>()),
        ("/v1/health", "get", Some("503"), typed::<Health>()),
        ("/v1/health/live", "get", Some("200"), typed::<Live>()),
        ("/v1/node", "get", Some("200"), typed::<NodeInfo>()),
        ("/v1/models", "get", Some("200"), typed::<Models>()),
        ("/v1/jobs", "post", None, typed::<SubmitRequest>()),
        ("/v1/jobs", "post", Some("200"), typed::<JobResult>()),
        ("/v1/jobs", "post", Some("409"), typed::<ErrorBody>()),
        ("/v1/jobs", "get", Some("200"), typed::<Jobs>()),
        ("/v1/jobs/{id}", "get", Some("200"), typed::<JobDetail>()),
        ("/v1/jobs/{id}", "get", Some("404"), typed::<ErrorBody>()),
        ("/v1/ledger/head", "get", Some("200"), typed::<LedgerHead>()),
        ("/v1/ledger/heads", "get", Some("200"), typed::<Feeds>()),
        ("/v1/peers", "get", Some("200"), typed::<Peers>()),
        (
            "/v1/telemetry",
            "get",
            Some("200"),
            typed::<TelemetryReports>(),
        ),
        (
            "/v1/ledger/entries",
            "get",
            Some("200"),
            typed::<EntryPage>(),
        ),
        (
            "/v1/ledger/entries",
            "get",
            Some("400"),
            typed::<ErrorBody>(),
        ),
        (
            "/v1/ledger/entries/{seq}",
            "get",
            Some("200"),
            typed::<Entry>(),
        ),
    ];
    let mut errors = Vec::new();
    for (path, method, status, schema) in &table {
        let d = shape(&doc, documented(&doc, path, method, *status));
        let t = shape(schema, schema);
        let at = format!(
            "{} {path} {}",
            method.to_uppercase(),
            status.unwrap_or("request")
        );
        compare(&at, &d, &t, &mut errors);
    }
    // Every documented operation is covered by the table (`/metrics` is text).
    let covered: BTreeSet<(&str, &str)> = table.iter().map(|(p, m, _, _)| (*p, *m)).collect();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            if path != "/metrics" && !covered.contains(&(path.as_str(), method.as_str())) {
                errors.push(format!(
                    "{method} {path}: documented, not checked against a type"
                ));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "docs/openapi.yaml and the API's types disagree:\n  {}",
        errors.join("\n  ")
    );
}

#[test]
fn the_check_sees_a_field_missing_from_the_docs_and_one_only_documented() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Served {
        a: u64,
        b: Option<String>,
    }
    let doc: Value = serde_yaml::from_str(
        "type: object\nproperties:\n  a: { type: string }\n  c: { type: integer }\n",
    )
    .expect("yaml");
    let t = typed::<Served>();
    let mut errors = Vec::new();
    compare("x", &shape(&doc, &doc), &shape(&t, &t), &mut errors);
    errors.sort();
    assert_eq!(
        errors.len(),
        3,
        "a's type, b undocumented, c not served: {errors:?}"
    );
}
