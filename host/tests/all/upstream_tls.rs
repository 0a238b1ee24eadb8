//! Threat catalogue case 35: an upstream whose certificate the broker does
//! not trust gets no request, so the credential never leaves; there is no
//! option to accept invalid certificates.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use latchkey::vault::agents::Route;

use crate::db::Backend;
use crate::server::{OPENAI_KEY, http, pki, serve_tls, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_untrusted_upstream_certificate_gets_no_request() {
    let Some((w, token)) = world(Backend::Sqlite).await else { return };
    // A server for `localhost` whose certificate comes from a CA the broker
    // was not given: what an interception proxy or a spoofed host presents.
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let rogue = Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "stolen" }
    });
    let other_ca = pki();
    let port = serve_tls(rogue, &other_ca).await;
    let route = Route {
        name: "rogue".into(),
        org: "default".into(),
        upstream: format!("https://localhost:{port}"),
        credential: "openai-key".into(),
        mock: false,
        check_path: None,
    };
    w.vault.put_route(&route, "t").await.unwrap();

    let auth = format!("Bearer {token}");
    let (status, v, _) =
        http("GET", &format!("{}/proxy/rogue/v1/models", w.base), &[("authorization", &auth)], None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (502, Some("upstream_unreachable")), "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(message.contains("certificate"), "the answer should say why: {v}");
    assert!(!v.to_string().contains(OPENAI_KEY));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the untrusted server got a request");

    // The same route through the trusted upstream works: the refusal was the certificate's.
    let (status, v, _) =
        http("GET", &format!("{}/proxy/openai/v1/models", w.base), &[("authorization", &auth)], None).await;
    assert_eq!(status, 200, "{v}");
    w.close().await;
}
