//! The `latchkey` command line.

use latchkey::error::ErrorCode;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use latchkey::plugin::{CallCredential, PluginSource, Runtime, RuntimeConfig};
use latchkey::secret::Secret;
use latchkey::sign::{self, SignInput};
use latchkey::vault::model::Overrides;
use latchkey::vault::{Vault, parse_org};

/// `println!` for command output, through [`cli::output::line`]: a closed
/// pipe ends the command quietly instead of a panic.
macro_rules! out {
    () => {
        $crate::cli::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}

mod cli;

#[derive(Parser)]
#[command(name = "latchkey", version, about = "A credential broker for AI agents")]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    vault: cli::config::VaultArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct RuntimeArgs {
    /// Folder of extra plugins (*.wasm); a plugin there overrides the built-in scheme of the same name.
    #[arg(long, global = true, env = "LATCHKEY_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// Grant a scheme from the plugin folder access to raw secret values (repeatable).
    #[arg(long = "grant-secrets", global = true, value_name = "SCHEME")]
    grant_secrets: Vec<String>,
    /// Where compiled plugins are cached [default: $XDG_CACHE_HOME/latchkey].
    #[arg(long, global = true, env = "LATCHKEY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Time budget of one plugin call, in milliseconds.
    #[arg(long, global = true, default_value_t = 100, value_name = "MS")]
    plugin_timeout_ms: u64,
    /// Threads that run plugin calls (never the server's workers) [default: twice the cores, at least 4].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    plugin_threads: Option<u16>,
    /// Calls of one plugin that one organisation may run at once, so a slow or looping plugin spends only its
    /// own share [default: the number of cores; all organisations together: half the plugin threads].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    plugin_concurrency: Option<u16>,
    /// Plugin calls of one organisation that may run at once [default: three quarters of the plugin threads].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    org_plugin_concurrency: Option<u16>,
    /// Plugin calls that may run at once on the server's own threads, with a 1 ms budget, before a pool thread
    /// takes over; 0 sends every call to the plugin threads [default: the number of cores].
    #[arg(long, global = true, value_name = "N")]
    plugin_inline: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: open the vault (SQLite in the data folder by default) and serve HTTP.
    Serve(cli::serve::ServeArgs),
    /// Sign one request and print the outgoing request as JSON: offline with --scheme and --secret,
    /// or with a vault credential (--credential).
    Sign(SignArgs),
    /// Credentials in the vault.
    #[command(subcommand)]
    Credential(cli::vault::CredentialCmd),
    /// The vault itself: status, master key rotation.
    #[command(subcommand)]
    Vault(cli::vault::VaultCmd),
    /// The audit trail of changes and uses.
    Audit(cli::vault::AuditArgs),
    /// Registration tokens that agents redeem for an agent token.
    #[command(subcommand)]
    Token(cli::agents::TokenCmd),
    /// Agents: callers of the broker.
    #[command(subcommand)]
    Agent(cli::agents::AgentCmd),
    /// Sidecar proxy routes.
    #[command(subcommand)]
    Route(cli::agents::RouteCmd),
    /// JWT identity providers: issuers whose tokens identify agents.
    #[command(subcommand, name = "idp", alias = "identity-provider")]
    Idp(cli::agents::IdpCmd),
    /// Built-in and installed plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
}

#[derive(Args)]
struct SignArgs {
    /// The scheme, e.g. aws-sigv4 (see `latchkey plugin list`); taken from the vault with --credential.
    #[arg(long, required_unless_present = "credential", conflicts_with = "credential")]
    scheme: Option<String>,
    /// Use this vault credential (resolved through overrides, the vault, then the environment).
    /// With it, --secret values are per-call overrides.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,
    /// The credential's organisation [default: default].
    #[arg(long, env = "LATCHKEY_ORG", requires = "credential")]
    org: Option<String>,
    /// A config field, `name=value` (repeatable).
    #[arg(long = "config", value_name = "K=V")]
    config: Vec<String>,
    /// A secret field: `name=value`, `name=@file`, or `name=@-` for standard input (repeatable).
    #[arg(long = "secret", value_name = "K=V")]
    secrets: Vec<String>,
    /// Signing time, RFC 3339 (default: now).
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// The HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The absolute request URL.
    #[arg(long)]
    url: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A file holding the request body.
    #[arg(long, value_name = "PATH")]
    body_file: Option<PathBuf>,
    /// Also print on stderr what the scheme signed (canonical request, string to sign; never the key).
    #[arg(long)]
    explain: bool,
}

#[derive(Subcommand)]
enum PluginCmd {
    /// List the schemes this binary can use.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what a plugin file declares: scheme, fields, imports, digest.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A failure for the command line: one line, with a stable code.
pub(crate) struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }
}

impl From<latchkey::PluginError> for Failure {
    fn from(e: latchkey::PluginError) -> Failure {
        Failure::new(e.code(), e.to_string())
    }
}

impl From<sign::SignError> for Failure {
    fn from(e: sign::SignError) -> Failure {
        Failure::new(e.code(), e.to_string())
    }
}

/// mimalloc for the whole process (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let filter = || tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG").unwrap_or_else(|_| "warn".into());
    // LATCHKEY_LOG_FORMAT=json: one JSON object per line, with the request
    // span (its `request_id`) on every event of a request.
    if std::env::var("LATCHKEY_LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let msg = latchkey::plugin::sanitize_for_log(&f.message, 2000);
            eprintln!("latchkey: error[{}]: {msg}", f.code);
            ExitCode::FAILURE
        }
    }
}

fn runtime(args: &RuntimeArgs) -> Result<Runtime, Failure> {
    let mut config = RuntimeConfig {
        plugin_dir: args.plugin_dir.clone(),
        grant_secrets: args.grant_secrets.clone(),
        call_timeout: std::time::Duration::from_millis(args.plugin_timeout_ms),
        ..RuntimeConfig::default()
    };
    if let Some(dir) = &args.cache_dir {
        config.cache_dir = Some(dir.clone());
    }
    if let Some(n) = args.plugin_threads {
        config.pool.threads = n.into();
        config.pool.per_plugin_total = (usize::from(n) / 2).max(1);
        config.pool.per_org = (usize::from(n) * 3 / 4).max(1);
    }
    if let Some(n) = args.plugin_concurrency {
        config.pool.per_plugin = n.into();
    }
    if let Some(n) = args.org_plugin_concurrency {
        config.pool.per_org = n.into();
    }
    if let Some(n) = args.plugin_inline {
        config.pool.inline = n.into();
    }
    Ok(Runtime::new(config)?)
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Sign(args) if args.credential.is_none() => cmd_sign(&cli.runtime, args),
        Command::Plugin(PluginCmd::List { json }) => cmd_list(&cli.runtime, json),
        Command::Plugin(PluginCmd::Inspect { file, json }) => cmd_inspect(&cli.runtime, &file, json),
        command => with_vault(&cli.runtime, &cli.vault, command),
    }
}

/// Run a command that needs the vault on a tokio runtime, and close the
/// vault (storing queued audit events) whatever the command's outcome.
fn with_vault(rt_args: &RuntimeArgs, vault_args: &cli::config::VaultArgs, command: Command) -> Result<(), Failure> {
    let resolved = vault_args.resolve()?;
    let mut rt_args = rt_args.clone();
    if rt_args.plugin_dir.is_none() {
        rt_args.plugin_dir = resolved.file.plugin_dir.clone();
    }
    let runtime = Arc::new(runtime(&rt_args)?);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(ErrorCode::Io, format!("cannot start the async runtime: {e}")))?;
    tokio.block_on(async move {
        let mut options = resolved.options;
        options.watch = matches!(command, Command::Serve(_));
        // Only the broker prunes and writes a sink: a one-shot command keeps
        // the defaults (the log; no pruning).
        if let Command::Serve(args) = &command {
            options.audit = cli::serve::audit_options(args, &resolved.file)?;
        }
        let vault = Arc::new(Vault::open(options, runtime.clone()).await?);
        let result = match command {
            Command::Serve(args) => {
                let listen = args.listen.clone().or(resolved.file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
                cli::serve::serve(vault.clone(), runtime.clone(), args, &listen).await
            }
            Command::Token(cmd) => cli::agents::token(&vault, cmd).await,
            Command::Agent(cmd) => cli::agents::agent(&vault, cmd).await,
            Command::Route(cmd) => cli::agents::route(&vault, cmd).await,
            Command::Idp(cmd) => cli::agents::idp(&vault, cmd).await,
            Command::Sign(args) => cmd_sign_vault(&vault, &runtime, args).await,
            Command::Credential(cmd) => cli::vault::credential(&vault, &runtime, cmd).await,
            Command::Vault(cmd) => cli::vault::vault_cmd(&vault, cmd).await,
            Command::Audit(args) => cli::vault::audit(&vault, args).await,
            Command::Plugin(_) => Ok(()),
        };
        vault.close().await;
        result
    })
}

pub(crate) fn split_kv<'a>(s: &'a str, what: &str) -> Result<(&'a str, &'a str), Failure> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(Failure::new(
            ErrorCode::InvalidArgument,
            format!("{what} `{}` is not of the form name=value", redact_value(s)),
        )),
    }
}

/// Parse `--secret` arguments; a field given twice is an error.
pub(crate) fn read_secrets(items: &[String]) -> Result<BTreeMap<String, Secret>, Failure> {
    let mut secrets = BTreeMap::new();
    for s in items {
        let (k, v) = split_kv(s, "--secret")?;
        if secrets.insert(k.to_string(), read_secret(k, v)?).is_some() {
            return Err(Failure::new(ErrorCode::InvalidArgument, format!("secret `{k}` given twice")));
        }
    }
    Ok(secrets)
}

/// Never echo what may be a secret value: keep only the part before `=`.
fn redact_value(s: &str) -> String {
    match s.split_once('=') {
        Some((k, _)) => format!("{k}=…"),
        None if s.len() > 12 => format!("{}…", &s[..s.char_indices().nth(4).map(|(i, _)| i).unwrap_or(0)]),
        None => "…".into(),
    }
}

/// `@path` reads a file and `@-` standard input; one trailing newline (as
/// editors and `echo` leave) is removed, anything else is kept.
fn read_secret(field: &str, v: &str) -> Result<Secret, Failure> {
    let Some(src) = v.strip_prefix('@') else { return Ok(Secret::new(v)) };
    let mut text = String::new();
    let res = if src == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(src).and_then(|mut f| f.read_to_string(&mut text)).map(|_| ())
    };
    res.map_err(|e| Failure::new(ErrorCode::InvalidArgument, format!("cannot read secret `{field}` from {src}: {e}")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(Secret::new(text))
}

/// The parts of `latchkey sign` shared by the offline and the vault forms.
struct SignParts {
    config: Vec<(String, String)>,
    secrets: BTreeMap<String, Secret>,
    input: SignInput,
}

fn sign_parts(args: &SignArgs) -> Result<SignParts, Failure> {
    let mut config = Vec::new();
    for c in &args.config {
        let (k, v) = split_kv(c, "--config")?;
        config.push((k.to_string(), v.to_string()));
    }
    let secrets = read_secrets(&args.secrets)?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                format!("header {:?} is not of the form `Name: value`", latchkey::plugin::sanitize_for_log(h, 80)),
            ));
        };
        headers.push((name.to_string(), value.trim_matches([' ', '\t']).to_string()));
    }
    let at = match &args.at {
        None => None,
        Some(t) => {
            Some(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).map_err(|e| {
                Failure::new(ErrorCode::InvalidArgument, format!("--at `{t}` is not an RFC 3339 time: {e}"))
            })?)
        }
    };
    let body = match &args.body_file {
        None => Vec::new(),
        Some(p) => std::fs::read(p).map_err(|e| {
            Failure::new(ErrorCode::InvalidArgument, format!("cannot read body file {}: {e}", p.display()))
        })?,
    };
    let input = SignInput {
        method: args.method.clone(),
        url: args.url.clone(),
        headers,
        body,
        at,
        body_digest: sign::BodyDigest::Compute,
        origin: None,
    };
    Ok(SignParts { config, secrets, input })
}

fn cmd_sign(rt_args: &RuntimeArgs, args: SignArgs) -> Result<(), Failure> {
    let SignParts { config, secrets, input } = sign_parts(&args)?;
    let rt = runtime(rt_args)?;
    let plugin = rt.get(args.scheme.as_deref().unwrap_or_default())?;
    // The hygiene a stored credential gets (a trailing line break from a
    // file or paste removed, a `Bearer ` prefix on a raw key refused, …),
    // so a key that signs offline signs the same from the vault.
    let mut raw = latchkey::vault::model::RawCredential::new("offline", plugin.info.name.clone());
    raw.config = config;
    raw.secrets = secrets;
    let checked = latchkey::vault::model::validate_new(&rt, raw).map_err(|e| {
        // Offline signing has no other layer to fall back on: a missing
        // field is the call's missing key.
        let code = match e.code() {
            ErrorCode::MissingSecretField => ErrorCode::ProviderKeyMissing,
            code => code,
        };
        Failure::new(code, e.to_string())
    })?;
    for n in &checked.notices {
        if matches!(n.kind, latchkey::vault::model::NoticeKind::Changed) {
            eprintln!("latchkey: note: {n}");
        }
    }
    let config = checked.value.config().to_vec();
    let secrets = checked.value.secrets().clone();
    let prepared = sign::prepare(&input)?;
    sign::check_credential(&rt, &plugin, &config, &secrets)?;
    let cred = Arc::new(CallCredential::new("cli", 1, config, secrets));
    sign_and_print(&rt, &plugin, &cred, &prepared, args.explain)
}

/// `latchkey sign --credential NAME`: resolve through the layers (the
/// `--secret` values are per-call overrides), check the destination, sign,
/// and record the use in the audit trail.
async fn cmd_sign_vault(vault: &Arc<Vault>, runtime: &Arc<latchkey::Runtime>, args: SignArgs) -> Result<(), Failure> {
    let name = args.credential.clone().unwrap_or_default();
    let org = parse_org(args.org.as_deref())?.to_string();
    let SignParts { config, secrets, input } = sign_parts(&args)?;
    let mut overrides = Overrides::new();
    for (field, value) in secrets {
        overrides.set(&name, &field, value);
    }
    // The one call path, as the operator: every layer, no attachment check.
    let broker = latchkey::broker::Broker::new(vault.clone(), runtime.clone());
    let caller = latchkey::broker::Caller::Operator { org: org.clone(), actor: cli::vault::cli_actor() };
    let given = args.scheme.as_deref().map(|s| (s, config.clone()));
    let ticket = broker.open(&caller, &name, &overrides, given).await.map_err(|e| Failure::new(e.code, e.message))?;
    if ticket.in_vault() {
        let refusal = if !config.is_empty() {
            Some(format!("--config cannot change vault credential `{name}`; use `latchkey credential update`"))
        } else {
            args.scheme.as_deref().filter(|s| *s != ticket.scheme()).map(|s| {
                format!("vault credential `{name}` uses scheme `{}`, not `{s}`; drop --scheme", ticket.scheme())
            })
        };
        if let Some(message) = refusal {
            broker.refused(&ticket, None, ErrorCode::InvalidArgument);
            return Err(Failure::new(ErrorCode::InvalidArgument, message));
        }
    }
    if args.explain {
        eprintln!("credential `{name}`: secret from the {} layer ({})", ticket.layer(), ticket.source());
    }
    let signed = broker
        .sign(&ticket, &input, latchkey::broker::Delivery::Caller)
        .await
        .map_err(|e| Failure::new(e.code, e.message))?;
    // Explain after signing, so a scheme that caches (jwt) explains the very
    // token it just produced.
    if args.explain {
        let prepared = sign::prepare(&input)?;
        let text = sign::explain(runtime, ticket.plugin(), &ticket.call_credential(), &prepared)?;
        eprintln!("{text}");
    }
    print_signed(&signed.request)
}

fn sign_and_print(
    rt: &Runtime,
    plugin: &latchkey::Plugin,
    cred: &Arc<CallCredential>,
    prepared: &sign::Prepared,
    explain: bool,
) -> Result<(), Failure> {
    let signed = sign::sign(rt, plugin, cred, prepared)?;
    // Explain after signing, so a scheme that caches (jwt) explains the very
    // token it just produced.
    if explain {
        let text = sign::explain(rt, plugin, cred, prepared)?;
        eprintln!("{text}");
    }
    print_signed(&signed)
}

fn print_signed(signed: &sign::SignedRequest) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, signed).map_err(|e| Failure::new(ErrorCode::Io, e.to_string()))?;
    writeln!(out).map_err(|e| Failure::new(ErrorCode::Io, e.to_string()))?;
    Ok(())
}

fn plugin_json(p: &latchkey::Plugin) -> serde_json::Value {
    let fields = |fs: &[latchkey::plugin::FieldInfo]| -> serde_json::Value {
        fs.iter()
            .map(|f| serde_json::json!({"name": f.name, "description": f.description, "required": f.required}))
            .collect()
    };
    serde_json::json!({
        "name": p.info.name,
        "version": p.info.version,
        "description": p.info.description,
        "source": p.source.to_string(),
        "sha256": p.digest,
        "size": p.size,
        "config_fields": fields(&p.info.config_fields),
        "secret_fields": p.info.secret_fields.iter().map(|f| serde_json::json!({
            "name": f.name, "description": f.description, "required": f.required,
            "exposure": latchkey::plugin::exposure_name(f.exposure),
        })).collect::<Vec<_>>(),
        "open_secret_fields": p.info.open_secret_fields.map(latchkey::plugin::exposure_name),
        "writable_headers": p.info.writable_headers,
        "reads_body": p.info.reads_body,
        "request_independent": p.info.request_independent,
        "verifies_tokens": p.exports_verifier(),
        "reads_raw_secrets": p.reads_secrets,
        "imports": p.imports,
    })
}

fn cmd_list(rt_args: &RuntimeArgs, json: bool) -> Result<(), Failure> {
    let rt = runtime(rt_args)?;
    let mut plugins = Vec::new();
    for name in rt.scheme_names() {
        plugins.push(rt.get(&name)?);
    }
    if json {
        let all: Vec<_> = plugins.iter().map(|p| plugin_json(p)).collect();
        out!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return Ok(());
    }
    out!("{:<16} {:<8} {:<8} {:<7} DESCRIPTION", "SCHEME", "VERSION", "SOURCE", "SECRETS");
    for p in plugins {
        let source = match p.source {
            PluginSource::Builtin => "builtin".to_string(),
            PluginSource::File(_) => "file".to_string(),
        };
        let access = if p.reads_secrets { "raw" } else { "host" };
        out!("{:<16} {:<8} {:<8} {:<7} {}", p.info.name, p.info.version, source, access, p.info.description);
    }
    Ok(())
}

fn cmd_inspect(rt_args: &RuntimeArgs, file: &std::path::Path, json: bool) -> Result<(), Failure> {
    let rt = runtime(rt_args)?;
    let p = rt.load_file(file)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&plugin_json(&p)).unwrap_or_default());
        return Ok(());
    }
    out!("scheme:      {} {}", p.info.name, p.info.version);
    out!("description: {}", p.info.description);
    out!("file:        {} ({} bytes)", file.display(), p.size);
    out!("sha256:      {}", p.digest);
    let show = |title: &str, fs: &[latchkey::plugin::FieldInfo]| {
        out!("{title}:");
        if fs.is_empty() {
            out!("  (none)");
        }
        for f in fs {
            let req = if f.required { "required" } else { "optional" };
            out!("  {:<22} {req:<8}  {}", f.name, f.description);
        }
    };
    show("config fields", &p.info.config_fields);
    out!("secret fields:");
    if p.info.secret_fields.is_empty() {
        out!("  (none)");
    }
    for f in &p.info.secret_fields {
        let req = if f.required { "required" } else { "optional" };
        let exposure = latchkey::plugin::exposure_name(f.exposure);
        out!("  {:<22} {req:<8}  {exposure:<10}  {}", f.name, f.description);
    }
    if let Some(e) = p.info.open_secret_fields {
        out!("  (any other name)      optional  {:<10}  open set of fields", latchkey::plugin::exposure_name(e));
    }
    out!("writable headers: {}", p.info.writable_headers.join(", "));
    out!(
        "body:             {}",
        if p.info.reads_body { "hashed (the proxy buffers it)" } else { "not read (the proxy streams it)" }
    );
    out!("request-independent: {}", if p.info.request_independent { "yes" } else { "no" });
    out!("verifies tokens:  {}", if p.exports_verifier() { "yes (exports verifier)" } else { "no" });
    out!(
        "secret access: {}",
        if p.reads_secrets {
            "reads raw secret values (latchkey:plugin/secrets, granted)"
        } else {
            "none: key material stays in the host"
        }
    );
    out!("imports:");
    for i in &p.imports {
        out!("  {i}");
    }
    Ok(())
}
