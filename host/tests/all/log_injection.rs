//! Log injection (THREATS.md case 11): CR, LF and ANSI escapes that an
//! agent puts where the broker logs it — a JWT's issuer, a request path, a
//! header — are escaped in the broker's text logs, so no forged line and no
//! terminal escape reaches them.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::server::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_requests_are_escaped_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LATCHKEY_DATA_DIR", dir.path().join("data"))
        .env_remove("LATCHKEY_MASTER_KEY")
        .env_remove("LATCHKEY_KEYRING_FILE")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_LOG_FORMAT")
        .env("LATCHKEY_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving on http://").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        })
    };
    let addr = addr_rx.recv_timeout(Duration::from_secs(60)).expect("the broker printed its address");
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
