//! Agent identity by JWT (verified by the `jwt` plugin against a JWKS the
//! broker fetches over HTTPS from a local server with its own CA) and by
//! Basic on a TLS listener, over real sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use latchkey::server::{self, net};
use latchkey::vault::AttachmentKind;
use latchkey::vault::identity::{IdentityProvider, JwksSource};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;

use crate::db::Backend;
use crate::server::{http, serve_tls, world};

pub(crate) const ISSUER: &str = "https://idp.latchkey.test";

fn now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) enum Signer<'a> {
    Rsa(&'a RsaKeyPair),
    Ed(&'a Ed25519KeyPair),
    Hmac(&'a [u8]),
    Unsigned,
}

/// A compact JWS with this header and claims.
pub(crate) fn jwt(header: serde_json::Value, claims: serde_json::Value, signer: Signer) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = match signer {
        Signer::Rsa(k) => {
            let mut sig = vec![0u8; k.public().modulus_len()];
            k.sign(&ring::signature::RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
            sig
        }
        Signer::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        Signer::Hmac(key) => {
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), input.as_bytes()).as_ref().to_vec()
        }
        Signer::Unsigned => Vec::new(),
    };
    format!("{input}.{}", b64(&sig))
}

pub(crate) fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
    serde_json::json!({"iss": ISSUER, "sub": sub, "aud": "latchkey", "iat": now(), "exp": now() + exp_in})
}

fn rsa_key() -> RsaKeyPair {
    let pem = include_bytes!("../../../plugins/jwt/testdata/rsa2048-pkcs8.pem");
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem).unwrap();
    RsaKeyPair::from_pkcs8(der.secret_der()).unwrap()
}

fn rsa_jwk(k: &RsaKeyPair, kid: &str) -> serde_json::Value {
    let public: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
    serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&public.n), "e": b64(&public.e)})
}

pub(crate) fn ed_key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

pub(crate) fn ed_jwk(k: &Ed25519KeyPair, kid: &str) -> serde_json::Value {
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k.public_key().as_ref())})
}

/// A JWKS server: the document can be swapped, the server taken down
/// (every fetch answered 503); fetches are counted.
struct JwksServer {
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
    url: String,
}

async fn jwks_server(pki: &crate::server::Pki, keys: Vec<serde_json::Value>) -> JwksServer {
    let doc = Arc::new(Mutex::new(serde_json::json!({ "keys": keys }).to_string()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d, f, o) = (doc.clone(), fetches.clone(), down.clone());
    let router = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let (d, f, o) = (d.clone(), f.clone(), o.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let status = if o.load(Ordering::SeqCst) { 503 } else { 200 };
                let status = axum::http::StatusCode::from_u16(status).unwrap();
                (status, [("content-type", "application/json")], d.lock().unwrap().clone())
            }
        }),
    );
    let port = serve_tls(router, pki).await;
    JwksServer { doc, fetches, down, url: format!("https://localhost:{port}/.well-known/jwks.json") }
}

fn provider(name: &str, alg: &str, jwks: JwksSource) -> IdentityProvider {
    IdentityProvider {
        org: "default".into(),
        name: name.into(),
        issuer: ISSUER.into(),
        alg: alg.into(),
        audience: vec!["latchkey".into()],
        leeway_seconds: 30,
        jwks,
        refresh_seconds: 300,
        subject_claim: "sub".into(),
        max_token_lifetime_seconds: 3_600,
    }
}

async fn jwt_identity(backend: Backend) {
    let Some((w, _token)) = world(backend).await else { return };
    let rsa = rsa_key();
    let jwks = jwks_server(&w.pki, vec![rsa_jwk(&rsa, "r1")]).await;
    w.vault.put_identity_provider(&provider("corp", "RS256", JwksSource::Url(jwks.url.clone())), "t").await.unwrap();
    w.vault.bind_agent_jwt("default", "ci-bot", "corp", "svc-ci", "t").await.unwrap();
    w.vault.set_attachment("default", "openai-key", AttachmentKind::Agent, "ci-bot", true, "t").await.unwrap();
    w.vault.bind_agent_jwt("default", "lonely", "corp", "svc-lonely", "t").await.unwrap();

    let echo = format!("{}/proxy/openai/echo", w.base);
    let call = |token: String| {
        let echo = echo.clone();
        async move { http("GET", &echo, &[("authorization", &format!("Bearer {token}"))], None).await }
    };

    // A valid RS256 token from the JWKS URL: the agent is identified, the
    // upstream gets the provider key and never the JWT.
    let good =
        jwt(serde_json::json!({"alg": "RS256", "kid": "r1", "typ": "JWT"}), claims("svc-ci", 300), Signer::Rsa(&rsa));
    let (status, v, _) = call(good.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["headers"]["authorization"], format!("Bearer {}", crate::server::OPENAI_KEY));
    assert!(!v.to_string().contains(&good[..40]), "the JWT reached the upstream");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    // Again: the keys are cached, and so is the verified token: the
    // verifier does not run a second time for it.
    let verifications = |w: &crate::server::World| {
        let text = w.state.metrics.text();
        text.lines()
            .find(|l| l.starts_with("latchkey_plugin_seconds_count{scheme=\"jwt-verify\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let verified_once = verifications(&w);
    assert!(verified_once >= 1);
    assert_eq!(call(good.clone()).await.0, 200);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(verifications(&w), verified_once, "a verified token was verified again");

    let refused = |v: &serde_json::Value, status: u16, want_status: u16, code: &str, words: &str| {
        assert_eq!((status, v["error"]["code"].as_str()), (want_status, Some(code)), "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(words), "{msg:?} should say {words:?}");
    };

    // alg none, in its spellings.
    for alg in ["none", "None"] {
        let t = jwt(serde_json::json!({"alg": alg, "kid": "r1"}), claims("svc-ci", 300), Signer::Unsigned);
        let (s, v, _) = call(t).await;
        refused(&v, s, 401, "token_rejected", "not a compact JWS");
        let t = format!(
            "{}AAAA",
            jwt(serde_json::json!({"alg": alg, "kid": "r1"}), claims("svc-ci", 300), Signer::Unsigned)
        );
        let (s, v, _) = call(t).await;
        refused(&v, s, 401, "token_rejected", "never accepted");
    }
    // HS/RS confusion: HS256 keyed with the public key's bytes.
    let public_n = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public()).n;
    let t = jwt(serde_json::json!({"alg": "HS256", "kid": "r1"}), claims("svc-ci", 300), Signer::Hmac(&public_n));
    let (s, v, _) = call(t).await;
    refused(&v, s, 401, "token_rejected", "pinned to RS256");
    // A wrong key under the right kid.
    let attacker = ed_key();
    let forged = jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), claims("svc-ci", 300), Signer::Ed(&attacker));
    let (s, v, _) = call(forged).await;
    refused(&v, s, 401, "token_rejected", "signature");
    // Keys named by the token itself (`jku`, `x5u`, an embedded `jwk`) are
    // never used or fetched: only the provider's JWKS counts.
    let trap = jwks_server(&w.pki, vec![ed_jwk(&attacker, "r1")]).await;
    let header = serde_json::json!({
        "alg": "RS256", "kid": "r1", "jku": trap.url, "x5u": trap.url, "jwk": ed_jwk(&attacker, "r1"),
    });
    let (s, v, _) = call(jwt(header, claims("svc-ci", 300), Signer::Ed(&attacker))).await;
    refused(&v, s, 401, "token_rejected", "signature");
    let header = serde_json::json!({"alg": "EdDSA", "kid": "r1", "jku": trap.url, "jwk": ed_jwk(&attacker, "r1")});
    let (s, v, _) = call(jwt(header, claims("svc-ci", 300), Signer::Ed(&attacker))).await;
    refused(&v, s, 401, "token_rejected", "pinned to RS256");
    assert_eq!(trap.fetches.load(Ordering::SeqCst), 0, "a key URL from the token was fetched");
    // Expired beyond the leeway; not yet valid; another audience; another issuer.
    let t = jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), claims("svc-ci", -120), Signer::Rsa(&rsa));
    let (s, v, _) = call(t).await;
    refused(&v, s, 401, "token_rejected", "expired");
    let mut c = claims("svc-ci", 600);
    c["nbf"] = serde_json::json!(now() + 300);
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), c, Signer::Rsa(&rsa))).await;
    refused(&v, s, 401, "token_rejected", "not valid before");
    // Longer than the provider's longest token lifetime (an hour here):
    // an exp two hours ahead, 2^63 - 1, or two hours after its iat.
    let mut c = claims("svc-ci", 300);
    c["exp"] = serde_json::json!(now() + 7_200);
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), c, Signer::Rsa(&rsa))).await;
    refused(&v, s, 401, "token_rejected", "longest token lifetime");
    let mut c = claims("svc-ci", 300);
    c["exp"] = serde_json::json!(i64::MAX);
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), c, Signer::Rsa(&rsa))).await;
    refused(&v, s, 401, "token_rejected", "");
    let mut c = claims("svc-ci", 300);
    c["iat"] = serde_json::json!(now() - 7_200);
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), c, Signer::Rsa(&rsa))).await;
    refused(&v, s, 401, "token_rejected", "longest token lifetime");
    let mut c = claims("svc-ci", 300);
    c["aud"] = serde_json::json!("someone-else");
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), c, Signer::Rsa(&rsa))).await;
    refused(&v, s, 401, "token_rejected", "audience");
    let mut c = claims("svc-ci", 300);
    c["iss"] = serde_json::json!("https://evil.test");
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), c, Signer::Rsa(&rsa))).await;
    refused(&v, s, 401, "token_rejected", "no identity provider trusts issuer");
    // Valid, but no agent bound to the subject; bound but not attached.
    let (s, v, _) =
        call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), claims("svc-nobody", 300), Signer::Rsa(&rsa))).await;
    refused(&v, s, 403, "unknown_agent", "svc-nobody");
    let (s, v, _) =
        call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), claims("svc-lonely", 300), Signer::Rsa(&rsa))).await;
    refused(&v, s, 403, "credential_not_attached", "lonely");
    // A disabled agent is refused on its next call.
    w.vault.set_agent_disabled("default", "ci-bot", true, "t").await.unwrap();
    let (s, v, _) = call(good.clone()).await;
    refused(&v, s, 403, "unknown_agent", "svc-ci");
    w.vault.set_agent_disabled("default", "ci-bot", false, "t").await.unwrap();
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "no refused token caused a fetch");

    // Key rotation at the issuer: a token with a new kid makes the broker
    // fetch at once, and it is accepted.
    // (The same RSA key published under a second kid stands in for a new key.)
    let ed = ed_key();
    let rsa2_jwk = rsa_jwk(&rsa, "r2");
    *jwks.doc.lock().unwrap() =
        serde_json::json!({"keys": [rsa_jwk(&rsa, "r1"), rsa2_jwk, ed_jwk(&ed, "e1")]}).to_string();
    let t = jwt(serde_json::json!({"alg": "RS256", "kid": "r2"}), claims("svc-ci", 300), Signer::Rsa(&rsa));
    let (s, v, _) = call(t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "an unknown kid fetches once");
    // Made-up kids right after: rate-limited, no more fetches.
    for i in 0..5 {
        let t = jwt(
            serde_json::json!({"alg": "RS256", "kid": format!("bogus-{i}")}),
            claims("svc-ci", 300),
            Signer::Rsa(&rsa),
        );
        let (s, v, _) = call(t).await;
        refused(&v, s, 401, "token_rejected", "bogus");
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "unknown kids are rate-limited");

    // A static JWKS (EdDSA) provider: no fetch at all.
    let mut p = provider(
        "static-ed",
        "EdDSA",
        JwksSource::Static(serde_json::json!({"keys": [ed_jwk(&ed, "e1")]}).to_string()),
    );
    p.issuer = "https://static.latchkey.test".into();
    w.vault.put_identity_provider(&p, "t").await.unwrap();
    w.vault.bind_agent_jwt("default", "ed-bot", "static-ed", "svc-ed", "t").await.unwrap();
    w.vault.set_attachment("default", "openai-key", AttachmentKind::Agent, "ed-bot", true, "t").await.unwrap();
    let mut c = claims("svc-ed", 300);
    c["iss"] = p.issuer.clone().into();
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "EdDSA", "kid": "e1"}), c.clone(), Signer::Ed(&ed))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v, _) = call(jwt(serde_json::json!({"alg": "EdDSA", "kid": "e1"}), c, Signer::Ed(&attacker))).await;
    refused(&v, s, 401, "token_rejected", "signature");

    // A JWKS URL that cannot be reached fails closed with its own code; one
    // at the metadata address is refused before any connection.
    for (name, url, words) in [
        ("down", "https://localhost:9/.well-known/jwks.json".to_string(), "cannot be fetched"),
        ("metadata", "https://169.254.169.254/jwks.json".to_string(), "refused"),
    ] {
        let mut p = provider(name, "RS256", JwksSource::Url(url));
        p.issuer = format!("https://{name}.latchkey.test");
        w.vault.put_identity_provider(&p, "t").await.unwrap();
        let mut c = claims("svc-ci", 300);
        c["iss"] = p.issuer.clone().into();
        let (s, v, _) = call(jwt(serde_json::json!({"alg": "RS256", "kid": "r1"}), c, Signer::Rsa(&rsa))).await;
        refused(&v, s, 503, "jwks_unavailable", words);
    }

    // Refusals are counted by kind and code, with no token in a label.
    let metrics = w.state.metrics.text();
    assert!(metrics.contains("latchkey_agent_auth_refusals_total{kind=\"jwt\",code=\"token_rejected\"}"), "{metrics}");
    assert!(!metrics.contains(&good[..30]));
    w.close().await;
}

/// THREATS.md case 41: through a JWKS outage the last good keys serve for
/// a bounded grace period (12 refresh intervals, at least an hour), never
/// longer; a flood of unknown `kid`s meanwhile fetches at most once per
/// cooldown; many failing tokens at once crash nothing. Time is moved with
/// the key store's clock ([`latchkey::server::identity::JwksStore::advance`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_outage_serves_last_good_keys_for_a_bounded_grace() {
    let Some((w, _token)) = world(Backend::Sqlite).await else { return };
    let rsa = rsa_key();
    let jwks = jwks_server(&w.pki, vec![rsa_jwk(&rsa, "r1")]).await;
    // Refresh every 300 s: the grace period is max(12 × 300 s, 1 h) = 1 h.
    w.vault.put_identity_provider(&provider("corp", "RS256", JwksSource::Url(jwks.url.clone())), "t").await.unwrap();
    w.vault.bind_agent_jwt("default", "ci-bot", "corp", "svc-ci", "t").await.unwrap();
    w.vault.set_attachment("default", "openai-key", AttachmentKind::Agent, "ci-bot", true, "t").await.unwrap();
    let echo = format!("{}/proxy/openai/echo", w.base);
    // Each call's token is new (its own lifetime), so none is answered
    // from the verified-token cache: every call needs the keys.
    let next = AtomicUsize::new(0);
    let token = |kid: &str| {
        let lifetime = 300 + next.fetch_add(1, Ordering::SeqCst) as i64;
        jwt(serde_json::json!({"alg": "RS256", "kid": kid}), claims("svc-ci", lifetime), Signer::Rsa(&rsa))
    };
    let call = |t: String| {
        let echo = echo.clone();
        async move {
            let (s, v, _) = http("GET", &echo, &[("authorization", &format!("Bearer {t}"))], None).await;
            (s, v["error"]["code"].as_str().unwrap_or_default().to_string())
        }
    };
    let fetches = || jwks.fetches.load(Ordering::SeqCst);
    assert_eq!(call(token("r1")).await.0, 200);
    assert_eq!(fetches(), 1);

    // The issuer goes down; the keys age past their refresh interval. The
    // call is served from the last good keys while a background refresh
    // tries and fails.
    jwks.down.store(true, Ordering::SeqCst);
    w.state.jwks.advance(Duration::from_secs(301));
    assert_eq!(call(token("r1")).await.0, 200, "the last good keys were not used through the outage");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fetches() < 2 {
        assert!(std::time::Instant::now() < deadline, "no background refresh was tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Many tokens at once, half naming made-up kids: the good ones pass, the
    // others are refused, and the made-up kids cause one fetch at most.
    let before = fetches();
    let mut calls = Vec::new();
    for i in 0..24 {
        let kid = if i % 2 == 0 { "r1".to_string() } else { format!("made-up-{i}") };
        calls.push(tokio::spawn(call(token(&kid))));
    }
    for (i, c) in calls.into_iter().enumerate() {
        let (status, code) = c.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(status, 200, "call {i}: {code}");
        } else {
            assert_eq!((status, code.as_str()), (401, "token_rejected"), "call {i}");
        }
    }
    assert!(fetches() <= before + 1, "the outage was met with {} fetches", fetches() - before);

    // Past the grace period the old keys are not trusted: calls fail
    // closed, and only the first of them tries a fetch.
    w.state.jwks.advance(Duration::from_secs(3_600));
    let before = fetches();
    for _ in 0..5 {
        assert_eq!(call(token("r1")).await, (503, "jwks_unavailable".to_string()), "stale keys were trusted");
    }
    assert_eq!(fetches(), before + 1, "calls past the grace period each fetched");
    // The issuer is back: once the cooldown has passed, the next call
    // fetches and passes.
    jwks.down.store(false, Ordering::SeqCst);
    assert_eq!(call(token("r1")).await.0, 503, "a fetch was tried again within the cooldown");
    w.state.jwks.advance(latchkey::server::identity::MIN_REFETCH);
    assert_eq!(call(token("r1")).await.0, 200);
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_identity_sqlite() {
    jwt_identity(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_identity_postgres() {
    jwt_identity(Backend::Postgres).await;
}

/// Basic agent credentials (agent name, agent token): refused on plain
/// HTTP, accepted on the broker's TLS listener; and that listener finishes
/// an in-flight call when it is shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_identity_and_tls_listener() {
    let Some((w, token)) = world(Backend::Sqlite).await else { return };
    let basic = format!("Basic {}", STANDARD.encode(format!("bot:{token}")));
    let echo = format!("{}/proxy/openai/echo", w.base);

    // Plain HTTP: refused, with the way out named.
    let (s, v, _) = http("GET", &echo, &[("authorization", &basic)], None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("insecure_transport")), "{v}");
    assert!(!v.to_string().contains(&token[7..]));

    // The broker's TLS listener, with the test CA's certificate.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, w.pki.cert_pem.as_bytes()).unwrap();
    std::fs::write(&key, w.pki.key_pem.as_bytes()).unwrap();
    let acceptor = server::tls_acceptor(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve_tls(listener, acceptor, w.state.clone(), async move {
        let _ = stopped.await;
    }));
    let policy = net::AddressPolicy { allow: vec!["127.0.0.0/8".parse().unwrap()] };
    let tls = net::TlsOptions { extra_ca_files: vec![w.pki.ca_file.clone()], no_system_roots: true };
    let client = net::client(Arc::new(policy), &tls).unwrap();
    let get = |path: &str, auth: &str| {
        let req = axum::http::Request::builder()
            .uri(format!("https://localhost:{port}{path}"))
            .header("authorization", auth)
            .body(Body::empty())
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
            (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
        }
    };
    let (s, v) = get("/proxy/openai/echo", &basic).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["headers"]["authorization"], format!("Bearer {}", crate::server::OPENAI_KEY));
    // The user name must be the token's agent.
    let wrong_user = format!("Basic {}", STANDARD.encode(format!("someone:{token}")));
    let (s, v) = get("/proxy/openai/echo", &wrong_user).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_agent_token")), "{v}");
    let no_colon = format!("Basic {}", STANDARD.encode(&token));
    let (s, v) = get("/proxy/openai/echo", &no_colon).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_agent_token")), "{v}");

    // Graceful shutdown: with a call in flight (held at the upstream), the
    // listener stops accepting but the server waits; once the upstream
    // answers, the call finishes and the server returns.
    let bearer = format!("Bearer {token}");
    let slow = tokio::spawn(get("/proxy/openai/slow", &bearer));
    w.slow.arrived().await;
    stop.send(()).unwrap();
    crate::server::until_refused(&format!("127.0.0.1:{port}")).await;
    assert!(!served.is_finished(), "serve_tls returned with a call in flight");
    assert!(!slow.is_finished(), "the in-flight call ended before the upstream answered");
    w.slow.release();
    let (s, v) = slow.await.unwrap();
    assert_eq!(s, 200, "the in-flight call was cut: {v}");
    assert_eq!(v["slow"], true);
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("serve_tls returns after draining")
        .unwrap()
        .unwrap();
    w.close().await;
}
