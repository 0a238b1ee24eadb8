//! A running broker whose master key goes missing or wrong (THREATS.md case
//! 7). `LATCHKEY_MASTER_KEY` cannot change under a running process, but a
//! keyring file can: the broker reads it again when it meets a row sealed
//! under a term it does not hold (another process rotated the master key).
//! So the real `latchkey serve` runs on a keyring file of its own while the
//! CLI rotates the vault with another copy, and the broker's file is then
//! left without the new term, deleted, given a wrong key for it, and
//! finally given the right one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use latchkey::vault::crypto::MasterKey;

use crate::server::{http, until_refused};
use crate::support::canary;

fn latchkey(data: &Path, keyring: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.env("LATCHKEY_DATA_DIR", data)
        .env("LATCHKEY_KEYRING_FILE", keyring)
        .env_remove("LATCHKEY_MASTER_KEY")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_ORG")
        .env_remove("LATCHKEY_LISTEN");
    c
}

fn run(data: &Path, keyring: &Path, args: &[&str]) -> String {
    let out = latchkey(data, keyring).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "latchkey {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Write a keyring file (owner-only, as the vault requires), replacing it.
fn write_keyring(path: &Path, text: &str) {
    use std::io::Write;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new();
    f.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
    f.open(&tmp).unwrap().write_all(text.as_bytes()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_broker_whose_key_goes_missing_or_wrong_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = MasterKey::generate().unwrap().to_base64();
    let term1 = format!("1:{}\n", first.as_str());
    // The CLI's keyring file, and the broker's own copy of it.
    let (cli_keys, broker_keys) = (dir.path().join("cli-keyring"), dir.path().join("broker-keyring"));
    write_keyring(&cli_keys, &term1);
    write_keyring(&broker_keys, &term1);

    let hits = Arc::new(AtomicUsize::new(0));
    let router = Router::new().route(
        "/ok",
        get({
            let hits = hits.clone();
            move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let key = canary("running-key");
    let key_arg = format!("key={key}");
    run(
        &data,
        &cli_keys,
        &["credential", "add", "up", "--scheme", "api-key", "--secret", &key_arg, "--destination", "127.0.0.1"],
    );
    run(
        &data,
        &cli_keys,
        &["route", "add", "up", "--upstream", &format!("http://127.0.0.1:{port}"), "--credential", "up"],
    );
    let token = run(&data, &cli_keys, &["agent", "add", "bot"]).trim().to_string();
    run(&data, &cli_keys, &["credential", "attach", "up", "--agent", "bot"]);

    let err_path = dir.path().join("serve.err");
    let mut child = latchkey(&data, &broker_keys)
        .args(["serve", "--listen", "127.0.0.1:0", "--allow-upstream-network", "127.0.0.0/8"])
        .env("LATCHKEY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    let addr = crate::support::served_address(&err_path);
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let proxy = format!("http://{addr}/proxy/up/ok");
    let sign_url = format!("http://{addr}/v1/sign");
    let sign = serde_json::json!({
        "credential": "up",
        "request": {"method": "GET", "url": "http://127.0.0.1/ok", "headers": []},
    });
    let mut answers = Vec::new();

    // Another process rotates the master key; the broker's file lacks the new term.
    let rotated = run(&data, &cli_keys, &["vault", "rotate-master-key"]);
    assert!(rotated.contains("re-wrapped 1 data key"), "{rotated}");
    let (s, v, _) = http("GET", &proxy, &auth, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("vault_unknown_term")), "{v}");
    answers.push(v);
    let (s, v, _) = http("POST", &sign_url, &auth, Some(sign.clone())).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("vault_unknown_term")), "{v}");
    answers.push(v);

    // The broker's keyring file is gone.
    std::fs::remove_file(&broker_keys).unwrap();
    let (s, v, _) = http("GET", &proxy, &auth, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("master_key_file")), "{v}");
    answers.push(v);

    // The broker's file holds a wrong key for the new term.
    let wrong = MasterKey::generate().unwrap().to_base64();
    write_keyring(&broker_keys, &format!("{term1}2:{}\ncurrent = 2\n", wrong.as_str()));
    for _ in 0..2 {
        let (s, v, _) = http("GET", &proxy, &auth, None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (503, Some("master_key_wrong")), "{v}");
        answers.push(v);
    }
    let (s, v, _) = http("POST", &sign_url, &auth, Some(sign.clone())).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("master_key_wrong")), "{v}");
    answers.push(v);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a request went upstream without its credential");

    // The right keyring: the same broker, not restarted, serves again.
    std::fs::copy(&cli_keys, &broker_keys).unwrap();
    let (s, v, _) = http("GET", &proxy, &auth, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    until_refused(&addr).await;
    assert!(child.wait().unwrap().success());

    // Clear errors, and no plaintext in them or in the log.
    for v in &answers {
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.len() > 20, "an unclear message: {v}");
    }
    let log = std::fs::read_to_string(&err_path).unwrap();
    let everything = format!("{log}\n{}", answers.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n"));
    for form in crate::canaries::forms(&key) {
        assert!(!everything.contains(&form), "the secret appears in an error or the log");
    }
    assert!(!everything.contains(wrong.as_str()) && !everything.contains(first.as_str()), "a master key was shown");
    eprintln!(
        "running broker, key missing or wrong: {}",
        answers.iter().map(|v| v["error"]["code"].to_string()).collect::<Vec<_>>().join(", ")
    );
}
