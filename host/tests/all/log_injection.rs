//! Log injection (THREATS.md case 11): CR, LF and ANSI escapes that an
//! agent puts where the broker logs it — a JWT's issuer, a request path, a
//! header — are escaped in the broker's text logs, so no forged line and no
//! terminal escape reaches them.

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::server::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_requests_are_escaped_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LATCHKEY_DATA_DIR", dir.path().join("data"))
        .env_remove("LATCHKEY_MASTER_KEY")
        .env_remove("LATCHKEY_KEYRING_FILE")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_LOG_FORMAT")
        .env("LATCHKEY_LOG", "debug");
    let (mut child, addr, lines, reader) = crate::serve_cli::serve_capturing(&mut serve);
    let base = format!("http://{addr}");

    // A JWT whose issuer carries a forged log line and a colour escape.
    let forged = "FORGED-LINE level=ERROR the vault is gone";
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k1"}"#);
    let claims = serde_json::json!({"iss": format!("https://evil.example\r\n{forged}\u{1b}[31m"), "sub": "x", "exp": 4_000_000_000i64});
    let jwt = format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let (s, _, _) =
        http("GET", &format!("{base}/proxy/r/x"), &[("authorization", &format!("Bearer {jwt}"))], None).await;
    assert!(s >= 400, "{s}");
    // A path with encoded CR, LF and ESC, and a request id the broker replaces.
    let (s, _, _) = http(
        "GET",
        &format!("{base}/proxy/%0d%0a{}%1b%5b31m/x", forged.replace(' ', "%20")),
        &[("x-request-id", "a\tb")],
        None,
    )
    .await;
    assert!(s >= 400, "{s}");

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    child.wait().unwrap();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let all = lines.join("\n");
    assert!(all.contains("evil.example"), "the issuer is logged (escaped):\n{all}");
    for line in lines.iter() {
        assert!(!line.contains('\u{1b}'), "a raw escape reached the log: {line:?}");
        assert!(!line.contains('\r'), "a raw CR reached the log: {line:?}");
        assert!(!line.starts_with("FORGED-LINE"), "a forged line reached the log: {line:?}");
    }
}
