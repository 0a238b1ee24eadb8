//! `latchkey serve`: opens the vault (creating a development key for a new
//! embedded vault when none is configured), starts its change feed, and
//! serves the broker until SIGINT or SIGTERM, finishing in-flight calls.

use latchkey::error::ErrorCode;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use latchkey::server::{self, ServerConfig, net};
use latchkey::vault::{KeyOrigin, Vault};

use crate::Failure;
use crate::cli::config::FileConfig;
use latchkey::vault::{AuditOptions, AuditSink};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080, or `listen` in the config file].
    #[arg(long, env = "LATCHKEY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Path prefix of the sidecar proxy: routes are served at /<prefix>/<route>/….
    #[arg(long, default_value = "proxy", value_name = "PREFIX")]
    pub proxy_prefix: String,
    /// Let upstreams resolve into this network although it is private or loopback (repeatable), e.g. 10.1.0.0/16.
    #[arg(long = "allow-upstream-network", value_name = "CIDR")]
    pub allow_networks: Vec<String>,
    /// A PEM file of extra CA certificates to trust for upstreams, besides the system's (repeatable).
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,
    /// Largest body /v1/sign accepts, and the proxy buffers for schemes that sign the body, in bytes.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_body: usize,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept `Authorization: Basic` agent credentials on a plain-HTTP listener (they are readable on the wire).
    #[arg(long)]
    pub allow_basic_over_http: bool,
    /// HTTP worker threads, each serving its share of the connections on its own runtime [default: one per core].
    #[arg(long, env = "LATCHKEY_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// The admin token's name in the audit trail (`admin:NAME`); the token itself is never recorded.
    #[arg(long, env = "LATCHKEY_ADMIN_TOKEN_NAME", default_value = "admin", value_name = "NAME")]
    pub admin_token_name: String,
    /// Where each use's full event goes: `log` (a tracing event), `stdout` (JSON lines), `file:PATH` (JSON lines,
    /// rotated by size) or `none` [default: log, or `audit_sink` in the config file]. The store keeps counts per minute.
    #[arg(long, env = "LATCHKEY_AUDIT_SINK", value_name = "SINK")]
    pub audit_sink: Option<String>,
    /// Rotate the file sink before it grows past this many bytes [default: 104857600].
    #[arg(long, value_name = "BYTES")]
    pub audit_sink_max_bytes: Option<u64>,
    /// Rotated files of the file sink kept (PATH.1 … PATH.N) [default: 5].
    #[arg(long, value_name = "N")]
    pub audit_sink_keep: Option<u32>,
    /// Prune use counts older than this, e.g. 30d; `0` or `forever` keeps them all [default: 90d, or
    /// `audit_retention` in the config file].
    #[arg(long, env = "LATCHKEY_AUDIT_RETENTION", value_name = "DURATION")]
    pub audit_retention: Option<String>,
}

/// The default `--audit-retention`.
pub const DEFAULT_AUDIT_RETENTION: &str = "90d";

/// The audit settings of `serve`: flags, then the config file, then defaults.
pub fn audit_options(args: &ServeArgs, file: &FileConfig) -> Result<AuditOptions, Failure> {
    let invalid = |m: String| Failure::new(ErrorCode::InvalidArgument, m);
    let max_bytes = args
        .audit_sink_max_bytes
        .or(file.audit_sink_max_bytes)
        .unwrap_or(latchkey::vault::audit::sink::DEFAULT_MAX_BYTES);
    let keep = args.audit_sink_keep.or(file.audit_sink_keep).unwrap_or(latchkey::vault::audit::sink::DEFAULT_KEEP);
    let sink = match args.audit_sink.as_deref().or(file.audit_sink.as_deref()) {
        Some(s) => AuditSink::parse(s, max_bytes, keep).map_err(|e| invalid(format!("--audit-sink: {e}")))?,
        None => AuditSink::Log,
    };
    let retention =
        args.audit_retention.as_deref().or(file.audit_retention.as_deref()).unwrap_or(DEFAULT_AUDIT_RETENTION);
    Ok(AuditOptions { sink, retention: parse_retention(retention).map_err(invalid)? })
}

/// `30d`, `12h`…; `0` or `forever` keeps everything (`None`).
pub fn parse_retention(s: &str) -> Result<Option<std::time::Duration>, String> {
    if s == "0" || s == "forever" {
        return Ok(None);
    }
    match crate::cli::agents::parse_duration(s).map(|d| d.whole_seconds()) {
        Some(secs) if secs > 0 => Ok(Some(std::time::Duration::from_secs(secs.unsigned_abs()))),
        _ => Err(format!("--audit-retention `{s}`: give a duration like 30d or 12h, or `forever`")),
    }
}

pub async fn serve(
    vault: Arc<Vault>,
    runtime: Arc<latchkey::Runtime>,
    args: ServeArgs,
    listen: &str,
) -> Result<(), Failure> {
    let mut allow = Vec::new();
    for n in &args.allow_networks {
        allow.push(n.parse().map_err(|_| {
            Failure::new(
                ErrorCode::InvalidArgument,
                format!("--allow-upstream-network `{n}` is not a CIDR like 10.0.0.0/8"),
            )
        })?);
    }
    // The proxy's paths must not hide the broker's own.
    let prefix = args.proxy_prefix.trim_matches('/');
    if prefix.is_empty() || ["ui", "v1", "healthz", "readyz", "metrics"].contains(&prefix) || prefix.contains('/') {
        return Err(Failure::new(
            ErrorCode::InvalidArgument,
            format!(
                "--proxy-prefix `{prefix}`: give one path segment that is not `ui`, `v1`, `healthz`, `readyz` or \
                 `metrics` (the broker's own paths)"
            ),
        ));
    }
    let config = ServerConfig {
        proxy_prefix: prefix.to_string(),
        max_body: args.max_body,
        address_policy: net::AddressPolicy { allow },
        tls: net::TlsOptions { extra_ca_files: args.ca_files.clone(), no_system_roots: false },
        allow_basic_over_http: args.allow_basic_over_http,
        admin_token_name: latchkey::plugin::sanitize_for_log(&args.admin_token_name, 64),
        workers: args.workers.map_or_else(server::workers::default_count, usize::from),
        ..ServerConfig::default()
    };
    let config = match std::env::var("LATCHKEY_ADMIN_TOKEN") {
        Ok(token) if token.trim().len() >= 16 => config.with_admin_token(token.trim()),
        Ok(_) => {
            return Err(Failure::new(ErrorCode::InvalidConfig, "LATCHKEY_ADMIN_TOKEN must be at least 16 characters"));
        }
        Err(_) => config,
    };
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(server::tls_acceptor(cert, key).map_err(|e| Failure::new(ErrorCode::InvalidConfig, e.to_string()))?)
        }
        _ => None,
    };
    // Compile (or load from the cache) every scheme before the first call,
    // so no call waits for a compiler.
    let rt = runtime.clone();
    tokio::task::spawn_blocking(move || {
        for name in rt.scheme_names() {
            rt.get(&name)?;
        }
        Ok::<_, latchkey::PluginError>(())
    })
    .await
    .map_err(|e| Failure::new(ErrorCode::PluginLoadFailed, e.to_string()))??;
    let state = server::state(vault.clone(), runtime, config)
        .map_err(|e| Failure::new(ErrorCode::InvalidConfig, e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::new(ErrorCode::ListenFailed, format!("cannot listen on {listen}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Failure::new(ErrorCode::ListenFailed, e.to_string()))?;
    match vault.key_origin() {
        KeyOrigin::DevKeyCreated(path) | KeyOrigin::DevKey(path) => eprintln!(
            "latchkey: WARNING: the vault is encrypted with a DEVELOPMENT master key ({}). Set LATCHKEY_MASTER_KEY \
             or LATCHKEY_KEYRING_FILE for anything but a trial.",
            path.display()
        ),
        KeyOrigin::Configured => {}
    }
    eprintln!(
        "latchkey: serving on {}://{local} (vault: {} at {}; proxy at /{}/<route>/…)",
        if acceptor.is_some() { "https" } else { "http" },
        vault.location().backend(),
        vault.location().display(),
        args.proxy_prefix.trim_matches('/')
    );
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    if state.config.admin_token_sha256.is_some() {
        eprintln!("latchkey: console at {scheme}://{local}/ui (sign in with the admin token)");
    } else {
        eprintln!("latchkey: admin API and console off: set LATCHKEY_ADMIN_TOKEN to enable them");
    }
    tracing::info!(%local, backend = vault.location().backend(), "latchkey serving");
    let served = match acceptor {
        Some(acceptor) => server::serve_tls(listener, acceptor, state, shutdown_signal()).await,
        None => server::serve(listener, state, shutdown_signal()).await,
    };
    served.map_err(|e| Failure::new(ErrorCode::ServeFailed, e.to_string()))?;
    eprintln!("latchkey: shut down after finishing in-flight calls");
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
