//! `xtask reference-proxy LISTEN UPSTREAM AUTHORIZATION`: the least a proxy
//! built on the broker's own HTTP stack can do, as a reference for
//! `bench-http`. The same crates and settings as the broker's proxy path —
//! tokio's multi-threaded runtime, hyper's HTTP/1 server, hyper-util's pooled
//! client, mimalloc, `TCP_NODELAY` on both sides — and nothing else: no
//! agent, route, credential, plugin, audit or metrics; it sets one fixed
//! `Authorization` header and forwards. The broker's distance from nginx
//! then splits into what this stack costs (this reference ÷ nginx) and what
//! the broker does on top of it (broker ÷ this reference).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub fn main(args: &[String]) -> Result<()> {
    let [listen, upstream, authorization] = args else {
        anyhow::bail!("usage: xtask reference-proxy LISTEN UPSTREAM AUTHORIZATION");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN")?;
    let base = format!("http://{upstream}");
    let authorization = HeaderValue::from_str(authorization).context("AUTHORIZATION")?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(listen, base, authorization))
}

async fn serve(listen: SocketAddr, base: String, authorization: HeaderValue) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, base, authorization) = (client.clone(), base.clone(), authorization.clone());
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let uri = format!("{base}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
                let uri: Result<Uri, _> = uri.parse();
                let client = client.clone();
                let headers = req.headers_mut();
                headers.remove(HOST);
                headers.insert(AUTHORIZATION, authorization.clone());
                async move {
                    *req.uri_mut() = uri?;
                    client.request(req).await.map_err(anyhow::Error::from)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
