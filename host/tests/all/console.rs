//! The operator's console (`/ui`) in a real headless browser: Debian's
//! chromium through chromedriver, driven by Selenium (`tests/e2e/console.py`),
//! against a broker with the admin token set. Screenshots of the main pages
//! go to `target/console-screenshots/`.

use std::path::{Path, PathBuf};

use crate::db::Backend;
use crate::server::{ADMIN_TOKEN, world};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Chromium and its driver, or `None` outside CI when they are not
/// installed (`cargo xtask setup` installs them; in CI their absence fails).
fn browser_installed() -> bool {
    let present = Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists();
    if !present {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`)"
        );
        eprintln!("skipping the browser test: /usr/bin/chromium or /usr/bin/chromedriver is missing");
    }
    present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser() {
    if !browser_installed() {
        return;
    }
    let (w, agent_token) = world(Backend::Sqlite).await.unwrap();
    let shots = root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let python = root().join("target/venv/bin/python");
    assert!(python.exists(), "run `cargo xtask setup` first: {} is missing", python.display());
    let mut command = std::process::Command::new(&python);
    command
        .arg(root().join("tests/e2e/console.py"))
        .args([&w.base, ADMIN_TOKEN, &agent_token, shots.to_str().unwrap()])
        .env("LATCHKEY_UPSTREAM", &w.upstream);
    // The browser runs while this runtime serves the broker.
    let out = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "console.py failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let want = |k: &str, v: serde_json::Value| assert_eq!(seen[k], v, "{k}: {seen:#}");

    want("redirected_to_login", true.into());
    want("wrong_token_refused", true.into());
    want("cookie", serde_json::json!({"httpOnly": true, "sameSite": "Strict", "path": "/ui"}));
    // The form is the plugin's own description of its fields.
    want("form_fields", serde_json::json!(["config.header", "config.prefix", "config.query", "secret.key"]));
    want("secret_is_password", true.into());
    assert!(seen["created_flash"].as_str().unwrap().contains("Added credential console-key"), "{seen:#}");
    // The same notices as the CLI: a credential with no destinations is warned about.
    assert!(seen["markup_flash"].as_str().unwrap().contains("destination"), "{seen:#}");
    want("attached", true.into());
    assert!(seen["route_flash"].as_str().unwrap().contains("Route console saved"), "{seen:#}");
    want("proxy_before", 200.into());
    assert!(seen["confirm_text"].as_str().unwrap().contains("Disable console-key?"), "{seen:#}");
    want("proxy_after", serde_json::json!([401, "credential_disabled"]));
    want("list_shows_disabled", true.into());
    want("markup_as_text", true.into());
    want("markup_injected", 0.into());
    want("token_shape", true.into());
    want("token_listed_by_prefix", true.into());
    want("token_shown_again", false.into());
    want("token_on_reload", false.into());
    want("audit_has_console_actor", true.into());
    want("secret_in_a_page", false.into());
    want("csrf_missing_status", 403.into());
    want("still_disabled", true.into());
    want("after_sign_out", true.into());
    let headers: std::collections::BTreeMap<String, String> = seen["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    assert!(headers["content-security-policy"].contains("script-src 'self'"), "{headers:?}");
    assert!(!headers["content-security-policy"].contains("unsafe-inline"), "{headers:?}");
    assert_eq!(headers["x-frame-options"], "DENY");
    for page in ["sign-in", "credentials", "credential", "token-once", "tokens", "agents", "routes", "plugins", "audit"]
    {
        assert!(shots.join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
    w.close().await;
}

/// Without an admin token the console is refused with a page that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_refused_without_an_admin_token() {
    let (w, _) = world(Backend::Sqlite).await.unwrap();
    let config = latchkey::server::ServerConfig::default();
    let state = latchkey::server::state(w.vault.clone(), crate::db::runtime(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(latchkey::server::serve(listener, state, std::future::pending()));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    let resp = client.get(format!("http://{addr}/ui/login").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("LATCHKEY_ADMIN_TOKEN"));
    w.close().await;
}
