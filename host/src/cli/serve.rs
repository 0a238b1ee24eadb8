//! `latchkey serve`: opens the vault (creating a development key for a new
//! embedded vault when none is configured), starts its change feed, and
//! serves the broker's HTTP surfaces until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use latchkey::vault::{KeyOrigin, Vault};

use crate::Failure;

struct App {
    vault: Arc<Vault>,
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    match app.vault.ping().await {
        Ok(()) => {
            (StatusCode::OK, Json(serde_json::json!({"status": "ready", "vault": app.vault.location().backend()})))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}})),
        ),
    }
}

pub async fn serve(vault: Arc<Vault>, listen: &str) -> Result<(), Failure> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Failure::new("invalid_argument", format!("--listen `{listen}` is not an address like 127.0.0.1:8080"))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new("listen_failed", format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Failure::new("listen_failed", e.to_string()))?;
    match vault.key_origin() {
        KeyOrigin::DevKeyCreated(path) | KeyOrigin::DevKey(path) => eprintln!(
            "latchkey: WARNING: the vault is encrypted with a DEVELOPMENT master key ({}). Set LATCHKEY_MASTER_KEY \
             or LATCHKEY_KEYRING_FILE for anything but a trial.",
            path.display()
        ),
        KeyOrigin::Configured => {}
    }
    eprintln!(
        "latchkey: serving on http://{local} (vault: {} at {})",
        vault.location().backend(),
        vault.location().display()
    );
    tracing::info!(%local, backend = vault.location().backend(), "latchkey serving");
    let app = Arc::new(App { vault: vault.clone() });
    let router = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Failure::new("serve_failed", e.to_string()))?;
    eprintln!("latchkey: shutting down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
