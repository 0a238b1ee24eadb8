//! The HTTP workers: one thread per core, each running its own
//! single-threaded tokio runtime, as nginx's worker processes and
//! actix-web's workers do. The listener's accept loop runs on the caller's
//! runtime and hands each accepted connection to the next worker in turn;
//! from then on the connection, every request on it, the upstream
//! connection its calls go out on (each worker has its own client, see
//! [`super::net::Clients`]) and the response streaming back all run on that
//! one thread.
//!
//! Why not tokio's multi-threaded scheduler: under proxy load its work
//! stealing moves a request's tasks between threads, and the downstream
//! connection, the upstream connection and the handler wake each other
//! across cores. Measured on the native reference proxy (`cargo xtask
//! reference-proxy`, 16 connections, 2 cores): the same code served about
//! 1.3× the requests per second at three quarters of the CPU per request
//! on per-thread runtimes (BENCHMARKS.md). What a worker cannot do is move
//! a busy connection to an idle core; connections are long-lived and many,
//! so round-robin hand-out keeps the workers evenly loaded, and nothing on
//! a worker blocks: plugins run on the call pool (or on the inline lane,
//! bounded to a millisecond), the vault's SQLite work on sqlx's threads.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{mpsc, oneshot};

/// What a worker serves each connection with ([`super::Front`] in the broker).
pub(super) trait Service:
    hyper::service::Service<
        axum::http::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Service for S where
    S: hyper::service::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the HTTP worker the caller runs on; `None` off the workers.
pub(crate) fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// How many workers `serve` starts when the configuration leaves it open:
/// one per core the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serve `app` on `listener` with `workers` worker threads until `shutdown`
/// resolves; then stop accepting, let every worker finish its in-flight
/// calls (idle keep-alive connections are closed), and return. With `tls`,
/// each connection's handshake runs on its worker before HTTP.
pub(super) async fn serve<S: Service>(
    listener: tokio::net::TcpListener,
    app: S,
    tls: Option<tokio_rustls::TlsAcceptor>,
    workers: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut queues = Vec::new();
    let mut finished = Vec::new();
    for index in 0..workers.max(1) {
        let (queue, incoming) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let (done, is_done) = oneshot::channel::<()>();
        let (app, tls) = (app.clone(), tls.clone());
        std::thread::Builder::new().name(format!("latchkey-http-{index}")).spawn(move || {
            WORKER.with(|w| w.set(Some(index)));
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(worker(incoming, app, tls)),
                Err(e) => tracing::error!(error = %e, worker = index, "cannot start an HTTP worker's runtime"),
            }
            // The runtime is dropped here, with whatever background task a
            // call spawned on it (a JWKS refresh): the broker is stopping.
            let _ = done.send(());
        })?;
        queues.push(queue);
        finished.push(is_done);
    }
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some to close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // No Nagle: a small answer must not wait for the client's delayed
        // ACK (~40 ms stalls on sequential clients).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        // Off this runtime's reactor, onto the worker's (still non-blocking).
        let Ok(tcp) = tcp.into_std() else { continue };
        let mut tcp = Some(tcp);
        // A worker whose runtime could not start has dropped its queue: the
        // next one takes the connection.
        for _ in 0..queues.len() {
            let queue = &queues[next % queues.len()];
            next = next.wrapping_add(1);
            match queue.send(tcp.take().expect("the connection is still here")) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => tcp = Some(back),
            }
        }
        if tcp.is_some() {
            return Err(std::io::Error::other("no HTTP worker is running"));
        }
    }
    drop(listener);
    // Closing the queues tells each worker to stop and finish what it has.
    drop(queues);
    for done in finished {
        let _ = done.await;
    }
    Ok(())
}

/// One worker: serve each connection handed to it, until its queue closes;
/// then finish the in-flight calls.
async fn worker<S: Service>(
    mut incoming: mpsc::UnboundedReceiver<std::net::TcpStream>,
    app: S,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    while let Some(tcp) = incoming.recv().await {
        let tcp = match tokio::net::TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "could not take over an accepted connection");
                continue;
            }
        };
        let (app, builder, watcher, tls) = (app.clone(), builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), app);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(acceptor) => {
                    let peer = tcp.peer_addr().ok();
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(?peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), app);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use std::io::{Read as _, Write as _};

    /// Send two requests on one connection; the worker index each was answered on.
    fn two_on_one_connection(addr: std::net::SocketAddr) -> Vec<String> {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            s.write_all(b"GET /which HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            seen.push(answer.rsplit("\r\n\r\n").next().unwrap_or_default().to_string());
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_dealt_out_in_turn_and_stay_on_their_worker() {
        let app = Router::new().route(
            "/which",
            axum::routing::get(|| async {
                let name = std::thread::current().name().unwrap_or_default().to_string();
                format!("{}@{name}", current().map_or(-1, |i| i as i64))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = hyper_util::service::TowerToHyperService::new(app);
        let served = tokio::spawn(serve(listener, app, None, 3, async move {
            let _ = stopped.await;
        }));
        let mut workers = Vec::new();
        for _ in 0..6 {
            let seen = tokio::task::spawn_blocking(move || two_on_one_connection(addr)).await.unwrap();
            // Both requests of a connection are served by one worker, on its own thread.
            assert_eq!(seen[0], seen[1], "a connection moved between workers");
            let (index, thread) = seen[0].split_once('@').unwrap();
            assert_eq!(thread, format!("latchkey-http-{index}"));
            workers.push(index.parse::<usize>().unwrap());
        }
        // Six connections one after another over three workers: two each, in turn.
        assert_eq!(workers, [0, 1, 2, 0, 1, 2]);
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
        // Stopped: nothing accepts any more.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
