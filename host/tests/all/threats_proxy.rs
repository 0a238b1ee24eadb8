//! Threat catalogue cases of the proxy and the server, each shown over real
//! sockets on 127.0.0.1: DNS rebinding (29), Host and `X-Forwarded-*`
//! spoofing (31), the credential store going away under a running broker
//! (33), and a body over the signing buffer (36).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use latchkey::Secret;
use latchkey::server::{self, ServerConfig, net};
use latchkey::vault::agents::Route;
use latchkey::vault::model::RawCredential;
use latchkey::vault::{AttachmentKind, Location, Vault, VaultOptions};
use tokio::net::TcpListener;

use crate::db::{Backend, TestDb, suffix};
use crate::s3_upstream::{S3State, s3_upstream};
use crate::support::canary;

/// One request as the upstream got it.
#[derive(Debug, Clone)]
struct Seen {
    headers: Vec<(String, String)>,
    body_len: usize,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An upstream that records every request it gets and answers each on a
/// connection it then closes, so the broker's next call dials (and
/// resolves) again.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let app = Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                log.lock().unwrap().push(Seen { headers, body_len: body.len() });
                ([("connection", "close")], axum::Json(serde_json::json!({"upstream": true})))
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { port, seen }
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream got a request")
    }
}

/// A running broker, and the token of its agent `bot`.
struct Broker {
    base: String,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// The address policy of these tests: 127.0.0.1 only (the rest of
/// 127.0.0.0/8, link-local and metadata addresses stay refused).
fn loopback_only() -> net::AddressPolicy {
    net::AddressPolicy { allow: vec!["127.0.0.1/32".parse().unwrap()] }
}

/// The agent `bot`: its token.
async fn agent(vault: &Vault) -> String {
    vault.create_agent("default", "bot", "t").await.unwrap().token.expose().to_string()
}

/// Start a broker on `vault` with `config` for the agent holding `token`;
/// its upstream client resolves through `lookup` when given (else the
/// system's resolver).
async fn broker(
    vault: &Arc<Vault>,
    token: String,
    config: ServerConfig,
    lookup: Option<Arc<dyn net::Lookup>>,
) -> Broker {
    let policy = Arc::new(config.address_policy.clone());
    let tls = config.tls.clone();
    let mut state = server::state(vault.clone(), crate::db::runtime(), config).unwrap();
    if let Some(lookup) = lookup {
        let client = net::client_with_lookup(policy, &tls, lookup).unwrap();
        Arc::get_mut(&mut state).expect("the state is not shared yet").client = client.into();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Broker { base, token, stop }
}

impl Broker {
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn stop(self) {
        let _ = self.stop.send(());
    }
}

/// Store credential `name` for `destinations` and attach it to `bot` (see [`agent`]).
async fn credential(
    vault: &Vault,
    name: &str,
    scheme: &str,
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
    destinations: &[&str],
) {
    let mut raw = RawCredential::new(name, scheme);
    raw.config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    raw.secrets = secrets.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect();
    raw.destinations = destinations.iter().map(|d| d.to_string()).collect();
    vault.create(raw, "t").await.unwrap_or_else(|e| panic!("credential {name}: {e}"));
    vault.set_attachment("default", name, AttachmentKind::Agent, "bot", true, "t").await.unwrap();
}

/// An api-key credential `key` for 127.0.0.1 and an S3 SigV4 credential
/// `aws` (key id `aws_id`) for `aws_destination`, both with canary secrets
/// tagged `tag`; returns the api key.
async fn key_and_aws(vault: &Vault, tag: &str, aws_id: &str, aws_destination: &str) -> String {
    let key = canary(&format!("{tag}-key"));
    let aws_secret = canary(&format!("{tag}-aws"));
    credential(vault, "key", "api-key", &[("prefix", "Bearer ")], &[("key", &key)], &["127.0.0.1"]).await;
    credential(
        vault,
        "aws",
        "aws-sigv4",
        &[("region", "us-east-1"), ("service", "s3")],
        &[("access_key_id", aws_id), ("secret_access_key", &aws_secret)],
        &[aws_destination],
    )
    .await;
    key
}

/// Route `name` to `upstream` with `credential`.
async fn route(vault: &Vault, name: &str, upstream: &str, credential: &str) {
    let r = Route {
        name: name.into(),
        org: "default".into(),
        upstream: upstream.into(),
        credential: credential.into(),
        mock: false,
        check_path: None,
    };
    vault.put_route(&r, "t").await.unwrap();
}

/// A body sent in chunks with no length announced (`Transfer-Encoding: chunked`).
struct Chunked(VecDeque<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Send a request: the status and the answer as JSON (`Null` when it is not).
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Body) -> (u16, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Body>();
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client.request(b.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn code(answer: &serde_json::Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// 29. DNS rebinding
// ---------------------------------------------------------------------------

/// A name server under the test's control: each lookup gets the next
/// answer in line (the last one again once the line is spent), and every
/// lookup is counted.
struct Rebinding {
    answers: Mutex<VecDeque<Vec<std::net::SocketAddr>>>,
    last: Mutex<Vec<std::net::SocketAddr>>,
    lookups: AtomicUsize,
}

impl Rebinding {
    fn new(answers: &[&[&str]]) -> Arc<Rebinding> {
        let parse = |a: &[&str]| a.iter().map(|ip| std::net::SocketAddr::new(ip.parse().unwrap(), 0)).collect();
        let answers: VecDeque<Vec<std::net::SocketAddr>> = answers.iter().map(|a| parse(a)).collect();
        let last = answers.back().cloned().unwrap_or_default();
        Arc::new(Rebinding { answers: Mutex::new(answers), last: Mutex::new(last), lookups: AtomicUsize::new(0) })
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl net::Lookup for Rebinding {
    fn lookup(
        &self,
        host: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<std::net::SocketAddr>>> + Send + 'static>> {
        assert_eq!(host, "rebind.test", "only the route's name is resolved");
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers.lock().unwrap().pop_front().unwrap_or_else(|| self.last.lock().unwrap().clone());
        Box::pin(async move { Ok(answer) })
    }
}

/// Catalogue case 29 (DNS rebinding: the resolved IP is pinned, so the
/// check and the connect use the same address). The resolver keeps only
/// the addresses the policy allows, and those are what the connector gets:
/// a forbidden address in an answer is dropped, an answer of forbidden
/// addresses only is refused, and the client dials exactly the checked
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_the_connector_dials_only_checked_addresses() {
    let policy = Arc::new(loopback_only());
    let stub = Rebinding::new(&[&["169.254.169.254", "127.0.0.1", "127.0.0.2"], &["169.254.169.254", "10.0.0.1"]]);
    let resolver = net::CheckedResolver::new(policy.clone(), stub.clone());
    let addrs = resolver.resolve("rebind.test").await.unwrap();
    assert_eq!(addrs, vec!["127.0.0.1:0".parse().unwrap()], "only the allowed address is handed to the connector");
    let err = resolver.resolve("rebind.test").await.expect_err("every address is forbidden");
    let refused = net::AddressRefused::find(&err).expect("refused by the policy, not a lookup failure");
    assert_eq!(refused.host, "rebind.test");
    assert!(refused.why.contains("10.0.0.1") || refused.why.contains("169.254.169.254"), "{}", refused.why);

    // Through the upstream client: the answer leads with the metadata
    // address, and the connection goes to the checked one.
    let up = Upstream::start().await;
    let stub = Rebinding::new(&[&["169.254.169.254", "127.0.0.1"], &["169.254.169.254"]]);
    let client = net::client_with_lookup(policy, &net::TlsOptions::default(), stub.clone()).unwrap();
    let url = format!("http://rebind.test:{}/x", up.port);
    let resp = client.request(http::Request::get(&url).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let info = resp
        .extensions()
        .get::<hyper_util::client::legacy::connect::HttpInfo>()
        .expect("the connector reports the address it dialled");
    assert_eq!(info.remote_addr(), std::net::SocketAddr::from(([127, 0, 0, 1], up.port)));
    drop(resp);
    assert_eq!((stub.lookups(), up.hits()), (1, 1));
    // The name now points at the metadata service only: the next connection
    // (the upstream closed the last one) is refused before any dial.
    let err = client.request(http::Request::get(&url).body(Body::empty()).unwrap()).await.expect_err("refused");
    assert!(net::AddressRefused::find(&err).is_some(), "{err:?}");
    assert_eq!((stub.lookups(), up.hits()), (2, 1), "one lookup per connection, and no dial of the new answer");
}

/// Catalogue case 29 (DNS rebinding), through the proxy: a route to a name
/// that answers an allowed address for the first connection and the
/// metadata address for the next. The first call reaches the upstream; the
/// second is refused with `upstream_address_refused` and never dialled; each
/// connection was resolved exactly once, so no second lookup happens between
/// the check and the connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_through_the_proxy_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let vault = Arc::new(db.open().await);
    let token = agent(&vault).await;
    let up = Upstream::start().await;
    let key = canary("rebind-key");
    credential(&vault, "key", "api-key", &[("prefix", "Bearer ")], &[("key", &key)], &["rebind.test"]).await;
    route(&vault, "r", &format!("http://rebind.test:{}", up.port), "key").await;
    let stub = Rebinding::new(&[&["127.0.0.1"], &["169.254.169.254"]]);
    let config = ServerConfig { address_policy: loopback_only(), ..ServerConfig::default() };
    let b = broker(&vault, token, config, Some(stub.clone())).await;
    let auth = b.bearer();
    let url = format!("{}/proxy/r/v1/x", b.base);

    let (status, answer) = send("GET", &url, &[("authorization", &auth)], Body::empty()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(up.last().header("authorization"), Some(format!("Bearer {key}").as_str()));
    assert_eq!((stub.lookups(), up.hits()), (1, 1));

    let (status, answer) = send("GET", &url, &[("authorization", &auth)], Body::empty()).await;
    assert_eq!((status, code(&answer)), (403, "upstream_address_refused"), "{answer}");
    assert!(answer.to_string().contains("169.254.169.254"), "{answer}");
    assert!(!answer.to_string().contains(&key), "{answer}");
    assert_eq!((stub.lookups(), up.hits()), (2, 1), "the rebound address was never dialled");
    b.stop();
    vault.close().await;
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// 31. Host and X-Forwarded-* spoofing
// ---------------------------------------------------------------------------

/// What an agent could claim about hosts and addresses.
const SPOOFED: &[(&str, &str)] = &[
    ("host", "evil.example"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-for", "203.0.113.66"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-port", "443"),
    ("forwarded", "for=203.0.113.66;host=evil.example;proto=https"),
    ("x-real-ip", "203.0.113.66"),
];

/// Catalogue case 31 (`Host` disagrees with the route, `X-Forwarded-Host`
/// spoofed): the credential is the route's (not one attached to the agent
/// for the spoofed host), the upstream's `Host` is the route's, and none of the agent's forwarding
/// headers reaches the upstream (the proxy drops them); a SigV4 signature
/// names the route's host and does not sign the agent's claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_host_and_forwarding_headers_do_not_reach_the_upstream() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let vault = Arc::new(db.open().await);
    let token = agent(&vault).await;
    let up = Upstream::start().await;
    let upstream = format!("http://127.0.0.1:{}", up.port);
    let key = key_and_aws(&vault, "host", "AKIDLATCHKEYHOST", "127.0.0.1").await;
    // A credential for the spoofed host, attached to the same agent: a
    // Host header must not select it (no route may pair it with 127.0.0.1).
    let evil_key = canary("evil-key");
    credential(&vault, "evil", "api-key", &[("prefix", "Bearer ")], &[("key", &evil_key)], &["evil.example"]).await;
    route(&vault, "key", &upstream, "key").await;
    route(&vault, "aws", &upstream, "aws").await;
    let evil = Route {
        name: "evil".into(),
        org: "default".into(),
        upstream: upstream.clone(),
        credential: "evil".into(),
        mock: false,
        check_path: None,
    };
    let refused = vault.put_route(&evil, "t").await.expect_err("the route's upstream is not a destination of `evil`");
    assert_eq!(refused.code().as_str(), "destination_not_allowed", "{refused}");
    let b =
        broker(&vault, token, ServerConfig { address_policy: loopback_only(), ..ServerConfig::default() }, None).await;
    let auth = b.bearer();
    let mut headers: Vec<(&str, &str)> = vec![("authorization", &auth)];
    headers.extend_from_slice(SPOOFED);

    for name in ["key", "aws"] {
        let (status, answer) = send("GET", &format!("{}/proxy/{name}/v1/x", b.base), &headers, Body::empty()).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let seen = up.last();
        assert_eq!(seen.header("host"), Some(format!("127.0.0.1:{}", up.port).as_str()), "{name}: {seen:?}");
        for (spoofed, _) in &SPOOFED[1..] {
            assert_eq!(seen.header(spoofed), None, "{name}: the agent's `{spoofed}` was forwarded: {seen:?}");
        }
        let text = format!("{seen:?}");
        assert!(!text.contains("evil.example") && !text.contains("203.0.113.66"), "{name}: {seen:?}");
        assert!(!text.contains(&evil_key), "{name}: the spoofed host's credential was used: {seen:?}");
    }
    assert_eq!(up.seen.lock().unwrap()[0].header("authorization"), Some(format!("Bearer {key}").as_str()));
    let signed = up.last();
    let authorization = signed.header("authorization").expect("signed");
    assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDLATCHKEYHOST/"), "{authorization}");
    let signed_headers = authorization.split("SignedHeaders=").nth(1).and_then(|s| s.split(',').next()).unwrap();
    assert!(signed_headers.split(';').any(|h| h == "host"), "{signed_headers}");
    assert!(!signed_headers.contains("forwarded") && !signed_headers.contains("real-ip"), "{signed_headers}");

    b.stop();
    vault.close().await;
    db.cleanup().await;
}

/// Catalogue case 31, against an S3 that verifies SigV4 for its own host:
/// an agent sending `Host: evil.example` and `X-Forwarded-Host:
/// evil.example` through a SigV4 route still gets a request signed for the
/// route's host, which S3 accepts, and the object is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_through_a_spoofed_host_is_signed_for_the_routes_host() {
    const ID: &str = "AKIDLATCHKEYS3HOST";
    let secret: &'static str = Box::leak(canary("s3-host").into_boxed_str());
    let s3 = S3State::default();
    let cell = Arc::new(OnceLock::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    cell.set(format!("127.0.0.1:{port}")).unwrap();
    let app = s3_upstream(s3.clone(), ID, secret, cell);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let vault = Arc::new(db.open().await);
    let token = agent(&vault).await;
    credential(
        &vault,
        "s3",
        "aws-sigv4",
        &[("region", "us-east-1"), ("service", "s3")],
        &[("access_key_id", ID), ("secret_access_key", secret)],
        &["127.0.0.1"],
    )
    .await;
    route(&vault, "s3", &format!("http://127.0.0.1:{port}"), "s3").await;
    let b =
        broker(&vault, token, ServerConfig { address_policy: loopback_only(), ..ServerConfig::default() }, None).await;
    let auth = b.bearer();
    let mut headers: Vec<(&str, &str)> = vec![("authorization", &auth)];
    headers.extend_from_slice(SPOOFED);

    let (status, answer) = send("PUT", &format!("{}/proxy/s3/bucket", b.base), &headers, Body::empty()).await;
    assert_eq!(status, 200, "{answer} {:?}", s3.refusals());
    let (status, answer) =
        send("PUT", &format!("{}/proxy/s3/bucket/key", b.base), &headers, Body::from("stored through a spoofed host"))
            .await;
    assert_eq!(status, 200, "{answer} {:?}", s3.refusals());
    assert_eq!(s3.object("bucket", "key").as_deref(), Some(&b"stored through a spoofed host"[..]));
    assert!(s3.refusals().is_empty(), "{:?}", s3.refusals());
    b.stop();
    vault.close().await;
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// 33. The credential store unreachable under a running server
// ---------------------------------------------------------------------------

/// How a test takes its store away and gives it back. PostgreSQL: the
/// broker logs in as a role of the test's own, whose connections are
/// terminated and whose logins are refused while the store is down (no other
/// test is touched). SQLite: the broker's pool is closed.
struct Outage {
    /// The role and the URL the broker connects with (PostgreSQL).
    role: Option<(String, String)>,
}

impl Outage {
    async fn new(db: &TestDb) -> Outage {
        let Backend::Postgres = db.backend else { return Outage { role: None } };
        let role = format!("lk_outage_{}", suffix());
        let password = suffix();
        let schema = db.schema().expect("a PostgreSQL test has a schema");
        db.execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'")).await;
        db.execute(&format!("ALTER SCHEMA {schema} OWNER TO {role}")).await;
        let mut url = url::Url::parse(db.url.as_deref().unwrap()).unwrap();
        url.set_username(&role).unwrap();
        url.set_password(Some(&password)).unwrap();
        Outage { role: Some((role, url.to_string())) }
    }

    /// The broker's vault options: watching for changes, as `latchkey serve` does.
    fn options(&self, db: &TestDb) -> VaultOptions {
        let mut options = db.options();
        if let Some((_, url)) = &self.role {
            options.location = Location::Postgres(url.clone());
        }
        options.watch = true;
        options
    }

    async fn down(&self, db: &TestDb, vault: &Vault) {
        match &self.role {
            Some((role, _)) => {
                db.execute(&format!("ALTER ROLE {role} NOLOGIN")).await;
                db.execute(&format!(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = '{role}'"
                ))
                .await;
                assert_eq!(
                    db.scalar(&format!("SELECT COUNT(*) FROM pg_stat_activity WHERE usename = '{role}'")).await,
                    0,
                    "the broker still holds a connection"
                );
            }
            None => vault.close().await,
        }
    }

    async fn up(&self, db: &TestDb) {
        if let Some((role, _)) = &self.role {
            db.execute(&format!("ALTER ROLE {role} LOGIN")).await;
        }
    }

    async fn cleanup(self, db: &TestDb) {
        if let Some((role, _)) = &self.role {
            db.execute(&format!("REASSIGN OWNED BY {role} TO CURRENT_USER")).await;
            db.execute(&format!("DROP OWNED BY {role}")).await;
            db.execute(&format!("DROP ROLE {role}")).await;
        }
    }
}

/// `POST /v1/sign` for a SigV4 credential: the status and the answer.
async fn sign(b: &Broker) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "credential": "aws",
        "request": {"method": "GET", "url": "https://bucket.s3.amazonaws.com/key", "headers": [],
                    "body_base64": ""},
    });
    let auth = b.bearer();
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    send("POST", &format!("{}/v1/sign", b.base), &headers, Body::from(body.to_string())).await
}

/// Catalogue case 33 (credential store unreachable → 401 or 503, never
/// forwarded without the credential). A running broker whose store goes
/// away before the agent's first call: the proxy and `/v1/sign` answer 503
/// `vault_unavailable`, the upstream gets nothing and no signature leaves.
/// On PostgreSQL the store then comes back, and so do the calls; taken away
/// again under a warm broker, a call is either refused with 503 or, within
/// the uses the audit trail committed ahead (the lease), sent with the
/// credential — never without it.
async fn store_unreachable_under_a_running_server(db: &TestDb) {
    let outage = Outage::new(db).await;
    let vault = Arc::new(Vault::open(outage.options(db), crate::db::runtime()).await.unwrap());
    let token = agent(&vault).await;
    let up = Upstream::start().await;
    let key = key_and_aws(&vault, "outage", "AKIDLATCHKEYOUTAGE", "*.amazonaws.com").await;
    route(&vault, "up", &format!("http://127.0.0.1:{}", up.port), "key").await;
    let b =
        broker(&vault, token, ServerConfig { address_policy: loopback_only(), ..ServerConfig::default() }, None).await;
    let auth = b.bearer();
    let proxy = format!("{}/proxy/up/v1/x", b.base);
    let with_key = format!("Bearer {key}");
    let sent_with_key = || up.seen.lock().unwrap().iter().all(|s| s.header("authorization") == Some(with_key.as_str()));

    outage.down(db, &vault).await;
    for _ in 0..3 {
        let (status, answer) = send("GET", &proxy, &[("authorization", &auth)], Body::empty()).await;
        assert_eq!((status, code(&answer)), (503, "vault_unavailable"), "proxy while the store is down: {answer}");
        assert!(!answer.to_string().contains(&key), "{answer}");
        let (status, answer) = sign(&b).await;
        assert_eq!((status, code(&answer)), (503, "vault_unavailable"), "/v1/sign while the store is down: {answer}");
        assert!(!answer.to_string().contains("Signature="), "a signature left while the store was down: {answer}");
    }
    assert_eq!(up.hits(), 0, "a request reached the upstream while the store was down");

    if outage.role.is_some() {
        outage.up(db).await;
        let (status, answer) = send("GET", &proxy, &[("authorization", &auth)], Body::empty()).await;
        assert_eq!(status, 200, "the store is back: {answer}");
        let (status, answer) = sign(&b).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(up.hits(), 1);
        assert!(sent_with_key());

        // Down again, under a broker whose caches are warm.
        outage.down(db, &vault).await;
        for _ in 0..3 {
            let hits = up.hits();
            let (status, answer) = send("GET", &proxy, &[("authorization", &auth)], Body::empty()).await;
            match (status, code(&answer)) {
                (200, _) => assert_eq!(up.hits(), hits + 1),
                (503, "vault_unavailable" | "audit_unavailable") => assert_eq!(up.hits(), hits, "{answer}"),
                _ => panic!("proxy while the store is down again: {status} {answer}"),
            }
            let (status, answer) = sign(&b).await;
            match (status, code(&answer)) {
                (200, _) => {}
                (503, "vault_unavailable" | "audit_unavailable") => {
                    assert!(!answer.to_string().contains("Signature="), "{answer}")
                }
                _ => panic!("/v1/sign while the store is down again: {status} {answer}"),
            }
        }
        assert!(sent_with_key(), "a request went out without the credential");
        outage.up(db).await;
        let (status, answer) = send("GET", &proxy, &[("authorization", &auth)], Body::empty()).await;
        assert_eq!(status, 200, "the store is back again: {answer}");
    }
    assert!(sent_with_key(), "a request went out without the credential");
    b.stop();
    vault.close().await;
    outage.cleanup(db).await;
}

vault_tests! {
    credential_store_unreachable_under_a_running_server => store_unreachable_under_a_running_server;
}

// ---------------------------------------------------------------------------
// 36. A body larger than the signing buffer
// ---------------------------------------------------------------------------

/// Catalogue case 36 (body larger than the signing buffer → 413, never an
/// unsigned fall-back), through the proxy: for every built-in scheme that
/// signs the body (SigV4, ACS3, TC3), a body over `max_body` — with a
/// Content-Length or chunked — is answered 413 `payload_too_large` and
/// nothing reaches the upstream; a body within the limit is signed and sent,
/// and a scheme that does not read the body streams the large one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_signing_buffer_is_refused_through_the_proxy() {
    const MAX: usize = 4096;
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let vault = Arc::new(db.open().await);
    let token = agent(&vault).await;
    let up = Upstream::start().await;
    let upstream = format!("http://127.0.0.1:{}", up.port);
    let (aws, acs, tc3) = (canary("big-aws"), canary("big-acs"), canary("big-tc3"));
    let here = ["127.0.0.1"];
    credential(
        &vault,
        "aws",
        "aws-sigv4",
        &[("region", "us-east-1"), ("service", "s3")],
        &[("access_key_id", "AKIDLATCHKEYBIG"), ("secret_access_key", &aws)],
        &here,
    )
    .await;
    credential(&vault, "acs", "aliyun-acs3", &[], &[("access_key_id", "LTAIbig"), ("access_key_secret", &acs)], &here)
        .await;
    credential(
        &vault,
        "tc3",
        "tencent-tc3",
        &[("service", "cvm")],
        &[("secret_id", "AKIDtc3big"), ("secret_key", &tc3)],
        &here,
    )
    .await;
    credential(&vault, "key", "api-key", &[("prefix", "Bearer ")], &[("key", &canary("big-key"))], &here).await;
    for name in ["aws", "acs", "tc3", "key"] {
        route(&vault, name, &upstream, name).await;
    }
    let config = ServerConfig { address_policy: loopback_only(), max_body: MAX, ..ServerConfig::default() };
    let b = broker(&vault, token, config, None).await;
    let auth = b.bearer();
    let big = vec![b'x'; MAX + 1];
    let headers = [("authorization", auth.as_str()), ("content-type", "application/octet-stream")];

    for name in ["aws", "acs", "tc3"] {
        let url = format!("{}/proxy/{name}/upload", b.base);
        let bodies: [(&str, Body); 2] = [
            ("with a Content-Length", Body::from(big.clone())),
            ("chunked", Body::new(Chunked(big.chunks(1000).map(Bytes::copy_from_slice).collect::<VecDeque<Bytes>>()))),
        ];
        for (how, body) in bodies {
            let (status, answer) = send("POST", &url, &headers, body).await;
            assert_eq!((status, code(&answer)), (413, "payload_too_large"), "{name}, {how}: {answer}");
            assert_eq!(up.hits(), 0, "{name}, {how}: an over-limit body reached the upstream");
        }
    }
    for (i, name) in ["aws", "acs", "tc3"].into_iter().enumerate() {
        let url = format!("{}/proxy/{name}/upload", b.base);
        let (status, answer) = send("POST", &url, &headers, Body::from(vec![b'x'; MAX])).await;
        assert_eq!(status, 200, "{name}: a body at the limit is signed and sent: {answer}");
        assert_eq!((up.hits(), up.last().body_len), (i + 1, MAX), "{name}");
    }
    let (status, answer) = send("POST", &format!("{}/proxy/key/upload", b.base), &headers, Body::from(big)).await;
    assert_eq!(status, 200, "a scheme that does not sign the body streams it: {answer}");
    assert_eq!(up.last().body_len, MAX + 1);
    b.stop();
    vault.close().await;
    db.cleanup().await;
}
