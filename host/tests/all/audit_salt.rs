//! The audit HMAC salt never leaves the vault (THREATS.md case 12): the
//! real `latchkey` binary, every command at TRACE, calls that write audit
//! events, then the salt read from the store and looked for, in every form
//! it could take, in everything the processes logged, printed or answered,
//! in the metrics, and in the database files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use latchkey::vault::crypto::{self, CredentialAad, Keyring, MasterKey};

use crate::server::until_refused;
use crate::support::canary;

/// Where the vault keeps the salt: the `installation` row `audit_salt`,
/// sealed under the master keyring with this associated data
/// (`crates/vault/src/credentials/service.rs`, `AUDIT_SALT_AAD`).
const SALT_AAD: CredentialAad<'static> =
    CredentialAad { org: "_latchkey", credential_id: "audit-salt", secret_version: 1 };

fn latchkey(data: &Path, keyring: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.env("LATCHKEY_DATA_DIR", data)
        .env("LATCHKEY_KEYRING_FILE", keyring)
        .env("LATCHKEY_LOG", "trace")
        .env_remove("LATCHKEY_MASTER_KEY")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_ORG")
        .env_remove("LATCHKEY_LISTEN")
        .env_remove("LATCHKEY_AUDIT_SINK");
    c
}

/// Everything the processes and the server produced, in order.
#[derive(Default)]
struct Seen(Vec<(String, Vec<u8>)>);

impl Seen {
    fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.0.push((what.into(), bytes.into()));
    }

    /// Run a CLI command at TRACE; keep its stdout and stderr.
    fn run(&mut self, data: &Path, keyring: &Path, args: &[&str]) -> String {
        let out = latchkey(data, keyring).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "latchkey {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        self.add(format!("stdout of latchkey {args:?}"), out.stdout);
        self.add(format!("stderr of latchkey {args:?}"), out.stderr);
        stdout
    }

    /// One HTTP call; keep the status line, headers and body.
    async fn call(&mut self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<String>) -> (u16, String) {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<axum::body::Body>();
        let mut b = axum::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let resp = client.request(b.body(body.unwrap_or_default().into()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let mut text = format!("{status}\n");
        for (k, v) in resp.headers() {
            text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        let mut all = text.into_bytes();
        all.extend_from_slice(&bytes);
        self.add(format!("answer to {method} {url}"), all);
        (status, body)
    }
}

/// Every form the salt could be written in: its bytes; hex, both cases;
/// base64 and base64url, padded or not; Rust's `Debug` of the bytes; and,
/// since the vault keeps it as hex text inside the sealed row, every form
/// of that text the canary watch knows (`canaries::forms`).
fn salt_forms(salt: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let hex = hex::encode(salt);
    let mut forms: Vec<(String, Vec<u8>)> = vec![
        ("raw bytes".into(), salt.to_vec()),
        ("hex".into(), hex.clone().into_bytes()),
        ("HEX".into(), hex.to_uppercase().into_bytes()),
        ("base64".into(), STANDARD.encode(salt).into_bytes()),
        ("base64, unpadded".into(), STANDARD_NO_PAD.encode(salt).into_bytes()),
        ("base64url".into(), URL_SAFE.encode(salt).into_bytes()),
        ("base64url, unpadded".into(), URL_SAFE_NO_PAD.encode(salt).into_bytes()),
        ("Debug".into(), format!("{salt:?}").into_bytes()),
        ("Debug, no spaces".into(), format!("{salt:?}").replace(' ', "").into_bytes()),
    ];
    for (i, f) in crate::canaries::forms(&hex).into_iter().enumerate() {
        forms.push((format!("form {i} of the hex text"), f.into_bytes()));
    }
    forms
}

/// The salt as the vault keeps it: the sealed `audit_salt` row of the
/// SQLite file, opened under the keyring file.
async fn read_salt(db: &Path, keyring: &Path) -> Vec<u8> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db).read_only(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let blob: Vec<u8> =
        sqlx::query_scalar("SELECT value FROM installation WHERE key = 'audit_salt'").fetch_one(&pool).await.unwrap();
    pool.close().await;
    let keyring = Keyring::from_file(keyring).unwrap();
    let fields = crypto::open(&keyring, &blob, &SALT_AAD).expect("the salt row opens under the keyring");
    hex::decode(fields["salt"].expose()).unwrap()
}

/// A plain-HTTP upstream on loopback that answers 200 to the right key.
async fn upstream(key: String) -> u16 {
    let router = Router::new().route(
        "/ok",
        get(move |h: HeaderMap| async move {
            let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {key}"));
            if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_salt_is_never_logged_returned_or_measured() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keyring: PathBuf = dir.path().join("keyring");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        writeln!(f.open(&keyring).unwrap(), "1:{}", MasterKey::generate().unwrap().to_base64().as_str()).unwrap();
    }
    let mut seen = Seen::default();
    let key = canary("salt-api-key");
    let port = upstream(key.clone()).await;

    // The operator's set-up, with the CLI.
    let (k, d) = (&data, &keyring);
    let key_arg = format!("key={key}");
    let up = ["credential", "add", "up", "--scheme", "api-key", "--config", "prefix=Bearer ", "--secret", &key_arg];
    seen.run(k, d, &[&up[..], &["--destination", "127.0.0.1"]].concat());
    let (akid, secret) = (canary("salt-akid"), canary("salt-aws-secret"));
    seen.run(
        k,
        d,
        &[
            "credential",
            "add",
            "aws",
            "--scheme",
            "aws-sigv4",
            "--config",
            "region=us-east-1",
            "--config",
            "service=s3",
            "--secret",
            &format!("access_key_id={akid}"),
            "--secret",
            &format!("secret_access_key={secret}"),
            "--destination",
            "s3.us-east-1.amazonaws.com",
        ],
    );
    seen.run(k, d, &["route", "add", "up", "--upstream", &format!("http://127.0.0.1:{port}"), "--credential", "up"]);
    let token = seen.run(k, d, &["agent", "add", "bot"]).trim().to_string();
    seen.run(k, d, &["credential", "attach", "up", "--agent", "bot"]);
    seen.run(k, d, &["credential", "attach", "aws", "--agent", "bot"]);

    // The broker at TRACE, its full use events in the log (the default sink).
    let admin = canary("salt-admin-token");
    let (out_path, err_path) = (dir.path().join("serve.out"), dir.path().join("serve.err"));
    let mut child = latchkey(&data, &keyring)
        .args(["serve", "--listen", "127.0.0.1:0", "--allow-upstream-network", "127.0.0.0/8"])
        .env("LATCHKEY_ADMIN_TOKEN", &admin)
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    let addr = crate::support::served_address(&err_path);
    let base = format!("http://{addr}");
    let bearer = format!("Bearer {token}");
    let admin_bearer = format!("Bearer {admin}");

    // Uses that release the credential (fingerprinted), and refusals.
    for _ in 0..3 {
        let (s, b) = seen.call("GET", &format!("{base}/proxy/up/ok"), &[("authorization", &bearer)], None).await;
        assert_eq!(s, 200, "{b}");
    }
    let wrong = format!("Bearer lk_agt_{}", "Q".repeat(43));
    let (s, _) = seen.call("GET", &format!("{base}/proxy/up/ok"), &[("authorization", &wrong)], None).await;
    assert_eq!(s, 401);
    let sign = |cred: &str| {
        serde_json::json!({
            "credential": cred,
            "request": {"method": "GET", "url": "https://s3.us-east-1.amazonaws.com/bucket/key", "headers": []},
        })
        .to_string()
    };
    let (s, b) = seen.call("POST", &format!("{base}/v1/sign"), &[("authorization", &bearer)], Some(sign("aws"))).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = seen.call("POST", &format!("{base}/v1/sign"), &[("authorization", &bearer)], Some(sign("up"))).await;
    assert_ne!(s, 200, "an api-key answer holds the key: {b}");
    // The admin API's reads of the trail and the directory, and the metrics.
    let admin_auth = [("authorization", admin_bearer.as_str())];
    let (s, audit_answer) = seen.call("GET", &format!("{base}/v1/admin/audit"), &admin_auth, None).await;
    assert_eq!(s, 200, "{audit_answer}");
    for path in ["/v1/admin/credentials", "/v1/admin/credentials/up", "/v1/admin/agents", "/v1/admin/routes"] {
        let (s, b) = seen.call("GET", &format!("{base}{path}"), &admin_auth, None).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    let (s, metrics) = seen.call("GET", &format!("{base}/metrics"), &[], None).await;
    assert_eq!(s, 200, "{metrics}");
    assert!(metrics.contains("latchkey"), "{metrics}");
    let (s, _) = seen.call("GET", &format!("{base}/healthz"), &[], None).await;
    assert_eq!(s, 200);

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    until_refused(&addr).await;
    assert!(child.wait().unwrap().success());
    seen.add("stdout of latchkey serve", std::fs::read(&out_path).unwrap());
    seen.add("stderr of latchkey serve", std::fs::read(&err_path).unwrap());

    // The trail read back, and a master key rotation, which re-wraps the salt.
    seen.run(k, d, &["audit", "--json"]);
    seen.run(k, d, &["audit"]);
    seen.run(k, d, &["vault", "status"]);
    seen.run(k, d, &["vault", "rotate-master-key"]);
    seen.run(k, d, &["audit", "--json", "--action", "use"]);

    // The salt, from the store, under the keyring as it is now.
    let db = data.join("vault.db");
    let salt = read_salt(&db, &keyring).await;
    assert_eq!(salt.len(), 32);
    for file in std::fs::read_dir(&data).unwrap().filter_map(Result::ok) {
        let name = file.file_name().to_string_lossy().into_owned();
        if name.starts_with("vault.db") {
            seen.add(format!("the database file {name}"), std::fs::read(file.path()).unwrap());
        }
    }

    // Not vacuous: the use events logged and answered carry fingerprints
    // made with exactly this salt.
    let secrets = BTreeMap::from([("key".to_string(), latchkey::Secret::new(key.clone()))]);
    let fingerprint = latchkey::vault::audit::fingerprint(&salt, &secrets);
    let serve_log =
        String::from_utf8_lossy(&seen.0.iter().find(|(w, _)| w == "stderr of latchkey serve").unwrap().1).into_owned();
    assert!(serve_log.contains(&fingerprint), "the broker's log holds no use event fingerprinted with the salt");
    assert!(serve_log.contains("TRACE"), "the broker did not log at TRACE");

    let forms = salt_forms(&salt);
    let mut leaks = Vec::new();
    let mut bytes = 0;
    for (what, haystack) in &seen.0 {
        bytes += haystack.len();
        for (form, needle) in &forms {
            if memchr::memmem::find(haystack, needle).is_some() {
                leaks.push(format!("{what} holds the salt ({form})"));
            }
        }
    }
    eprintln!("audit salt: {} forms looked for in {} outputs, {bytes} bytes", forms.len(), seen.0.len());
    assert!(leaks.is_empty(), "the audit salt leaked:\n{}", leaks.join("\n"));
}
