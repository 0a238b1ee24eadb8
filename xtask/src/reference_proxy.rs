//! `xtask reference-proxy LISTEN UPSTREAM AUTHORIZATION`: the least a proxy
//! built on the broker's own HTTP stack can do, as a reference for
//! `bench-http`. The same crates and settings as the broker's proxy path —
//! one accept loop handing connections in turn to one worker thread per
//! core, each a single-threaded tokio runtime with its own hyper-util
//! pooled client, hyper's HTTP/1 server, mimalloc, `TCP_NODELAY` on both
//! sides — and nothing else: no agent, route, credential, plugin, audit or
//! metrics; it sets one fixed `Authorization` header and forwards. The
//! broker's distance from nginx then splits into what this stack costs (this
//! reference ÷ nginx) and what the broker does on top of it (broker ÷ this
//! reference).

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
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut queues = Vec::new();
    for _ in 0..workers {
        let (queue, incoming) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let (base, authorization) = (base.clone(), authorization.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::spawn(move || runtime.block_on(worker(incoming, base, authorization)));
        queues.push(queue);
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        for next in 0usize.. {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            queues[next % queues.len()].send(stream.into_std()?).context("a worker stopped")?;
        }
        Ok(())
    })
}

async fn worker(
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    base: String,
    authorization: HeaderValue,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    while let Some(stream) = incoming.recv().await {
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { continue };
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
