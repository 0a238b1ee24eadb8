//! The OpenAPI document (`/v1/openapi.json`) against the router it is
//! generated with: every documented path and method reaches a handler,
//! every other method is refused with 405, every operation that answers a
//! body documents its schema, the admin API's answers have the documented
//! fields, and the admin paths the hand-written document listed before are
//! all still there.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::db::Backend;
use crate::server::{ADMIN_TOKEN, http, world};

/// The methods a path is probed with (CONNECT needs an authority-form
/// target, so it is not one of them).
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"];

/// The `/v1/admin` paths and methods of the hand-written document this one
/// replaced.
const HAND_WRITTEN_ADMIN: &[(&str, &[&str])] = &[
    ("/v1/admin/credentials", &["get", "post"]),
    ("/v1/admin/credentials/{name}", &["get", "patch", "delete"]),
    ("/v1/admin/credentials/{name}/enable", &["post"]),
    ("/v1/admin/credentials/{name}/disable", &["post"]),
    ("/v1/admin/credentials/{name}/rotate", &["post"]),
    ("/v1/admin/credentials/{name}/check", &["post"]),
    ("/v1/admin/routes", &["get", "post"]),
    ("/v1/admin/routes/{name}", &["delete"]),
    ("/v1/admin/agents", &["get", "post"]),
    ("/v1/admin/agents/{name}/jwt", &["put"]),
    ("/v1/admin/identity-providers", &["get", "post"]),
    ("/v1/admin/identity-providers/{name}", &["delete"]),
    ("/v1/admin/tokens", &["post"]),
    ("/v1/admin/plugins", &["get"]),
    ("/v1/admin/audit", &["get"]),
];

/// A documented path with a sample value for each parameter.
fn concrete(path: &str) -> String {
    let p = path
        .replace("{name}", "openai-key")
        .replace("{route}", "openai")
        .replace("{rest}", "v1/models")
        .replace("{prefix}", "lk_reg_AbCd");
    assert!(!p.contains('{'), "{path} has a parameter with no sample value");
    p
}

/// The HTTP methods a path item documents (lower case).
fn documented_methods(item: &Value) -> BTreeSet<String> {
    let all: BTreeSet<String> = METHODS.iter().map(|m| m.to_lowercase()).collect();
    item.as_object().unwrap().keys().filter(|k| all.contains(*k)).cloned().collect()
}

/// What a JSON pointer-style `$ref` names in the document.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("{reference} is not local"));
    doc.pointer(pointer).unwrap_or_else(|| panic!("{reference} does not resolve"))
}

/// Every `$ref` anywhere under `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The property names an object schema declares (through `$ref` and `allOf`).
fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(r) = schema["$ref"].as_str() {
        return properties(doc, resolve(doc, r));
    }
    let mut out: BTreeSet<String> =
        schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(properties(doc, part));
    }
    out
}

/// The JSON schema of an operation's answer with `status`.
fn answer_schema<'a>(doc: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
    let response = &doc["paths"][path][method]["responses"][status];
    assert!(response.is_object(), "{method} {path} documents no {status}");
    &response["content"]["application/json"]["schema"]
}

async fn document(base: &str) -> Value {
    let (status, doc, headers) = http("GET", &format!("{base}/v1/openapi.json"), &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_paths_and_methods_are_the_routers() {
    let (w, _) = world(Backend::Sqlite).await.unwrap();
    let doc = document(&w.base).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 20, "{}", paths.len());
    for (path, item) in paths {
        let documented = documented_methods(item);
        assert!(!documented.is_empty(), "{path} documents no method");
        let url = format!("{}{}", w.base, concrete(path));
        for method in METHODS {
            // A wrong admin token: admin handlers refuse it, others ignore or
            // refuse it, and nothing reaches an upstream.
            let (status, v, _) = http(method, &url, &[("authorization", "Bearer wrong")], None).await;
            let lower = method.to_lowercase();
            // A GET route answers HEAD too (without the body), as HTTP wants.
            if documented.contains(&lower) || (method == "HEAD" && documented.contains("get")) {
                assert_ne!(status, 405, "{method} {path} is documented but not routed");
                assert!(
                    !(status == 404 && v["error"]["message"] == "no such endpoint"),
                    "{method} {path} is documented but reaches no handler: {v}"
                );
                if path.starts_with("/v1/admin") {
                    assert_eq!(status, 401, "{method} {path} must require the admin token: {v}");
                    if method != "HEAD" {
                        assert_eq!(v["error"]["code"], "invalid_admin_token", "{method} {path}");
                    }
                }
            } else {
                assert_eq!(status, 405, "{method} {path} is not documented, so it must not be routed: {v}");
            }
        }
    }
    // Every admin path and method of the hand-written document is still there.
    for (path, methods) in HAND_WRITTEN_ADMIN {
        let documented = documented_methods(&doc["paths"][*path]);
        for m in *methods {
            assert!(documented.contains(*m), "{m} {path} is no longer documented");
        }
    }
    // A path nobody documented is the JSON 404.
    let (status, v, _) = http("GET", &format!("{}/v1/admin/nope", w.base), &[], None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_operations_document_their_answers() {
    let (w, _) = world(Backend::Sqlite).await.unwrap();
    let doc = document(&w.base).await;
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in documented_methods(item) {
            let op = &item[&method];
            let what = format!("{method} {path}");
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{what} has no summary");
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{what} has no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} twice");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|s| s.starts_with('2')), "{what} documents no success");
            // An answer with a body documents its schema; a 204 has none.
            for (status, response) in responses {
                let response = match response["$ref"].as_str() {
                    Some(r) => resolve(&doc, r),
                    None => response,
                };
                let content = response["content"].as_object();
                if status == "200" || status == "201" || status == "default" {
                    let content = content.unwrap_or_else(|| panic!("{what} {status} documents no body"));
                    assert!(!content.is_empty(), "{what} {status} documents no body");
                    for (media, c) in content {
                        assert!(c["schema"].is_object(), "{what} {status} {media} has no schema");
                    }
                } else if status == "204" {
                    assert!(content.is_none(), "{what} 204 documents a body");
                }
            }
            if path.starts_with("/v1/admin") {
                assert_eq!(op["security"], serde_json::json!([{"admin": []}]), "{what}");
                let error = responses.get("default").map(|r| &r["$ref"]);
                assert_eq!(error, Some(&"#/components/responses/ErrorBody".into()), "{what}: the error answer");
            }
            if path.starts_with("/v1/admin") {
                let bodiless = method == "get"
                    || method == "delete"
                    || ["/enable", "/disable", "/check", "/token"].iter().any(|s| path.ends_with(s));
                assert_eq!(op["requestBody"].is_object(), !bodiless, "{what}: request body");
            }
        }
    }
    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 30, "{}", all.len());
    for r in &all {
        resolve(&doc, r);
    }
    // The error body, with every stable code.
    let error = resolve(&doc, "#/components/responses/ErrorBody");
    let schema = &error["content"]["application/json"]["schema"];
    assert_eq!(properties(&doc, schema), BTreeSet::from(["error".to_string()]));
    let detail = resolve(&doc, schema["properties"]["error"]["$ref"].as_str().unwrap());
    let codes = detail["properties"]["code"]["enum"].as_array().unwrap();
    assert_eq!(codes.len(), latchkey::error::ErrorCode::ALL.len());
    assert!(codes.contains(&Value::from("invalid_admin_token")));
    // The security schemes.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!((&schemes["admin"]["type"], &schemes["admin"]["scheme"]), (&"http".into(), &"bearer".into()));
    assert_eq!(schemes["agentBasic"]["scheme"], "basic");
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_have_the_documented_fields() {
    let (w, _) = world(Backend::Sqlite).await.unwrap();
    let doc = document(&w.base).await;
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let a = [("authorization", admin.as_str())];
    let call = |method: &'static str, path: &'static str, body: Option<Value>| {
        let url = format!("{}/v1/admin{path}", w.base);
        async move { http(method, &url, &a, body).await }
    };
    let fields = |v: &Value| -> BTreeSet<String> {
        v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
    };
    // The answer (or a list's first item) has exactly the schema's fields.
    let check = |what: &str, answer: &Value, schema: &Value| {
        if schema["type"] == "array" {
            let first = answer.as_array().and_then(|a| a.first()).unwrap_or_else(|| panic!("{what}: {answer}"));
            assert_eq!(fields(first), properties(&doc, &schema["items"]), "{what}");
        } else {
            assert_eq!(fields(answer), properties(&doc, schema), "{what}");
        }
    };

    // Something of each kind first.
    let idp = serde_json::json!({"name": "gh", "issuer": "https://token.actions.githubusercontent.com",
        "alg": "RS256", "jwks": {"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB"}]}});
    let (status, v, _) = call("POST", "/identity-providers", Some(idp)).await;
    assert_eq!(status, 201, "{v}");
    check("POST /identity-providers", &v, answer_schema(&doc, "/v1/admin/identity-providers", "post", "201"));
    let bind = serde_json::json!({"idp": "gh", "subject": "repo:acme/app:ref:refs/heads/main"});
    let (status, v, _) = call("PUT", "/agents/ci-bot/jwt", Some(bind.clone())).await;
    assert_eq!(status, 201, "{v}");
    check("PUT /agents/{name}/jwt", &v, answer_schema(&doc, "/v1/admin/agents/{name}/jwt", "put", "201"));
    let (status, v, _) = call("PUT", "/agents/ci-bot/jwt", Some(bind)).await;
    assert_eq!(status, 200, "{v}");
    check("PUT /agents/{name}/jwt again", &v, answer_schema(&doc, "/v1/admin/agents/{name}/jwt", "put", "200"));
    let cred = serde_json::json!({"name": "groq-key", "scheme": "api-key", "secrets": {"key": "gsk-test-1234567\n"},
        "destinations": ["localhost"]});
    let (status, v, _) = call("POST", "/credentials", Some(cred)).await;
    assert_eq!(status, 201, "{v}");
    assert!(v["notices"][0].is_string(), "{v}");
    check("POST /credentials", &v, answer_schema(&doc, "/v1/admin/credentials", "post", "201"));
    let (status, v, _) = call("POST", "/agents", Some(serde_json::json!({"name": "a2"}))).await;
    assert_eq!(status, 201, "{v}");
    check("POST /agents", &v, answer_schema(&doc, "/v1/admin/agents", "post", "201"));
    let route = serde_json::json!({"name": "groq", "upstream": "https://localhost:1", "credential": "groq-key"});
    let (status, v, _) = call("POST", "/routes", Some(route)).await;
    assert_eq!(status, 201, "{v}");
    check("POST /routes", &v, answer_schema(&doc, "/v1/admin/routes", "post", "201"));
    let (status, v, _) = call("POST", "/tokens", None).await;
    assert_eq!(status, 201, "{v}");
    check("POST /tokens", &v, answer_schema(&doc, "/v1/admin/tokens", "post", "201"));

    let reads: [(&str, &str, &str); 14] = [
        ("GET", "/credentials", "/v1/admin/credentials"),
        ("GET", "/credentials/groq-key", "/v1/admin/credentials/{name}"),
        ("PATCH", "/credentials/groq-key", "/v1/admin/credentials/{name}"),
        ("POST", "/credentials/groq-key/disable", "/v1/admin/credentials/{name}/disable"),
        ("POST", "/credentials/openai-key/check", "/v1/admin/credentials/{name}/check"),
        ("GET", "/routes", "/v1/admin/routes"),
        ("GET", "/agents", "/v1/admin/agents"),
        ("GET", "/identity-providers", "/v1/admin/identity-providers"),
        ("GET", "/plugins", "/v1/admin/plugins"),
        ("GET", "/audit", "/v1/admin/audit"),
        ("GET", "/agents/ci-bot", "/v1/admin/agents/{name}"),
        ("GET", "/routes/groq", "/v1/admin/routes/{name}"),
        ("GET", "/identity-providers/gh", "/v1/admin/identity-providers/{name}"),
        ("GET", "/tokens", "/v1/admin/tokens"),
    ];
    for (method, path, documented) in reads {
        let body = (method == "PATCH").then(|| serde_json::json!({"destinations": ["localhost"]}));
        let (status, v, _) = call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        check(&format!("{method} {path}"), &v, answer_schema(&doc, documented, &method.to_lowercase(), "200"));
    }
    let (status, v, _) =
        call("POST", "/credentials/groq-key/rotate", Some(serde_json::json!({"secrets": {"key": "gsk-2"}}))).await;
    assert_eq!(status, 200, "{v}");
    check("POST rotate", &v, answer_schema(&doc, "/v1/admin/credentials/{name}/rotate", "post", "200"));
    let (status, v, _) = call("DELETE", "/credentials/groq-key?force=true", None).await;
    assert_eq!(status, 200, "{v}");
    check("DELETE /credentials/{name}", &v, answer_schema(&doc, "/v1/admin/credentials/{name}", "delete", "200"));
    w.close().await;
}
