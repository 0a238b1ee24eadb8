//! The plugin cache keeps one credential's entries to that credential: two
//! organisations' credentials of the same name, or a credential deleted and
//! created again under its old name, never get each other's minted tokens.

use base64::Engine as _;
use latchkey::RuntimeConfig;
use latchkey::Secret;
use latchkey::vault::AttachmentKind;
use latchkey::vault::model::RawCredential;

use crate::db::Backend;
use crate::pipeline::{Bench, bench};
use crate::server::http;
use crate::support::canary;

const CONFIG: [(&str, &str); 3] = [("alg", "HS256"), ("iss", "latchkey-test"), ("sub", "svc")];

/// Store JWT credential `svc` for `org`, signed with `key`, attached to `agent`.
async fn jwt_credential(b: &Bench, org: &str, agent: &str, key: &str) {
    let mut raw = RawCredential::new("svc", "jwt");
    raw.org = Some(org.into());
    raw.config = CONFIG.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    raw.secrets = [("key".to_string(), Secret::new(key))].into_iter().collect();
    raw.destinations = vec!["127.0.0.1".into()];
    b.vault.create(raw, "t").await.unwrap();
    b.vault.set_attachment(org, "svc", AttachmentKind::Agent, agent, true, "t").await.unwrap();
}

/// The JWT `/v1/sign` hands `token`'s agent for credential `svc`.
async fn minted(b: &Bench, token: &str) -> String {
    let body = serde_json::json!({
        "credential": "svc",
        "request": {"method": "GET", "url": "https://127.0.0.1/", "headers": []},
    });
    let auth = format!("Bearer {token}");
    let (status, json, _) = http("POST", &format!("{}/v1/sign", b.base), &[("authorization", &auth)], Some(body)).await;
    assert_eq!(status, 200, "{json}");
    let text = json.to_string();
    let start = text.find("Bearer eyJ").unwrap_or_else(|| panic!("no JWT in {text}")) + "Bearer ".len();
    let jwt: String =
        text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    jwt
}

/// Whether `jwt` carries a valid HS256 signature under `key`.
fn signed_with(jwt: &str, key: &str) -> bool {
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::verify(&key, input.as_bytes(), &sig).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_stay_with_the_credential_that_minted_them() {
    let Some(b) = bench(Backend::Sqlite, &[], RuntimeConfig::default()).await else { return };
    let (key_a, key_b) = (canary("jwt-key-of-organisation-a-32-bytes"), canary("jwt-key-of-organisation-b-32-bytes"));
    // Same credential name, scheme, config and version in two organisations.
    jwt_credential(&b, "default", "bot", &key_a).await;
    let other = b.vault.create_agent("other", "bot", "t").await.unwrap();
    jwt_credential(&b, "other", "bot", &key_b).await;

    let a1 = minted(&b, &b.token).await;
    assert!(signed_with(&a1, &key_a));
    assert_eq!(minted(&b, &b.token).await, a1, "the token is reused while it is fresh");
    let from_b = minted(&b, other.token.expose()).await;
    assert!(signed_with(&from_b, &key_b), "organisation b was handed a token it did not mint");
    assert_ne!(from_b, a1);

    // Deleted and created again with another key: version 1 again, new token.
    b.vault.delete("default", "svc", true, "t").await.unwrap();
    let key_a2 = canary("jwt-key-of-organisation-a-second-32");
    jwt_credential(&b, "default", "bot", &key_a2).await;
    let a2 = minted(&b, &b.token).await;
    assert!(signed_with(&a2, &key_a2), "the new credential was handed the deleted one's token");
    b.close().await;
}
