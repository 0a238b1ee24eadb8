//! S3 uploads through a SigV4 route, against an S3 that verifies signatures
//! and keeps the bytes (`s3_upstream`): boto3 with botocore's default
//! checksum settings over HTTPS (aws-chunked bodies with a CRC32 trailer),
//! small and multi-MB objects, a multipart upload and awkward keys, each read
//! back; a chunk-signed upload; and the modes that must be refused.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use latchkey::Secret;
use latchkey::server::{self, ServerConfig, net};
use latchkey::vault::agents::Route;
use latchkey::vault::model::RawCredential;
use latchkey::vault::{AttachmentKind, Vault};
use tokio::net::TcpListener;

use crate::db::{Backend, TestDb};
use crate::s3_upstream::{S3State, s3_upstream};
use crate::server::{Pki, http, pki, serve_tls};

const ACCESS_KEY: &str = "AKIDLATCHKEYS3TEST";
const SECRET: &str = "s3-test/secret+key/not-real-9876543210";

struct S3World {
    db: TestDb,
    vault: Arc<Vault>,
    /// The broker over plain HTTP (Rust-side requests).
    base: String,
    /// The broker over HTTPS (boto3: botocore frames uploads only over TLS).
    tls_base: String,
    token: String,
    s3: S3State,
    pki: Pki,
    _files: tempfile::TempDir,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn world() -> S3World {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let pki = pki();
    let s3 = S3State::default();
    let cell = Arc::new(OnceLock::new());
    let port = serve_tls(s3_upstream(s3.clone(), ACCESS_KEY, SECRET, cell.clone()), &pki).await;
    cell.set(format!("localhost:{port}")).unwrap();

    let vault = Arc::new(db.open().await);
    let mut raw = RawCredential::new("s3-key", "aws-sigv4");
    raw.config = vec![("region".into(), "us-east-1".into()), ("service".into(), "s3".into())];
    raw.secrets = [("access_key_id", ACCESS_KEY), ("secret_access_key", SECRET)]
        .iter()
        .map(|(k, v)| (k.to_string(), Secret::new(*v)))
        .collect();
    raw.destinations = vec!["localhost".into()];
    vault.create(raw, "t").await.unwrap();
    let route = Route {
        name: "s3".into(),
        org: "default".into(),
        upstream: format!("https://localhost:{port}"),
        credential: "s3-key".into(),
        mock: false,
        check_path: None,
    };
    vault.put_route(&route, "t").await.unwrap();
    let agent = vault.create_agent("default", "bot", "t").await.unwrap();
    vault.set_attachment("default", "s3-key", AttachmentKind::Agent, "bot", true, "t").await.unwrap();

    let config = ServerConfig {
        address_policy: net::AddressPolicy { allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()] },
        tls: net::TlsOptions { extra_ca_files: vec![pki.ca_file.clone()], no_system_roots: true },
        max_body: 32 << 20,
        ..ServerConfig::default()
    };
    let state = server::state(vault.clone(), crate::db::runtime(), config).unwrap();
    let mut stops = Vec::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    stops.push(stop);
    tokio::spawn(server::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    let acceptor = server::tls_acceptor(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_base = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    stops.push(stop);
    tokio::spawn(server::serve_tls(listener, acceptor, state, async move {
        let _ = stopped.await;
    }));
    S3World { db, vault, base, tls_base, token: agent.token.expose().to_string(), s3, pki, _files: files, stops }
}

impl S3World {
    async fn close(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        self.vault.close().await;
        self.db.cleanup().await;
    }
}

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boto3_default_uploads_are_stored_as_sent() {
    let w = world().await;
    let (route, token, ca) = (format!("{}/proxy/s3", w.tls_base), w.token.clone(), w.pki.ca_file.clone());
    let out = tokio::task::spawn_blocking(move || {
        let py = python();
        assert!(py.exists(), "run `cargo xtask setup` first: {} is missing", py.display());
        Command::new(py)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/boto3_s3.py"))
            .env("LATCHKEY_ROUTE_URL", route)
            .env("LATCHKEY_AGENT_TOKEN", token)
            .env("LATCHKEY_CA_FILE", ca)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("NO_PROXY", "*")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "boto3 failed:\n{stdout}\n{stderr}\nS3 refused: {:#?}", w.s3.refusals());
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // botocore's defaults did what users run: aws-chunked with a trailer.
    let modes = v["modes"].as_array().unwrap();
    assert!(
        modes.iter().any(|m| m == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        "botocore {} sent {modes:?}",
        v["botocore"]
    );
    // What S3 holds is the bytes, under the exact keys.
    let keys = w.s3.keys("lk-test");
    for k in ["plain.txt", "with space.txt", "plus+sign", "per%cent", "unicodé/ключ.bin", "double//slash", "/leading"]
    {
        assert!(keys.iter().any(|x| x == k), "key {k:?} missing from {keys:?}");
        let stored = w.s3.object("lk-test", k).unwrap();
        assert!(!stored.windows(22).any(|win| win == b"x-amz-checksum-crc32:A"), "{k:?} stored with its framing");
    }
    assert!(w.s3.refusals().is_empty(), "S3 refused: {:#?}", w.s3.refusals());
    w.close().await;
}

/// A raw request through the plain listener.
async fn put(w: &S3World, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    let mut b = axum::http::Request::builder().method("PUT").uri(format!("{}/proxy/s3{path}", w.base));
    b = b.header("authorization", format!("Bearer {}", w.token));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client.request(b.body(axum::body::Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn framed(payload: &[u8], chunk: usize, signed: bool) -> Vec<u8> {
    let sig = |i: usize| format!(";chunk-signature={:064x}", i + 1);
    let mut out = Vec::new();
    for (i, c) in payload.chunks(chunk).enumerate() {
        let ext = if signed { sig(i) } else { String::new() };
        out.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    let ext = if signed { sig(usize::MAX - 1) } else { String::new() };
    out.extend_from_slice(format!("0{ext}\r\n\r\n").as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_signed_uploads_are_decoded_and_refusals_store_nothing() {
    let w = world().await;
    let (status, json, _) = http(
        "PUT",
        &format!("{}/proxy/s3/lk-test", w.base),
        &[("authorization", &format!("Bearer {}", w.token))],
        None,
    )
    .await;
    assert_eq!(status, 200, "create bucket: {json}");

    // STREAMING-AWS4-HMAC-SHA256-PAYLOAD: chunk signatures made with the
    // agent's throwaway key; the broker decodes and re-signs the payload.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let len = payload.len().to_string();
    let (status, json) = put(
        &w,
        "/lk-test/chunk%20signed.bin",
        &[
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", &len),
        ],
        framed(&payload, 65_536, true),
    )
    .await;
    assert_eq!(status, 200, "{json} {:#?}", w.s3.refusals());
    assert_eq!(w.s3.object("lk-test", "chunk signed.bin").as_deref(), Some(&payload[..]), "stored bytes differ");

    // Refused before anything is sent: SigV4a chunks (cannot be re-signed
    // here), aws-chunked under a plain hash (the framing would be stored),
    // and a decoded length that contradicts the body.
    let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, &framed(b"abc", 2, false)));
    for (key, headers, code) in [
        (
            "/lk-test/v4a",
            vec![
                ("x-amz-content-sha256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"),
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", "3"),
            ],
            "unsupported_payload",
        ),
        (
            "/lk-test/framed",
            vec![("x-amz-content-sha256", hash.as_str()), ("content-encoding", "aws-chunked")],
            "invalid_request",
        ),
        (
            "/lk-test/short",
            vec![
                ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", "4"),
            ],
            "invalid_request",
        ),
    ] {
        let (status, json) = put(&w, key, &headers, framed(b"abc", 2, key == "/lk-test/v4a")).await;
        assert_eq!((status, json["error"]["code"].as_str()), (400, Some(code)), "{key}: {json}");
        assert!(w.s3.object("lk-test", &key["/lk-test/".len()..]).is_none(), "{key} reached S3");
    }
    w.close().await;
}
