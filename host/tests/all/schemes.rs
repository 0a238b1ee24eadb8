//! The simple built-in schemes, through the real plugins, and the promise
//! that key material stays out of plugins that do not need it.

use latchkey::plugin::edits::Checked;

use crate::support::{at, cred, get, runtime};

fn set(edits: &[Checked]) -> Vec<(String, String, bool)> {
    edits
        .iter()
        .map(|e| match e {
            Checked::Set(n, v) | Checked::Append(n, v) | Checked::Query(n, v) => {
                (n.clone(), v.text.clone(), v.sensitive)
            }
            Checked::Remove(n) => (n.clone(), String::new(), false),
        })
        .collect()
}

#[test]
fn api_key_header_prefix_and_query() {
    let rt = runtime();
    let p = rt.get("api-key").unwrap();
    assert!(!p.reads_secrets, "api-key splices the key in; it must not import raw secrets");
    let e = rt.apply(&p, &cred(&[("prefix", "Bearer ")], &[("key", "sk-1")]), at(), &get("https://a.test/")).unwrap();
    assert_eq!(set(&e), vec![("Authorization".into(), "Bearer sk-1".into(), true)]);
    let e = rt.apply(&p, &cred(&[("header", "x-api-key")], &[("key", "sk-1")]), at(), &get("https://a.test/")).unwrap();
    assert_eq!(set(&e), vec![("x-api-key".into(), "sk-1".into(), true)]);
    let e = rt.apply(&p, &cred(&[("query", "key")], &[("key", "sk-1")]), at(), &get("https://a.test/")).unwrap();
    assert!(matches!(&e[0], Checked::Query(n, v) if n == "key" && v.text == "sk-1"));
}

#[test]
fn api_key_refuses_bearer_prefixed_keys_and_bad_config() {
    let rt = runtime();
    let p = rt.get("api-key").unwrap();
    let err = rt.validate_secret(&p, &[], "key", &latchkey::Secret::new("Bearer sk-1")).unwrap_err();
    assert_eq!(err.code(), "invalid_secret");
    assert!(err.to_string().contains("prefix=Bearer") && !err.to_string().contains("sk-1"), "{err}");
    let err = rt.validate_config(&p, &[("colour".into(), "red".into())]).unwrap_err();
    assert_eq!(err.code(), "invalid_config");
    assert!(err.to_string().contains("colour"), "{err}");
    let missing = rt.apply(&p, &cred(&[], &[]), at(), &get("https://a.test/")).unwrap_err();
    assert_eq!(missing.code(), "provider_key_missing");
}

#[test]
fn the_verifier_is_found_by_its_export() {
    let rt = runtime();
    for name in rt.scheme_names() {
        let p = rt.get(&name).unwrap();
        assert_eq!(p.exports_verifier(), name == "jwt", "{name}: only jwt exports `verifier`");
        assert!(!p.reads_secrets, "{name}: no built-in scheme reads raw secrets");
    }
    assert_eq!(rt.verifier().unwrap().info.name, "jwt");
}

#[test]
fn basic_matches_rfc7617_example() {
    // RFC 7617 §2: Aladdin / open sesame.
    let rt = runtime();
    let p = rt.get("basic").unwrap();
    // The host computes the base64 (`part.base64`): the plugin reads no secret.
    assert!(!p.reads_secrets);
    let e = rt
        .apply(&p, &cred(&[], &[("username", "Aladdin"), ("password", "open sesame")]), at(), &get("https://a.test/"))
        .unwrap();
    assert_eq!(set(&e), vec![("authorization".into(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".into(), true)]);
    let err = rt.validate_secret(&p, &[], "username", &latchkey::Secret::new("a:b")).unwrap_err();
    assert!(err.to_string().contains("`:`"), "{err}");
}

#[test]
fn custom_headers_sets_each_field() {
    let rt = runtime();
    let p = rt.get("custom-headers").unwrap();
    assert!(!p.reads_secrets);
    let c = cred(&[], &[("X-Api-Key", "k1"), ("X-Tenant", "t2")]);
    let e = rt.apply(&p, &c, at(), &get("https://a.test/")).unwrap();
    assert_eq!(set(&e), vec![("X-Api-Key".into(), "k1".into(), true), ("X-Tenant".into(), "t2".into(), true)]);
    let err = rt.validate_secret(&p, &[], "Bad Name", &latchkey::Secret::new("v")).unwrap_err();
    assert_eq!(err.code(), "invalid_secret");
    // A header name the host reserves is refused even though the scheme allows any name.
    let err = rt.apply(&p, &cred(&[], &[("Host", "evil.test")]), at(), &get("https://a.test/")).unwrap_err();
    assert_eq!(err.code(), "plugin_failed");
}

#[test]
fn signing_schemes_never_import_raw_secrets() {
    let rt = runtime();
    for name in ["aws-sigv4", "aliyun-acs3", "tencent-tc3", "jwt", "api-key", "custom-headers"] {
        let p = rt.get(name).unwrap();
        assert!(!p.reads_secrets, "{name} imports latchkey:plugin/secrets");
        assert!(p.imports.iter().all(|i| !i.starts_with("wasi:sockets") && !i.starts_with("wasi:http")), "{name}");
    }
}

#[test]
fn request_independent_answers_are_reused_per_credential_state() {
    let rt = runtime();
    let p = rt.get("api-key").unwrap();
    assert!(p.info.request_independent);
    let key = crate::support::canary("tpl");
    let c = cred(&[("prefix", "Bearer ")], &[("key", &key)]);
    assert!(rt.apply_template(&p, &c).is_none(), "nothing is held before a call");
    let fresh = rt.apply_call(&p, &c, at(), &get("https://a.test/")).unwrap();
    // The same credential state: the held answer, checked and spliced again,
    // is the fresh one, for any request.
    let held = rt.apply_template(&p, &c).expect("held after a call").unwrap();
    assert_eq!(set(&held.edits), set(&fresh.edits));
    assert_eq!(set(&held.edits), vec![("Authorization".into(), format!("Bearer {key}"), true)]);
    // A rotated secret, a changed config, another credential: not held.
    let rotated = cred(&[("prefix", "Bearer ")], &[("key", &format!("{key}-2"))]);
    assert!(rt.apply_template(&p, &rotated).is_none());
    assert!(rt.apply_template(&p, &cred(&[("prefix", "Token ")], &[("key", &key)])).is_none());
    // A scheme that signs the request is never held.
    let aws = rt.get("aws-sigv4").unwrap();
    let c = cred(
        &[("region", "us-east-1"), ("service", "iam")],
        &[("access_key_id", "AKIDEXAMPLE"), ("secret_access_key", &key)],
    );
    rt.apply_call(&aws, &c, at(), &get("https://iam.amazonaws.com/")).unwrap();
    assert!(rt.apply_template(&aws, &c).is_none());
}
