//! The broker over real sockets: agents, registration tokens, `/v1/sign`,
//! and the sidecar proxy in front of a local HTTPS upstream (its own CA,
//! made with rcgen) that checks the injected credential, verifies SigV4 and
//! streams server-sent events. The official OpenAI and Anthropic Python
//! SDKs and boto3 are the clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use latchkey::Secret;
use latchkey::server::{self, ServerConfig, net};
use latchkey::vault::model::RawCredential;
use latchkey::vault::{AttachmentKind, Vault};
use tokio::net::TcpListener;

use crate::db::{Backend, TestDb};

pub(crate) const OPENAI_KEY: &str = "sk-test-openai-4f9c2a7e1b";
const ANTHROPIC_KEY: &str = "sk-ant-test-9d8e7f6a5b";
pub(crate) const ADMIN_TOKEN: &str = "admin-test-token-5f1e2d3c";
const AWS_ID: &str = "AKIDTESTLATCHKEY";
const AWS_SECRET: &str = "test/aws+secret/key/not-real-0123456789";

/// A CA, and a certificate for `localhost` and 127.0.0.1 signed by it.
pub(crate) struct Pki {
    pub(crate) ca_file: PathBuf,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    _dir: tempfile::TempDir,
}

pub(crate) fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "latchkey test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Pki {
        ca_file,
        cert: leaf.der().clone(),
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        _dir: dir,
    }
}

/// Serve `router` over TLS on 127.0.0.1; returns the port.
pub(crate) async fn serve_tls(router: Router, pki: &Pki) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"message": msg, "type": "invalid_request_error"}})))
        .into_response()
}

/// Refuse any request that still carries an agent token anywhere.
fn leaked_agent_token(headers: &HeaderMap) -> bool {
    headers.values().any(|v| v.to_str().unwrap_or_default().contains("lk_agt_"))
}

/// Server-sent events, one every 150 ms, so buffering would be visible.
fn sse(events: Vec<String>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::spawn(async move {
        for e in events {
            if tx.send(bytes::Bytes::from(e)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::new(ChannelBody(rx)))
        .unwrap()
}

/// A body fed from a channel, one frame per message.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Recompute the SigV4 signature of a received request with the `aws-sigv4`
/// crate and the real secret, as AWS would.
fn sigv4_valid(req: &Request<Body>, body: &[u8], host: &str) -> Result<(), String> {
    use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).ok_or("no authorization")?;
    let signed_headers: Vec<&str> =
        auth.split(", ").find_map(|p| p.strip_prefix("SignedHeaders=")).ok_or("no SignedHeaders")?.split(';').collect();
    let scope = auth.split("Credential=").nth(1).ok_or("no Credential")?.split(',').next().unwrap();
    let parts: Vec<&str> = scope.split('/').collect();
    if parts[0] != AWS_ID {
        return Err(format!("signed with access key {}", parts[0]));
    }
    let amz_date = req.headers().get("x-amz-date").and_then(|v| v.to_str().ok()).ok_or("no x-amz-date")?;
    let t = time::PrimitiveDateTime::parse(
        amz_date,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .map_err(|e| e.to_string())?
    .assume_utc();
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64);
    let headers: Vec<(String, String)> = signed_headers
        .iter()
        .filter(|h| !matches!(**h, "x-amz-date" | "x-amz-content-sha256" | "authorization"))
        .map(|h| {
            let v = if *h == "host" {
                host.to_string()
            } else {
                req.headers().get(*h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
            };
            (h.to_string(), v)
        })
        .collect();
    let identity = aws_credential_types::Credentials::new(AWS_ID, AWS_SECRET, None, None, "test").into();
    let mut settings = SigningSettings::default();
    if signed_headers.contains(&"x-amz-content-sha256") {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(parts[2])
        .name(parts[3])
        .time(when)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = format!("https://{host}{}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let signable = SignableRequest::new(
        req.method().as_str(),
        &uri,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
    let (expected, _) = instructions.into_parts();
    let expected = expected.iter().find(|h| h.name() == "authorization").map(|h| h.value().to_string());
    if expected.as_deref() == Some(auth) { Ok(()) } else { Err(format!("signature mismatch: expected {expected:?}")) }
}

/// Holds an upstream's slow calls: each says it has arrived, then waits to
/// be let go, so a test can act while a call is certainly in flight.
#[derive(Clone, Default)]
pub(crate) struct Gate {
    arrived: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Gate {
    /// In the upstream's handler: say the call is here, wait to be let go.
    pub(crate) async fn hold(&self) {
        self.arrived.notify_one();
        self.release.notified().await;
    }

    /// Wait until a call has reached the upstream.
    pub(crate) async fn arrived(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.arrived.notified())
            .await
            .expect("no call reached the upstream's slow path");
    }

    /// Let the held call answer.
    pub(crate) fn release(&self) {
        self.release.notify_one();
    }
}

/// Wait until nothing accepts connections at `addr` (a server shutting down
/// has closed its listener).
pub(crate) async fn until_refused(addr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "{addr} still accepts connections");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The fake providers. `/slow` is held by `gate`.
fn upstream(port_cell: Arc<std::sync::OnceLock<u16>>, gate: Gate) -> Router {
    Router::new().fallback(move |req: Request<Body>| {
        let (port_cell, gate) = (port_cell.clone(), gate.clone());
        async move {
            let host = format!("localhost:{}", port_cell.get().copied().unwrap_or_default());
            if leaked_agent_token(req.headers()) {
                return json_error(StatusCode::BAD_REQUEST, "an agent token reached the upstream");
            }
            let path = req.uri().path().to_string();
            let headers = req.headers().clone();
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let req = Request::from_parts(parts, Body::empty());
            let text = String::from_utf8_lossy(&body).to_string();
            let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            match path.as_str() {
                "/v1/chat/completions" => {
                    if header("authorization") != format!("Bearer {OPENAI_KEY}") {
                        return json_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided");
                    }
                    if text.contains("\"stream\":true") {
                        let mut events: Vec<String> = ["Hel", "lo ", "agent"]
                            .iter()
                            .map(|t| {
                                let chunk = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
                                    "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]});
                                format!("data: {chunk}\n\n")
                            })
                            .collect();
                        events.push("data: [DONE]\n\n".into());
                        return sse(events);
                    }
                    axum::Json(serde_json::json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-test",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello agent"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}))
                    .into_response()
                }
                "/v1/messages" => {
                    if header("x-api-key") != ANTHROPIC_KEY || !header("authorization").is_empty() {
                        return json_error(StatusCode::UNAUTHORIZED, "invalid x-api-key");
                    }
                    if text.contains("\"stream\":true") {
                        let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
                        let mut events = vec![ev("message_start", serde_json::json!({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "model": "claude-test", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 0}}})),
                            ev("content_block_start", serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))];
                        for t in ["Hel", "lo ", "agent"] {
                            events.push(ev("content_block_delta", serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})));
                        }
                        events.push(ev("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": 0})));
                        events.push(ev("message_delta", serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 3}})));
                        events.push(ev("message_stop", serde_json::json!({"type": "message_stop"})));
                        return sse(events);
                    }
                    axum::Json(serde_json::json!({"id": "m1", "type": "message", "role": "assistant", "model": "claude-test",
                        "content": [{"type": "text", "text": "Hello agent"}], "stop_reason": "end_turn", "stop_sequence": null,
                        "usage": {"input_tokens": 1, "output_tokens": 2}}))
                    .into_response()
                }
                "/v1/models" => {
                    if header("authorization") != format!("Bearer {OPENAI_KEY}") {
                        return json_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided");
                    }
                    axum::Json(serde_json::json!({"object": "list", "data": []})).into_response()
                }
                "/slow" => {
                    gate.hold().await;
                    axum::Json(serde_json::json!({"slow": true})).into_response()
                }
                "/quota" => json_error(StatusCode::TOO_MANY_REQUESTS, "You exceeded your current quota"),
                "/redirect" => Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", "https://evil.example.com/steal")
                    .body(Body::empty())
                    .unwrap(),
                "/echo" => axum::Json(serde_json::json!({
                    "headers": headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect::<BTreeMap<_, _>>(),
                }))
                .into_response(),
                "/" if header("x-amz-target") == "DynamoDB_20120810.ListTables" => match sigv4_valid(&req, &body, &host) {
                    Ok(()) => (
                        [("content-type", "application/x-amz-json-1.0")],
                        serde_json::json!({"TableNames": ["verified-by-sigv4"]}).to_string(),
                    )
                        .into_response(),
                    Err(why) => (
                        StatusCode::FORBIDDEN,
                        [("content-type", "application/x-amz-json-1.0")],
                        serde_json::json!({"__type": "com.amazon.coral.service#InvalidSignatureException", "message": why}).to_string(),
                    )
                        .into_response(),
                },
                _ => json_error(StatusCode::NOT_FOUND, "no such path"),
            }
        }
    })
}

pub(crate) struct World {
    db: TestDb,
    pub(crate) vault: Arc<Vault>,
    pub(crate) base: String,
    pub(crate) upstream: String,
    pub(crate) pki: Pki,
    stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) state: Arc<server::AppState>,
    /// Holds the upstream's `/slow` calls.
    pub(crate) slow: Gate,
}

/// A vault with the three provider credentials and routes, an agent
/// attached to them, the upstream, and the broker.
pub(crate) async fn world(backend: Backend) -> Option<(World, String)> {
    let db = TestDb::new(backend).await?;
    let pki = pki();
    let cell = Arc::new(std::sync::OnceLock::new());
    let slow = Gate::default();
    let port = serve_tls(upstream(cell.clone(), slow.clone()), &pki).await;
    cell.set(port).unwrap();
    let upstream_url = format!("https://localhost:{port}");
    let vault = Arc::new(Vault::open(db.options_with_sink(64 << 20, 2), crate::db::runtime()).await.unwrap());
    let add = |name: &str, scheme: &str, config: &[(&str, &str)], secrets: &[(&str, &str)]| {
        let mut raw = RawCredential::new(name, scheme);
        raw.config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        raw.secrets = secrets.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect();
        raw.destinations = vec!["localhost".into()];
        raw
    };
    vault.create(add("openai-key", "api-key", &[("prefix", "Bearer ")], &[("key", OPENAI_KEY)]), "t").await.unwrap();
    vault
        .create(add("anthropic-key", "api-key", &[("header", "x-api-key")], &[("key", ANTHROPIC_KEY)]), "t")
        .await
        .unwrap();
    vault
        .create(
            add(
                "aws-key",
                "aws-sigv4",
                &[("region", "us-east-1"), ("service", "dynamodb")],
                &[("access_key_id", AWS_ID), ("secret_access_key", AWS_SECRET)],
            ),
            "t",
        )
        .await
        .unwrap();
    for (route, cred) in [("openai", "openai-key"), ("anthropic", "anthropic-key"), ("aws", "aws-key")] {
        let r = latchkey::vault::agents::Route {
            name: route.into(),
            org: "default".into(),
            upstream: upstream_url.clone(),
            credential: cred.into(),
            mock: false,
            check_path: None,
        };
        vault.put_route(&r, "t").await.unwrap();
    }
    let agent = vault.create_agent("default", "bot", "t").await.unwrap();
    for cred in ["openai-key", "anthropic-key", "aws-key"] {
        vault.set_attachment("default", cred, AttachmentKind::Agent, "bot", true, "t").await.unwrap();
    }
    let config = ServerConfig {
        address_policy: net::AddressPolicy { allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()] },
        tls: net::TlsOptions { extra_ca_files: vec![pki.ca_file.clone()], no_system_roots: true },
        max_body: 1 << 20,
        ..ServerConfig::default()
    }
    .with_admin_token(ADMIN_TOKEN);
    let state = server::state(vault.clone(), crate::db::runtime(), config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let world = World { db, vault, base: format!("http://{addr}"), upstream: upstream_url, pki, stop, state, slow };
    Some((world, agent.token.expose().to_string()))
}

impl World {
    pub(crate) async fn close(self) {
        let _ = self.stop.send(());
        self.vault.close().await;
        self.db.cleanup().await;
    }
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/venv/bin/python")
}

/// Run an e2e client script; its one JSON line.
fn client(script: &str, args: &[&str], route_url: &str, token: &str) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = python();
    assert!(py.exists(), "run `cargo xtask setup` first: {} is missing", py.display());
    let out = Command::new(py)
        .arg(root.join("tests/e2e").join(script))
        .args(args)
        .env("LATCHKEY_ROUTE_URL", route_url)
        .env("LATCHKEY_AGENT_TOKEN", token)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
}

/// Run `client` off the async runtime.
async fn run_client(
    script: &'static str,
    args: &'static [&'static str],
    route_url: String,
    token: String,
) -> serde_json::Value {
    tokio::task::spawn_blocking(move || client(script, args, &route_url, &token)).await.unwrap()
}

fn assert_streamed(v: &serde_json::Value) {
    assert_eq!(v["content"], "Hello agent", "{v}");
    let arrivals: Vec<f64> = v["arrivals"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(arrivals.len(), 3, "{v}");
    // Tokens arrive as the upstream sends them (150 ms apart), not all at the end.
    assert!(arrivals[2] - arrivals[0] > 0.2, "the stream was buffered: {arrivals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_sdks_through_the_proxy() {
    let (w, token) = world(Backend::Sqlite).await.unwrap();
    let openai = format!("{}/proxy/openai", w.base);
    let v = run_client("openai_client.py", &["plain"], openai.clone(), token.clone()).await;
    assert_eq!(v["content"], "Hello agent");
    assert_streamed(&run_client("openai_client.py", &["stream"], openai, token.clone()).await);
    let anthropic = format!("{}/proxy/anthropic", w.base);
    let v = run_client("anthropic_client.py", &["plain"], anthropic.clone(), token.clone()).await;
    assert_eq!(v["content"], "Hello agent");
    assert_streamed(&run_client("anthropic_client.py", &["stream"], anthropic, token.clone()).await);
    let v = run_client("boto3_client.py", &[], format!("{}/proxy/aws", w.base), token.clone()).await;
    assert_eq!(v["tables"], serde_json::json!(["verified-by-sigv4"]), "the upstream verified the broker's SigV4");
    // Every use is counted with the agent, and in the sink with the destination.
    let uses = w
        .vault
        .audit(&latchkey::vault::AuditFilter { action: Some(latchkey::vault::AuditAction::Use), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(uses.iter().map(|u| u.count.unwrap()).sum::<u64>(), 5, "{uses:?}");
    assert!(uses.iter().all(|u| u.outcome == "ok" && u.agent.as_deref() == Some("bot")), "{uses:?}");
    let lines = w.db.sink_lines();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|u| u["outcome"] == "ok" && u["agent"] == "bot" && u["destination"] == "localhost"));
    w.close().await;
}

pub(crate) async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, HeaderMap) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Body>();
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = client.request(b.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null), headers)
}

async fn security(backend: Backend) {
    let Some((w, token)) = world(backend).await else { return };
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];

    // The agent's own headers never reach the upstream; the credential does.
    let (status, v, _) = http(
        "GET",
        &format!("{}/proxy/openai/echo", w.base),
        &[("authorization", &bearer), ("x-api-key", &token)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["headers"]["authorization"], format!("Bearer {OPENAI_KEY}"));
    assert!(v["headers"].get("x-api-key").is_none());

    // A redirect comes back to the agent, never followed with the credential.
    let (status, _, headers) = http("GET", &format!("{}/proxy/openai/redirect", w.base), &auth, None).await;
    assert_eq!(status, 302);
    assert_eq!(headers["location"], "https://evil.example.com/steal");

    // No token, a bad token, prefix confusion, whitespace, truncation.
    for (h, v, code) in [
        ("x-none", "x", "invalid_agent_token"),
        ("authorization", "Bearer lk_agt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "invalid_agent_token"),
        ("x-api-key", &bearer, "invalid_agent_token"),
        ("authorization", &token, "invalid_agent_token"),
        ("authorization", &format!("Bearer {}", &token[..20]), "invalid_agent_token"),
    ] {
        let (status, v, _) = http("GET", &format!("{}/proxy/openai/echo", w.base), &[(h, v)], None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some(code)), "{h}: {v}");
        assert!(!v.to_string().contains(&token[7..]), "the token is never echoed: {v}");
    }
    let (_, v, _) = http(
        "GET",
        &format!("{}/proxy/openai/echo", w.base),
        &[("authorization", &format!("Bearer {}", &token[..20]))],
        None,
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("truncated"), "{v}");

    // An agent without the attachment: 403.
    let other = w.vault.create_agent("default", "stranger", "t").await.unwrap();
    let sb = format!("Bearer {}", other.token.expose());
    let (status, v, _) = http("GET", &format!("{}/proxy/openai/echo", w.base), &[("authorization", &sb)], None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("credential_not_attached")), "{v}");

    // Disabled credential: 401 on the next call.
    w.vault.set_enabled("default", "openai-key", false, "t").await.unwrap();
    let (status, v, _) = http("GET", &format!("{}/proxy/openai/echo", w.base), &auth, None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("credential_disabled")), "{v}");
    w.vault.set_enabled("default", "openai-key", true, "t").await.unwrap();

    // A destination outside the credential's list, via /v1/sign.
    let sign = |cred: &str, url: &str| serde_json::json!({"credential": cred, "request": {"method": "POST", "url": url, "headers": [["x-amz-target", "DynamoDB_20120810.ListTables"]], "body_base64": ""}, "at": "2026-11-23T12:00:00Z"});
    let (status, v, _) =
        http("POST", &format!("{}/v1/sign", w.base), &auth, Some(sign("aws-key", "https://evil.example.com/"))).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("destination_not_allowed")), "{v}");
    // /v1/sign for SigV4: a signature comes back, never the secret.
    let (status, v, _) =
        http("POST", &format!("{}/v1/sign", w.base), &auth, Some(sign("aws-key", &format!("{}/", w.upstream)))).await;
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("AWS4-HMAC-SHA256 Credential=AKIDTESTLATCHKEY/20261123/us-east-1/dynamodb/aws4_request"),
        "{text}"
    );
    assert!(!text.contains(AWS_SECRET));
    // /v1/sign for an API key would hand the agent the key: refused.
    let (status, v, _) =
        http("POST", &format!("{}/v1/sign", w.base), &auth, Some(sign("openai-key", &format!("{}/", w.upstream))))
            .await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("secret_in_output")), "{v}");
    assert!(!v.to_string().contains(OPENAI_KEY));

    // Every answer carries a request id; a sane caller id is kept.
    let (_, _, headers) = http("GET", &format!("{}/healthz", w.base), &[("x-request-id", "trace-abc-123")], None).await;
    assert_eq!(headers["x-request-id"], "trace-abc-123");
    let (_, _, headers) =
        http("GET", &format!("{}/healthz", w.base), &[("x-request-id", "bad id with spaces")], None).await;
    assert_eq!(headers["x-request-id"].len(), 16, "a malformed id is replaced");

    // Upstreams in private ranges are refused unless allowed.
    let r = latchkey::vault::agents::Route {
        name: "meta".into(),
        org: "default".into(),
        upstream: "http://169.254.169.254".into(),
        credential: "openai-key".into(),
        mock: false,
        check_path: None,
    };
    // A route the credential may not reach is refused when added.
    let e = w.vault.put_route(&r, "t").await.unwrap_err();
    assert_eq!(e.code(), latchkey::error::ErrorCode::DestinationNotAllowed, "{e}");
    w.vault
        .update(
            "default",
            "openai-key",
            latchkey::vault::model::RawUpdate {
                destinations: Some(vec!["localhost".into(), "169.254.169.254".into()]),
                ..Default::default()
            },
            "t",
        )
        .await
        .unwrap();
    w.vault.put_route(&r, "t").await.unwrap();
    let (status, v, _) = http("GET", &format!("{}/proxy/meta/latest/meta-data/", w.base), &auth, None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("upstream_address_refused")), "{v}");

    // Mock mode shows what would be sent, with the secret redacted.
    let mut mock = r.clone();
    mock.name = "mock".into();
    mock.upstream = w.upstream.clone();
    mock.mock = true;
    w.vault.put_route(&mock, "t").await.unwrap();
    let (status, v, headers) = http("GET", &format!("{}/proxy/mock/v1/models", w.base), &auth, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-latchkey-mock"], "1");
    let sent = v["would_send"]["headers"].as_array().unwrap();
    assert!(sent.contains(&serde_json::json!(["Authorization", "Bearer [redacted]"])), "{v}");
    assert!(sent.iter().any(|h| h[0] == "x-request-id"), "the request id goes upstream for correlation: {v}");
    assert!(!v.to_string().contains(OPENAI_KEY));

    // Metrics count calls by scheme, route and outcome, and carry no secret.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Body>();
    let resp = client.get(format!("{}/metrics", w.base).parse().unwrap()).await.unwrap();
    let text = String::from_utf8(http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes().to_vec())
        .unwrap();
    assert!(
        text.contains("latchkey_calls_total{surface=\"proxy\",scheme=\"api-key\",route=\"openai\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(text.contains("outcome=\"credential_disabled\""), "{text}");
    for s in [OPENAI_KEY, ANTHROPIC_KEY, AWS_SECRET, &token[7..]] {
        assert!(!text.contains(s));
    }
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_sqlite() {
    security(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_postgres() {
    security(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_checks() {
    let (w, _) = world(Backend::Sqlite).await.unwrap();
    let mut route = latchkey::vault::agents::Route {
        name: "openai".into(),
        org: "default".into(),
        upstream: w.upstream.clone(),
        credential: "openai-key".into(),
        mock: false,
        check_path: Some("/v1/models".into()),
    };
    w.vault.put_route(&route, "t").await.unwrap();
    let check = |name: &'static str| {
        let state = w.state.clone();
        async move { server::check::check_credential(&state, "default", name).await.unwrap() }
    };
    let ok = check("openai-key").await;
    assert_eq!((ok.state, ok.status), ("valid", Some(200)), "{ok:?}");
    // A wrong key: invalid, with the 401.
    w.vault
        .rotate(
            "default",
            "openai-key",
            BTreeMap::from([("key".into(), Secret::new("sk-wrong-key-123"))]),
            Default::default(),
            "t",
        )
        .await
        .unwrap();
    let bad = check("openai-key").await;
    assert_eq!((bad.state, bad.status), ("invalid", Some(401)));
    // Quota, and an upstream that is down.
    route.check_path = Some("/quota".into());
    w.vault.put_route(&route, "t").await.unwrap();
    assert_eq!(check("openai-key").await.state, "quota");
    route.upstream = "https://localhost:1".into();
    w.vault.put_route(&route, "t").await.unwrap();
    assert_eq!(check("openai-key").await.state, "unreachable");
    let states = w.vault.check_states().await.unwrap();
    assert_eq!(states[&("default".to_string(), "openai-key".to_string())].0, "unreachable");
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_and_registration_over_http() {
    let (w, agent_token) = world(Backend::Sqlite).await.unwrap();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let a = [("authorization", admin.as_str())];
    let url = |p: &str| format!("{}{p}", w.base);

    // Separate from agents: no token, an agent token, a wrong token.
    let agent_bearer = format!("Bearer {agent_token}");
    for h in [vec![], vec![("authorization", agent_bearer.as_str())], vec![("authorization", "Bearer wrong")]] {
        let (status, v, _) = http("GET", &url("/v1/admin/credentials"), &h, None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("invalid_admin_token")), "{v}");
    }
    let (status, v, _) = http("GET", &url("/v1/admin/credentials"), &a, None).await;
    assert_eq!(status, 200);
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(!v.to_string().contains(OPENAI_KEY), "no secret in admin output");

    // Create with hygiene notices; a Bearer-prefixed key is refused with its code.
    let body = serde_json::json!({"name": "groq-key", "scheme": "api-key", "config": {"prefix": "Bearer "},
        "secrets": {"key": "gsk-test-1234567\n"}, "destinations": ["localhost"]});
    let (status, v, _) = http("POST", &url("/v1/admin/credentials"), &a, Some(body)).await;
    assert_eq!(status, 201, "{v}");
    assert!(v["notices"][0].as_str().unwrap().contains("line break"), "{v}");
    let bad = serde_json::json!({"name": "bad", "scheme": "api-key", "secrets": {"key": "Bearer gsk-x"}});
    let (status, v, _) = http("POST", &url("/v1/admin/credentials"), &a, Some(bad)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_secret")), "{v}");

    // Disable over the API: the proxy refuses on the next call.
    let (status, _, _) = http("POST", &url("/v1/admin/credentials/openai-key/disable"), &a, None).await;
    assert_eq!(status, 200);
    let (status, v, _) = http("GET", &url("/proxy/openai/echo"), &[("authorization", &agent_bearer)], None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("credential_disabled")));
    http("POST", &url("/v1/admin/credentials/openai-key/enable"), &a, None).await;

    // A registration token over the admin API, redeemed over HTTP.
    let (status, v, _) =
        http("POST", &url("/v1/admin/tokens?org=default"), &a, Some(serde_json::json!({"ttl": "10m"}))).await;
    assert_eq!(status, 201, "{v}");
    let reg = v["token"].as_str().unwrap().to_string();
    let redeem = serde_json::json!({"token": reg, "org": "default", "name": "runner-7"});
    let (status, v, _) = http("POST", &url("/v1/agents/register"), &[], Some(redeem.clone())).await;
    assert_eq!(status, 201, "{v}");
    let new_token = v["token"].as_str().unwrap().to_string();
    assert!(new_token.starts_with("lk_agt_"));
    let (status, v, _) = http("POST", &url("/v1/agents/register"), &[], Some(redeem)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("invalid_token")), "{v}");
    // The new agent exists, but is attached to nothing yet.
    let nb = format!("Bearer {new_token}");
    let (status, v, _) = http("GET", &url("/proxy/openai/echo"), &[("authorization", &nb)], None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("credential_not_attached")), "{v}");
    let (status, v, _) = http("GET", &url("/v1/admin/agents"), &a, None).await;
    assert_eq!(status, 200);
    assert!(v.to_string().contains("runner-7") && !v.to_string().contains(&new_token[7..]));

    // Audit, plugins, routes.
    let (status, v, _) = http("GET", &url("/v1/admin/audit?credential=openai-key&action=disable"), &a, None).await;
    assert_eq!(status, 200);
    assert_eq!(v[0]["actor"], "admin:admin", "the admin token's name, never the token");
    let (_, v, _) = http("GET", &url("/v1/admin/plugins"), &a, None).await;
    assert_eq!(v.as_array().unwrap().len(), 7);
    let (_, v, _) = http("GET", &url("/v1/admin/routes"), &a, None).await;
    assert_eq!(v.as_array().unwrap().len(), 3);

    // The OpenAPI document lists every admin path, and each one exists.
    let (status, doc, _) = http("GET", &url("/v1/openapi.json"), &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/admin") {
            continue;
        }
        let concrete = path.replace("{name}", "openai-key").replace("{prefix}", "lk_reg_AbCd");
        for method in ops.as_object().unwrap().keys() {
            if method == "delete" {
                continue;
            }
            let (status, v, _) =
                http(&method.to_uppercase(), &url(&concrete), &[("authorization", "Bearer wrong")], None).await;
            assert_eq!(status, 401, "{method} {path} must exist and require the admin token: {v}");
        }
    }
    w.close().await;
}

/// 50 concurrent redemptions of one registration token, over two vault
/// instances (replicas) on one database: exactly one succeeds.
async fn registration_race(db: &TestDb) {
    let a = Arc::new(db.open().await);
    let b = Arc::new(db.open().await);
    let issued = a.create_registration_token("acme", time::Duration::hours(1), "t").await.unwrap();
    assert!(issued.token.expose().starts_with("lk_reg_"));
    let token = issued.token.expose().to_string();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let v = if i % 2 == 0 { a.clone() } else { b.clone() };
        let token = token.clone();
        tasks.push(tokio::spawn(
            async move { v.redeem_registration_token(&token, "acme", &format!("agent-{i}")).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), "invalid_token", "{e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one redemption wins");
    assert_eq!(a.list_agents(Some("acme")).await.unwrap().len(), 1);
    // The failure modes, each with its code.
    let e = a.redeem_registration_token(&token, "acme", "late").await.unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");
    let other = a.create_registration_token("acme", time::Duration::hours(1), "t").await.unwrap();
    let e = a.redeem_registration_token(other.token.expose(), "globex", "x").await.unwrap_err();
    assert_eq!((e.code().as_str(), e.code().http_status()), ("org_mismatch", 403));
    let e = a.redeem_registration_token(&format!(" {}\n", other.token.expose()), "acme", "x").await.unwrap_err();
    assert!(e.code() == "invalid_token" && e.to_string().contains("whitespace"), "{e}");
    let e = a.redeem_registration_token(&other.token.expose()[..30], "acme", "x").await.unwrap_err();
    assert!(e.code() == "invalid_token" && e.to_string().contains("truncated"), "{e}");
    assert!(!e.to_string().contains(&other.token.expose()[11..30]), "only the redacted prefix is shown: {e}");
    // An expired token, without waiting out a TTL: the vault refuses a TTL
    // that is not positive, so the expiry is moved into the past in the
    // database.
    let expired = a.create_registration_token("acme", time::Duration::hours(1), "t").await.unwrap();
    expire_registration_token(db, expired.token.expose()).await;
    let e = a.redeem_registration_token(expired.token.expose(), "acme", "x").await.unwrap_err();
    assert_eq!((e.code().as_str(), e.code().http_status()), ("expired_token", 401));
    assert!(e.to_string().contains("expired"), "{e}");
    // Refused, not consumed: it is still unused and still expired.
    let e = b.redeem_registration_token(expired.token.expose(), "acme", "x").await.unwrap_err();
    assert_eq!(e.code(), "expired_token", "{e}");
    // The redeemed agent token works; stored only as a hash.
    a.close().await;
    b.close().await;
}

/// Move the expiry of registration token `token` to before its creation,
/// directly in the database (as if its TTL had run out).
async fn expire_registration_token(db: &TestDb, token: &str) {
    let sql = "UPDATE registration_tokens SET expires_at = created_at - 1 WHERE token_hash = $1 AND used_at IS NULL";
    let hash = latchkey::vault::agents::token_hash(token);
    let updated = match db.backend {
        Backend::Sqlite => {
            let file = db.path().join("vault.db");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display())).await.unwrap();
            let n = sqlx::query(sql).bind(hash).execute(&pool).await.unwrap().rows_affected();
            pool.close().await;
            n
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(db.url.as_deref().unwrap()).await.unwrap();
            let n = sqlx::query(sql).bind(hash).execute(&pool).await.unwrap().rows_affected();
            pool.close().await;
            n
        }
    };
    assert_eq!(updated, 1, "the token's row was not found");
}

vault_tests! {
    registration_tokens_race => registration_race;
}
