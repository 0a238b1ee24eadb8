//! `latchkey serve` as an operator runs it: set up with the CLI (a route, an
//! agent, an identity provider and a JWT-bound agent), JSON logs carrying
//! the request id, and SIGTERM finishing a call in flight.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;

use crate::identity::{ISSUER, Signer, claims, ed_jwk, ed_key, jwt};
use crate::server::{Gate, http, until_refused};

const KEY: &str = "sk-serve-cli-test-7c1d2e";

fn latchkey(data: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.env("LATCHKEY_DATA_DIR", data)
        .env_remove("LATCHKEY_MASTER_KEY")
        .env_remove("LATCHKEY_KEYRING_FILE")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_ORG")
        .env_remove("LATCHKEY_LISTEN");
    c
}

fn run(data: &std::path::Path, args: &[&str]) -> String {
    let out = latchkey(data).args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "latchkey {args:?} failed: {stdout}{stderr}");
    stdout.into_owned()
}

/// Start `latchkey serve` from `cmd`, collecting its standard error line
/// by line: the child, the address it serves on, the lines so far, and
/// the thread reading them (done once the child exits).
pub(crate) fn serve_capturing(
    cmd: &mut Command,
) -> (std::process::Child, String, Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
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
    (child, addr, lines, reader)
}

/// A plain-HTTP upstream that checks the key; `/slow` is held by `gate`.
async fn upstream(gate: Gate) -> u16 {
    let check = |h: &HeaderMap| h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"));
    let router = Router::new()
        .route(
            "/fast",
            get(move |h: HeaderMap| async move { if check(&h) { StatusCode::OK } else { StatusCode::UNAUTHORIZED } }),
        )
        .route(
            "/slow",
            get(move |h: HeaderMap| async move {
                gate.hold().await;
                if check(&h) { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_json_logs_jwt_agents_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow_gate = Gate::default();
    let port = upstream(slow_gate.clone()).await;

    // The operator's set-up, with the CLI.
    run(
        &data,
        &[
            "credential",
            "add",
            "up",
            "--scheme",
            "api-key",
            "--config",
            "prefix=Bearer ",
            "--secret",
            &format!("key={KEY}"),
            "--destination",
            "127.0.0.1",
        ],
    );
    run(&data, &["route", "add", "up", "--upstream", &format!("http://127.0.0.1:{port}"), "--credential", "up"]);
    let token = run(&data, &["agent", "add", "bot"]).trim().to_string();
    run(&data, &["credential", "attach", "up", "--agent", "bot"]);
    let ed = ed_key();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, serde_json::json!({"keys": [ed_jwk(&ed, "e1")]}).to_string()).unwrap();
    run(
        &data,
        &[
            "idp",
            "add",
            "corp",
            "--issuer",
            ISSUER,
            "--alg",
            "EdDSA",
            "--jwks-file",
            jwks_file.to_str().unwrap(),
            "--audience",
            "latchkey",
        ],
    );
    let bound = run(&data, &["agent", "bind-jwt", "jbot", "--idp", "corp", "--subject", "svc-7"]);
    assert!(bound.contains("created"), "{bound}");
    run(&data, &["credential", "attach", "up", "--agent", "jbot"]);
    let agents = run(&data, &["agent", "list"]);
    let jbot = agents.lines().find(|l| l.split_whitespace().nth(1) == Some("jbot")).unwrap_or_default();
    assert!(jbot.contains("enabled") && jbot.contains("corp:svc-7"), "{agents}");
    assert!(run(&data, &["idp", "list"]).contains(ISSUER));
    // HS256 and http:// JWKS URLs are refused when the provider is stored.
    for bad in [
        vec!["--alg", "HS256", "--jwks-file", jwks_file.to_str().unwrap()],
        vec!["--alg", "RS256", "--jwks-url", "http://idp.example.com/jwks.json"],
    ] {
        let mut args = vec!["idp", "add", "bad", "--issuer", "https://x.test"];
        args.extend(bad);
        let out = latchkey(&data).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }

    // The broker, with JSON logs.
    let mut serve = latchkey(&data);
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--allow-upstream-network", "127.0.0.0/8"])
        .env("LATCHKEY_LOG_FORMAT", "json")
        .env("LATCHKEY_LOG", "info");
    let (mut child, addr, lines, reader) = serve_capturing(&mut serve);
    let base = format!("http://{addr}");

    // An agent token and a JWT both reach the upstream with the key.
    let bearer = format!("Bearer {token}");
    let (s, v, _) = http("GET", &format!("{base}/proxy/up/fast"), &[("authorization", &bearer)], None).await;
    assert_eq!(s, 200, "{v}");
    let t = jwt(serde_json::json!({"alg": "EdDSA", "kid": "e1"}), claims("svc-7", 300), Signer::Ed(&ed));
    let (s, v, _) =
        http("GET", &format!("{base}/proxy/up/fast"), &[("authorization", &format!("Bearer {t}"))], None).await;
    assert_eq!(s, 200, "{v}");

    // A refused call: the request id is on the response and on its JSON log
    // lines; the token is not.
    let unknown = format!("lk_agt_{}", "Q".repeat(43));
    let (s, _, headers) = http(
        "GET",
        &format!("{base}/proxy/up/fast"),
        &[("authorization", &format!("Bearer {unknown}")), ("x-request-id", "req-json-7")],
        None,
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(headers["x-request-id"], "req-json-7");

    // SIGTERM with a call in flight (held at the upstream): the broker stops
    // accepting but waits; once the upstream answers, the call finishes and
    // the broker exits.
    let slow = tokio::spawn({
        let (url, bearer) = (format!("{base}/proxy/up/slow"), bearer.clone());
        async move { http("GET", &url, &[("authorization", &bearer)], None).await.0 }
    });
    slow_gate.arrived().await;
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    until_refused(&addr).await;
    assert!(child.try_wait().unwrap().is_none(), "the broker exited with a call in flight");
    slow_gate.release();
    assert_eq!(slow.await.unwrap(), 200, "the in-flight call was cut");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit: {status}");
    reader.join().unwrap();

    let lines = lines.lock().unwrap();
    let all = lines.join("\n");
    assert!(all.contains("shut down after finishing in-flight calls"), "{all}");
    let tagged: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("req-json-7"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(!tagged.is_empty(), "no log line carries the request id:\n{all}");
    assert!(tagged.iter().any(|v| v["span"]["request_id"] == "req-json-7"), "{tagged:?}");
    for secret in [&token[7..], &unknown[12..], KEY, &t[t.len() - 30..]] {
        assert!(!all.contains(secret), "a secret reached the log:\n{all}");
    }
}
