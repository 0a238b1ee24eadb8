//! The admin API as an operator's automation uses it, on both backends:
//! every operation the OpenAPI document lists is called here, in a
//! lifecycle that creates, changes, disables and deletes each kind of
//! object, and each refusal answers its code in the one error shape.

use std::collections::BTreeSet;

use crate::db::Backend;
use crate::server::{ADMIN_TOKEN, http, world};

/// Calls made, as (method, documented path): compared with the document.
#[derive(Default)]
struct Calls(BTreeSet<(String, String)>);

impl Calls {
    /// Call `method` on `template` (with `{name}`/`{prefix}` replaced by
    /// `arg`), expecting `want`; returns the body.
    async fn call(
        &mut self,
        base: &str,
        method: &str,
        template: &str,
        arg: &str,
        body: Option<serde_json::Value>,
        want: u16,
    ) -> serde_json::Value {
        let admin = format!("Bearer {ADMIN_TOKEN}");
        let (path, query) = template.split_once('?').unwrap_or((template, ""));
        let concrete = path.replace("{name}", arg).replace("{prefix}", arg);
        let url = if query.is_empty() { format!("{base}{concrete}") } else { format!("{base}{concrete}?{query}") };
        let (status, v, _) = http(method, &url, &[("authorization", admin.as_str())], body).await;
        assert_eq!(status, want, "{method} {template} ({arg}): {v}");
        if status >= 400 {
            assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "error shape: {v}");
        }
        self.0.insert((method.to_lowercase(), path.to_string()));
        v
    }
}

#[track_caller]
fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_on_sqlite() {
    lifecycle(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_on_postgres() {
    lifecycle(Backend::Postgres).await;
}

async fn lifecycle(backend: Backend) {
    let Some((w, _)) = world(backend).await else { return };
    let base = w.base.clone();
    let b = base.as_str();
    let mut c = Calls::default();
    let key = format!("sk-admin-life-{}", crate::db::suffix());
    let a = "/v1/admin";
    let p = |s: &str| format!("{a}{s}");

    // Credentials: config and secrets are both objects, in and out.
    c.call(b, "GET", &p("/credentials"), "", None, 200).await;
    let body = serde_json::json!({"name": "life", "scheme": "api-key", "config": {"prefix": "Bearer "},
        "secrets": {"key": key}, "destinations": ["localhost"]});
    let v = c.call(b, "POST", &p("/credentials"), "", Some(body), 201).await;
    assert_eq!(v["config"], serde_json::json!({"prefix": "Bearer "}), "{v}");
    let pairs = serde_json::json!({"name": "pairs", "scheme": "api-key", "config": [["prefix", "Bearer "]],
        "secrets": {"key": key}});
    let v = c.call(b, "POST", &p("/credentials"), "", Some(pairs), 400).await;
    assert_eq!(code(&v), "invalid_request");
    c.call(b, "GET", &p("/credentials/{name}"), "life", None, 200).await;
    let v = c
        .call(
            b,
            "PATCH",
            &p("/credentials/{name}"),
            "life",
            Some(serde_json::json!({"config": {"prefix": "Token "}})),
            200,
        )
        .await;
    assert_eq!(v["config"]["prefix"], "Token ");
    c.call(b, "POST", &p("/credentials/{name}/disable"), "life", None, 200).await;
    c.call(b, "POST", &p("/credentials/{name}/enable"), "life", None, 200).await;
    c.call(
        b,
        "POST",
        &p("/credentials/{name}/rotate"),
        "life",
        Some(serde_json::json!({"secrets": {"key": key}})),
        200,
    )
    .await;

    // Agents, and attachments checked when made.
    let v = c.call(b, "POST", &p("/agents"), "", Some(serde_json::json!({"name": "life-bot"})), 201).await;
    let first_token = v["token"].as_str().unwrap().to_string();
    let typo = serde_json::json!({"agent": "typo-bot-xyz"});
    let v = c.call(b, "POST", &p("/credentials/{name}/attach"), "life", Some(typo), 404).await;
    assert_eq!(code(&v), "agent_not_found");
    let bot = serde_json::json!({"agent": "life-bot"});
    c.call(b, "POST", &p("/credentials/{name}/attach"), "life", Some(bot.clone()), 200).await;
    c.call(b, "POST", &p("/credentials/{name}/detach"), "life", Some(bot.clone()), 200).await;
    let v = c.call(b, "POST", &p("/credentials/{name}/detach"), "life", Some(bot.clone()), 404).await;
    assert_eq!(code(&v), "attachment_not_found");
    let v = c.call(b, "POST", &p("/credentials/{name}/attach"), "life", Some(bot), 200).await;
    assert_eq!(v["attachments"]["agents"], serde_json::json!(["life-bot"]));

    // Routes: a forbidden upstream is refused when added, naming the fix.
    let evil = serde_json::json!({"name": "life", "upstream": "https://api.evil.example", "credential": "life"});
    let v = c.call(b, "POST", &p("/routes"), "", Some(evil), 403).await;
    assert_eq!(code(&v), "destination_not_allowed");
    assert!(v["error"]["message"].as_str().unwrap().contains("--add-destination api.evil.example"), "{v}");
    let mock = serde_json::json!({"name": "life", "upstream": w.upstream.clone(), "credential": "life", "mock": true});
    c.call(b, "POST", &p("/routes"), "", Some(mock), 201).await;
    c.call(b, "GET", &p("/routes"), "", None, 200).await;
    let v = c.call(b, "GET", &p("/routes/{name}"), "life", None, 200).await;
    assert_eq!(v["mock"], true);
    // The provider check of a mock route is answered by the mock.
    let v = c.call(b, "POST", &p("/credentials/{name}/check"), "life", None, 200).await;
    assert_eq!(v["state"], "mock", "{v}");

    c.call(b, "GET", &p("/agents"), "", None, 200).await;
    let v = c.call(b, "GET", &p("/agents/{name}"), "life-bot", None, 200).await;
    assert_eq!((v["state"].as_str(), v["credentials"].clone()), (Some("enabled"), serde_json::json!(["life"])));
    let v = c.call(b, "POST", &p("/agents/{name}/disable"), "life-bot", None, 200).await;
    assert_eq!(v["state"], "disabled");
    c.call(b, "POST", &p("/agents/{name}/enable"), "life-bot", None, 200).await;

    // A re-issued token: the old one is refused at once, the new one works.
    let proxied = |token: String| {
        let url = format!("{b}/proxy/life/v1/models");
        async move { http("GET", &url, &[("authorization", &format!("Bearer {token}"))], None).await }
    };
    assert_eq!(proxied(first_token.clone()).await.0, 200);
    let v = c.call(b, "POST", &p("/agents/{name}/token"), "life-bot", None, 200).await;
    let second_token = v["token"].as_str().unwrap().to_string();
    let (status, v, _) = proxied(first_token).await;
    assert_eq!((status, code(&v)), (401, "invalid_agent_token"), "{v}");
    assert_eq!(proxied(second_token).await.0, 200);

    // Identity providers: one per issuer, a key set with keys.
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]});
    let gh = serde_json::json!({"name": "gh", "issuer": "https://token.example", "alg": "EdDSA", "jwks": jwks});
    c.call(b, "POST", &p("/identity-providers"), "", Some(gh), 201).await;
    let dup = serde_json::json!({"name": "gh2", "issuer": "https://token.example", "alg": "EdDSA", "jwks": jwks});
    let v = c.call(b, "POST", &p("/identity-providers"), "", Some(dup), 409).await;
    assert_eq!(code(&v), "issuer_exists");
    let empty = serde_json::json!({"name": "e", "issuer": "https://e.example", "alg": "EdDSA", "jwks": {"keys": []}});
    c.call(b, "POST", &p("/identity-providers"), "", Some(empty), 400).await;
    c.call(b, "GET", &p("/identity-providers"), "", None, 200).await;
    c.call(b, "GET", &p("/identity-providers/{name}"), "gh", None, 200).await;
    let bind = serde_json::json!({"idp": "gh", "subject": "repo:acme/app"});
    let v = c.call(b, "PUT", &p("/agents/{name}/jwt"), "life-bot", Some(bind), 200).await;
    assert_eq!(v["jwt"]["idp"], "gh");
    let v = c.call(b, "DELETE", &p("/identity-providers/{name}"), "gh", None, 409).await;
    assert_eq!(code(&v), "in_use");
    let v = c.call(b, "DELETE", &p("/agents/{name}/jwt"), "life-bot", None, 200).await;
    assert!(v["jwt"].is_null());
    let bind = serde_json::json!({"idp": "gh", "subject": "repo:acme/app"});
    c.call(b, "PUT", &p("/agents/{name}/jwt"), "life-bot", Some(bind), 200).await;
    let v = c.call(b, "DELETE", &p("/identity-providers/{name}?force=true"), "gh", None, 200).await;
    assert_eq!(v["cascaded"], serde_json::json!(["life-bot"]));

    // Registration tokens: listed by prefix (never the value), revoked.
    let v = c.call(b, "POST", &p("/tokens"), "", Some(serde_json::json!({"ttl": "10m"})), 201).await;
    let (reg, prefix) = (v["token"].as_str().unwrap().to_string(), v["prefix"].as_str().unwrap().to_string());
    let v = c.call(b, "POST", &p("/tokens"), "", Some(serde_json::json!({"ttl": "ten minutes"})), 400).await;
    assert_eq!(code(&v), "invalid_argument");
    let v = c.call(b, "GET", &p("/tokens"), "", None, 200).await;
    assert!(v.to_string().contains(&prefix) && !v.to_string().contains(&reg[11..]), "{v}");
    let v = c.call(b, "DELETE", &p("/tokens/{prefix}"), &prefix, None, 200).await;
    assert_eq!(v["state"], "revoked");
    let redeem = serde_json::json!({"token": reg, "org": "default", "name": "late"});
    let (status, v, _) = http("POST", &format!("{b}/v1/agents/register"), &[], Some(redeem)).await;
    assert_eq!((status, code(&v)), (401, "invalid_token"), "{v}");

    c.call(b, "GET", &p("/plugins"), "", None, 200).await;
    let v = c.call(b, "GET", &p("/audit?action=agent-token-reissue"), "", None, 200).await;
    assert_eq!(v[0]["actor"], "admin:admin", "{v}");
    assert!(!v.to_string().contains(ADMIN_TOKEN));

    // Deletes: refused while referenced, cascading when forced.
    let v = c.call(b, "DELETE", &p("/agents/{name}"), "life-bot", None, 409).await;
    assert_eq!(code(&v), "in_use");
    let v = c.call(b, "DELETE", &p("/agents/{name}?force=true"), "life-bot", None, 200).await;
    assert_eq!(v["cascaded"], serde_json::json!(["life"]));
    c.call(b, "DELETE", &p("/agents/{name}"), "life-bot", None, 404).await;
    c.call(b, "DELETE", &p("/routes/{name}"), "life", None, 200).await;
    c.call(b, "DELETE", &p("/routes/{name}"), "life", None, 404).await;
    c.call(b, "DELETE", &p("/credentials/{name}"), "life", None, 200).await;

    // Answers axum makes itself are in the error shape too.
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let (status, v, headers) = http("PUT", &format!("{b}/v1/admin/plugins"), &[("authorization", &admin)], None).await;
    assert_eq!((status, code(&v)), (405, "method_not_allowed"), "{v}");
    assert!(headers.contains_key("allow"));
    let big = serde_json::json!({"credential": "life", "request": {"method": "GET", "url": "https://localhost/",
        "body_base64": "A".repeat(3 << 20)}});
    let (status, v, _) = http("POST", &format!("{b}/v1/sign"), &[], Some(big)).await;
    assert_eq!((status, code(&v)), (413, "payload_too_large"), "{v}");

    // Every documented admin operation was called above.
    let (_, doc, _) = http("GET", &format!("{b}/v1/openapi.json"), &[], None).await;
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if path.starts_with(a) {
            for method in ops.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let missed: Vec<_> = documented.difference(&c.0).collect();
    assert!(missed.is_empty(), "documented but not exercised: {missed:?}");
    let undocumented: Vec<_> = c.0.difference(&documented).collect();
    assert!(undocumented.is_empty(), "exercised but not documented: {undocumented:?}");
    w.close().await;
}
