//! The CRDs in deploy/crds/ validate what balctl reads: every policy in
//! examples/k8s/ passes its kind's OpenAPI schema, and policies the schema
//! must refuse are refused (as the API server would, before balctl sees
//! them). Needs no privileges.

use std::path::Path;

use serde_json::{Value, json};

/// The `openAPIV3Schema` of the CRD in `file`, compiled.
fn schema(file: &str) -> (boon::Schemas, boon::SchemaIndex) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds").join(file);
    let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    assert!(schema.is_object(), "{file} has no openAPIV3Schema");
    let (mut schemas, mut compiler) = (boon::Schemas::new(), boon::Compiler::new());
    let url = format!("https://balctl.invalid/crds/{file}");
    compiler.add_resource(&url, schema).unwrap();
    let index = compiler.compile(&url, &mut schemas).unwrap_or_else(|e| panic!("{file}: {e:#}"));
    (schemas, index)
}

/// Every document of kind `kind` in examples/k8s/.
fn examples(kind: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/k8s");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for value in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            if value["kind"] == kind {
                found.push(value);
            }
        }
    }
    found
}

pub fn the_crds_accept_the_examples_and_refuse_bad_policies() {
    for (file, kind) in
        [("localredirectpolicies.yaml", "LocalRedirectPolicy"), ("balancingpolicies.yaml", "BalancingPolicy")]
    {
        let (schemas, index) = schema(file);
        let policies = examples(kind);
        assert!(!policies.is_empty(), "no {kind} in examples/k8s");
        for policy in &policies {
            if let Err(err) = schemas.validate(policy, index) {
                panic!("{file} refuses the example {}: {err:#}", policy["metadata"]["name"]);
            }
        }
        let good = &policies[0];
        let with = |pointer: &str, value: Value| {
            let mut bad = good.clone();
            *bad.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer} in {good:#}")) = value;
            bad
        };
        let frontend = good["spec"]["frontend"].clone();
        let both_matchers = {
            let mut both = frontend.clone();
            both["serviceMatcher"] = json!({ "serviceName": "web" });
            both["addressMatcher"] = json!({ "ip": "198.18.0.1", "toPorts": [{ "port": 80 }] });
            both
        };
        let bad = [
            ("no spec", with("/spec", json!(null))),
            ("no frontend", with("/spec/frontend", json!({}))),
            ("two frontends", with("/spec/frontend", both_matchers)),
            ("no backend", with("/spec/backend", json!({}))),
        ];
        for (what, policy) in bad {
            assert!(
                schemas.validate(&policy, index).is_err(),
                "{file} accepts a policy with {what}: {policy:#}"
            );
        }
    }
}
