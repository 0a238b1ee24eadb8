//! `latchkey credential …`, `latchkey vault …` and `latchkey audit`.
//!
//! Secret values come from `--secret field=value`, `field=@file` or
//! `field=@-` (standard input) and are never printed: every output shows
//! field names only.

use latchkey::error::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Subcommand};
use latchkey::vault::model::{Notice, NoticeKind, RawCredential, RawUpdate};
use latchkey::vault::{
    AttachmentKind, AuditAction, AuditFilter, CredentialInfo, KeyOrigin, Vault, VaultError, parse_org,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Failure, read_secrets, split_kv};

impl From<VaultError> for Failure {
    fn from(e: VaultError) -> Failure {
        Failure::new(e.code(), e.to_string())
    }
}

#[derive(Subcommand)]
pub enum CredentialCmd {
    /// Store a new credential (validated by its scheme plugin first).
    Add(AddArgs),
    /// List credentials: state, scheme, destinations, attachments, last use.
    List(ListArgs),
    /// Show one credential (never its secret values).
    Show(NameArgs),
    /// Change config, destinations or secrets.
    Update(UpdateArgs),
    /// Enable a credential.
    Enable(NameArgs),
    /// Disable a credential: every use fails with `credential_disabled` until enabled again.
    Disable(NameArgs),
    /// Delete a credential irreversibly (refused while attached, unless --force).
    Delete(DeleteArgs),
    /// Replace a credential's secret values under a fresh data key.
    Rotate(RotateArgs),
    /// Let an agent use the credential, or record that a route sends it.
    Attach(AttachArgs),
    /// Undo an attach.
    Detach(AttachArgs),
    /// Probe the provider with a cheap call through the credential's route: valid, invalid (401),
    /// forbidden (403), quota (402/429) or unreachable. The result shows in `credential list`.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The credential name.
    pub name: String,
    #[command(flatten)]
    pub org: OrgArg,
    /// Let the upstream resolve into this private or loopback network (repeatable).
    #[arg(long = "allow-upstream-network", value_name = "CIDR")]
    pub allow_networks: Vec<String>,
    /// A PEM file of extra CA certificates to trust (repeatable).
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum VaultCmd {
    /// Where the vault is, which key opens it, and credentials per master key term.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a new master key term (to the keyring file) and re-wrap every data key under it, without downtime.
    RotateMasterKey {
        /// Do not generate a key: re-wrap under the keyring's current term, which you set yourself.
        #[arg(long)]
        no_generate: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct OrgArg {
    /// The organisation [default: default].
    #[arg(long, env = "LATCHKEY_ORG")]
    pub org: Option<String>,
}

#[derive(Args)]
pub struct NameArgs {
    /// The credential name.
    pub name: String,
    #[command(flatten)]
    pub org: OrgArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SecretArgs {
    /// A secret field: `name=value`, `name=@file` or `name=@-` for standard input (repeatable).
    #[arg(long = "secret", value_name = "K=V")]
    pub secrets: Vec<String>,
    /// Store this secret field exactly as given: no trimming, no hygiene checks (repeatable).
    #[arg(long = "verbatim", value_name = "FIELD")]
    pub verbatim: Vec<String>,
}

#[derive(Args)]
pub struct AddArgs {
    /// The credential name: a letter or `_`, then letters, digits, `_` or `-` (at most 64).
    pub name: String,
    /// The scheme, e.g. api-key (see `latchkey plugin list`).
    #[arg(long)]
    pub scheme: String,
    /// A config field, `name=value` (repeatable).
    #[arg(long = "config", value_name = "K=V")]
    pub config: Vec<String>,
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// A host the credential may be sent to: `api.openai.com` or `*.amazonaws.com` (repeatable).
    #[arg(long = "destination", value_name = "HOST")]
    pub destinations: Vec<String>,
    /// Store it disabled.
    #[arg(long)]
    pub disabled: bool,
    #[command(flatten)]
    pub org: OrgArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this organisation (default: all).
    #[arg(long, env = "LATCHKEY_ORG")]
    pub org: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    /// The credential name.
    pub name: String,
    /// Set a config field, `name=value`; other fields are kept (repeatable).
    #[arg(long = "config", value_name = "K=V")]
    pub config: Vec<String>,
    /// Remove a config field (repeatable).
    #[arg(long = "unset-config", value_name = "K")]
    pub unset_config: Vec<String>,
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Replace the destinations with these (repeatable).
    #[arg(long = "destination", value_name = "HOST", conflicts_with = "add_destinations")]
    pub destinations: Vec<String>,
    /// Add a destination, keeping the others (repeatable).
    #[arg(long = "add-destination", value_name = "HOST")]
    pub add_destinations: Vec<String>,
    /// Remove a destination (repeatable).
    #[arg(long = "remove-destination", value_name = "HOST")]
    pub remove_destinations: Vec<String>,
    /// Refuse the change unless the credential is still at this version.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub org: OrgArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// The credential name.
    pub name: String,
    /// Delete even while agents or routes are attached: agents are detached and the routes that send it deleted.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub org: OrgArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RotateArgs {
    /// The credential name.
    pub name: String,
    #[command(flatten)]
    pub secrets: SecretArgs,
    #[command(flatten)]
    pub org: OrgArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[group(id = "target", required = true, multiple = false, args = ["agent", "route"])]
pub struct AttachArgs {
    /// The credential name.
    pub name: String,
    /// An agent name.
    #[arg(long)]
    pub agent: Option<String>,
    /// A route name.
    #[arg(long)]
    pub route: Option<String>,
    #[command(flatten)]
    pub org: OrgArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only this credential.
    #[arg(long)]
    pub credential: Option<String>,
    /// Only this action: create, update, enable, disable, delete, rotate, attach, detach, rewrap, use (counts per
    /// minute, agent and outcome).
    #[arg(long)]
    pub action: Option<String>,
    /// Only events since this long ago (`90s`, `15m`, `2h`, `7d`) or this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many, the most recent.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Only this organisation (default: all).
    #[arg(long, env = "LATCHKEY_ORG")]
    pub org: Option<String>,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Who made a change, for the audit trail.
/// `cli:USER@HOST`: the operator's OS user (from the environment, else
/// the passwd entry of the process's uid) and the machine's name.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_of_uid)
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("cli:{}@{}", latchkey::plugin::sanitize_for_log(&user, 64), latchkey::plugin::sanitize_for_log(&host, 64))
}

/// The login name of this process's uid, from `/etc/passwd` (a container
/// often has no `USER`).
fn user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

fn print_notices(notices: &[Notice]) {
    for n in notices {
        let label = match n.kind {
            NoticeKind::Changed => "note",
            NoticeKind::Warning => "warning",
        };
        eprintln!("latchkey: {label}: {n}");
    }
}

fn org_str(org: &OrgArg) -> Result<String, Failure> {
    Ok(parse_org(org.org.as_deref())?.to_string())
}

fn time_text(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| "never".into())
}

fn credential_json(info: &CredentialInfo) -> serde_json::Value {
    info.to_json()
}

fn print_credential(info: &CredentialInfo, json: bool) {
    if json {
        out!("{}", serde_json::to_string_pretty(&credential_json(info)).unwrap_or_default());
        return;
    }
    let c = &info.credential;
    out!("name:          {}", c.name);
    out!("organisation:  {}", c.org);
    out!("scheme:        {}", c.scheme);
    out!("state:         {}", if c.enabled { "enabled" } else { "disabled" });
    let config: Vec<String> = c.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out!("config:        {}", if config.is_empty() { "(none)".into() } else { config.join(", ") });
    let fields: Vec<&str> = c.secret_fields.iter().map(String::as_str).collect();
    out!("secret fields: {} (values never shown)", fields.join(", "));
    let dest: Vec<String> = c.destinations.iter().map(ToString::to_string).collect();
    out!("destinations:  {}", if dest.is_empty() { "(none: it may be sent nowhere)".into() } else { dest.join(", ") });
    out!("attached to:   {}", c.attachments);
    out!("created:       {}", time_text(Some(c.created_at)));
    out!("updated:       {}", time_text(Some(c.updated_at)));
    out!("last used:     {}", time_text(info.last_used_at));
    out!("version:       {} (secret version {}, master key term {})", c.version, info.secret_version, info.key_term);
}

fn secrets_of(args: &SecretArgs) -> Result<(BTreeMap<String, latchkey::secret::Secret>, BTreeSet<String>), Failure> {
    let secrets = read_secrets(&args.secrets)?;
    let verbatim: BTreeSet<String> = args.verbatim.iter().cloned().collect();
    for v in &verbatim {
        if !secrets.contains_key(v) {
            return Err(Failure::new(
                ErrorCode::InvalidArgument,
                format!("--verbatim {v}: no --secret {v}=… was given"),
            ));
        }
    }
    Ok((secrets, verbatim))
}

fn config_pairs(items: &[String]) -> Result<Vec<(String, String)>, Failure> {
    items.iter().map(|c| split_kv(c, "--config").map(|(k, v)| (k.to_string(), v.to_string()))).collect()
}

pub async fn credential(
    vault: &std::sync::Arc<Vault>,
    runtime: &std::sync::Arc<latchkey::Runtime>,
    cmd: CredentialCmd,
) -> Result<(), Failure> {
    let actor = cli_actor();
    match cmd {
        CredentialCmd::Add(a) => {
            let (secrets, verbatim) = secrets_of(&a.secrets)?;
            let raw = RawCredential {
                name: a.name,
                org: a.org.org,
                scheme: a.scheme,
                config: config_pairs(&a.config)?,
                secrets,
                verbatim,
                enabled: !a.disabled,
                destinations: a.destinations,
            };
            let done = vault.create(raw, &actor).await?;
            print_notices(&done.notices);
            let c = &done.value.credential;
            if a.json {
                print_credential(&done.value, true);
            } else {
                out!(
                    "created credential `{}` ({}, {}, version 1, secret fields: {})",
                    c.name,
                    c.scheme,
                    if c.enabled { "enabled" } else { "disabled" },
                    c.secret_fields.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        CredentialCmd::List(a) => {
            let org = a.org.as_deref().map(|o| parse_org(Some(o))).transpose()?;
            let all = vault.list(org.as_ref().map(|o| o.as_str())).await?;
            if a.json {
                let items: Vec<_> = all.iter().map(credential_json).collect();
                out!("{}", serde_json::to_string_pretty(&items).unwrap_or_default());
                return Ok(());
            }
            let checks = vault.check_states().await?;
            let mut table = crate::cli::output::Table::new(&[
                "name",
                "org",
                "scheme",
                "state",
                "check",
                "destinations",
                "attached",
                "last used",
                "version",
            ]);
            for info in &all {
                let c = &info.credential;
                let dest: Vec<String> = c.destinations.iter().map(ToString::to_string).collect();
                let mut attached: Vec<String> = c.attachments.agents.iter().map(|a| format!("agent:{a}")).collect();
                attached.extend(c.attachments.routes.iter().map(|r| format!("route:{r}")));
                table.row(vec![
                    c.name.to_string(),
                    c.org.to_string(),
                    c.scheme.clone(),
                    if c.enabled { "enabled" } else { "disabled" }.into(),
                    checks
                        .get(&(c.org.to_string(), c.name.to_string()))
                        .map(|(s, _)| s.clone())
                        .unwrap_or_else(|| "-".into()),
                    if dest.is_empty() { "-".into() } else { dest.join(",") },
                    if attached.is_empty() { "-".into() } else { attached.join(",") },
                    info.last_used_at
                        .map(|t| time_text(t.replace_nanosecond(0).ok()))
                        .unwrap_or_else(|| "never".into()),
                    c.version.to_string(),
                ]);
            }
            let scope = crate::cli::output::scope(org.as_ref().map(|o| o.as_str()));
            table.print(&format!("no credentials{scope}"));
            if all.is_empty() {
                eprintln!("latchkey: add one with `latchkey credential add`");
            }
        }
        CredentialCmd::Show(a) => {
            let info = vault.get(&org_str(&a.org)?, &a.name).await?;
            print_credential(&info, a.json);
        }
        CredentialCmd::Update(a) => {
            let org = org_str(&a.org)?;
            let current = vault.get(&org, &a.name).await?;
            let mut raw = RawUpdate { expected_version: a.if_version, ..RawUpdate::default() };
            if !a.config.is_empty() || !a.unset_config.is_empty() {
                let mut config = current.credential.config.clone();
                for (k, v) in config_pairs(&a.config)? {
                    match config.iter_mut().find(|(ck, _)| *ck == k) {
                        Some(slot) => slot.1 = v,
                        None => config.push((k, v)),
                    }
                }
                for k in &a.unset_config {
                    let before = config.len();
                    config.retain(|(ck, _)| ck != k);
                    if config.len() == before {
                        return Err(Failure::new(
                            ErrorCode::InvalidArgument,
                            format!("--unset-config {k}: no such config field"),
                        ));
                    }
                }
                raw.config = Some(config);
            }
            if !a.secrets.secrets.is_empty() {
                let (secrets, verbatim) = secrets_of(&a.secrets)?;
                raw.secrets = Some(secrets);
                raw.verbatim = verbatim;
            } else if !a.secrets.verbatim.is_empty() {
                return Err(Failure::new(ErrorCode::InvalidArgument, "--verbatim needs --secret"));
            }
            if !a.destinations.is_empty() || !a.add_destinations.is_empty() || !a.remove_destinations.is_empty() {
                let mut list: Vec<String> = if a.destinations.is_empty() {
                    current.credential.destinations.iter().map(ToString::to_string).collect()
                } else {
                    a.destinations.clone()
                };
                list.extend(a.add_destinations.iter().cloned());
                for r in &a.remove_destinations {
                    let before = list.len();
                    list.retain(|d| !d.eq_ignore_ascii_case(r));
                    if list.len() == before {
                        return Err(Failure::new(
                            ErrorCode::InvalidArgument,
                            format!("--remove-destination {r}: not among the credential's destinations"),
                        ));
                    }
                }
                raw.destinations = Some(list);
            }
            if raw.config.is_none() && raw.secrets.is_none() && raw.destinations.is_none() {
                return Err(Failure::new(
                    ErrorCode::InvalidArgument,
                    "nothing to update: give --config, --unset-config, --secret or a destination option",
                ));
            }
            let done = vault.update(&org, &a.name, raw, &actor).await?;
            print_notices(&done.notices);
            if a.json {
                print_credential(&done.value, true);
            } else if done.value.credential.version == current.credential.version {
                out!("credential `{}` unchanged (version {})", a.name, current.credential.version);
            } else {
                out!("updated credential `{}` (version {})", a.name, done.value.credential.version);
            }
        }
        CredentialCmd::Enable(a) => set_enabled(vault, a, true, &actor).await?,
        CredentialCmd::Disable(a) => set_enabled(vault, a, false, &actor).await?,
        CredentialCmd::Delete(a) => {
            let gone = vault.delete(&org_str(&a.org)?, &a.name, a.force, &actor).await?;
            if a.json {
                print_credential(&gone, true);
            } else if gone.credential.attachments.is_empty() {
                out!("deleted credential `{}`", a.name);
            } else {
                out!("deleted credential `{}` (it was attached to {})", a.name, gone.credential.attachments);
                if !gone.credential.attachments.routes.is_empty() {
                    let routes: Vec<&str> = gone.credential.attachments.routes.iter().map(String::as_str).collect();
                    out!("deleted the routes that sent it: {}", routes.join(", "));
                }
            }
        }
        CredentialCmd::Rotate(a) => {
            let (secrets, verbatim) = secrets_of(&a.secrets)?;
            let done = vault.rotate(&org_str(&a.org)?, &a.name, secrets, verbatim, &actor).await?;
            print_notices(&done.notices);
            if a.json {
                print_credential(&done.value, true);
            } else {
                out!(
                    "rotated credential `{}`: secret version {}, version {}; the next call uses the new secret",
                    a.name,
                    done.value.secret_version,
                    done.value.credential.version
                );
            }
        }
        CredentialCmd::Check(a) => check(vault, runtime, a).await?,
        CredentialCmd::Attach(a) => attach(vault, a, true, &actor).await?,
        CredentialCmd::Detach(a) => attach(vault, a, false, &actor).await?,
    }
    Ok(())
}

async fn check(
    vault: &std::sync::Arc<Vault>,
    runtime: &std::sync::Arc<latchkey::Runtime>,
    a: CheckArgs,
) -> Result<(), Failure> {
    use latchkey::server::{self, ServerConfig, net};
    let mut allow = Vec::new();
    for n in &a.allow_networks {
        allow.push(n.parse().map_err(|_| Failure::new(ErrorCode::InvalidArgument, format!("`{n}` is not a CIDR")))?);
    }
    let config = ServerConfig {
        address_policy: net::AddressPolicy { allow },
        tls: net::TlsOptions { extra_ca_files: a.ca_files.clone(), no_system_roots: false },
        ..ServerConfig::default()
    };
    let state = server::state(vault.clone(), runtime.clone(), config)
        .map_err(|e| Failure::new(ErrorCode::InvalidConfig, e.to_string()))?;
    let org = org_str(&a.org)?;
    let outcome =
        server::check::check_credential(&state, &org, &a.name).await.map_err(|e| Failure::new(e.code, e.message))?;
    if a.json {
        let v = serde_json::json!({"credential": a.name, "state": outcome.state, "status": outcome.status,
            "url": outcome.url, "detail": outcome.detail});
        out!("{v}");
    } else {
        let status = outcome.status.map(|s| format!(" ({s})")).unwrap_or_default();
        out!("{}: {}{status}: {}", a.name, outcome.state, outcome.detail);
    }
    if matches!(outcome.state, "valid" | "mock") {
        Ok(())
    } else {
        Err(Failure::new(ErrorCode::CredentialCheckFailed, format!("credential `{}` is {}", a.name, outcome.state)))
    }
}

async fn set_enabled(vault: &Vault, a: NameArgs, enabled: bool, actor: &str) -> Result<(), Failure> {
    let info = vault.set_enabled(&org_str(&a.org)?, &a.name, enabled, actor).await?;
    if a.json {
        print_credential(&info, true);
    } else {
        let state = if enabled { "enabled" } else { "disabled" };
        out!("credential `{}` is {state} (version {})", a.name, info.credential.version);
    }
    Ok(())
}

async fn attach(vault: &Vault, a: AttachArgs, on: bool, actor: &str) -> Result<(), Failure> {
    let (kind, target) = match (&a.agent, &a.route) {
        (Some(agent), _) => (AttachmentKind::Agent, agent.as_str()),
        (None, Some(route)) => (AttachmentKind::Route, route.as_str()),
        (None, None) => return Err(Failure::new(ErrorCode::InvalidArgument, "give --agent or --route")),
    };
    let info = vault.set_attachment(&org_str(&a.org)?, &a.name, kind, target, on, actor).await?;
    if a.json {
        print_credential(&info, true);
    } else {
        out!(
            "credential `{}` is attached to {} (version {})",
            a.name,
            info.credential.attachments,
            info.credential.version
        );
    }
    Ok(())
}

pub async fn vault_cmd(vault: &Vault, cmd: VaultCmd) -> Result<(), Failure> {
    match cmd {
        VaultCmd::Status { json } => {
            let by_term = vault.credentials_by_term().await?;
            let key = match vault.key_origin() {
                KeyOrigin::Configured => "configured (LATCHKEY_MASTER_KEY / keyring file)".to_string(),
                KeyOrigin::DevKey(p) | KeyOrigin::DevKeyCreated(p) => format!("DEVELOPMENT key file {}", p.display()),
            };
            if json {
                let v = serde_json::json!({
                    "backend": vault.location().backend(),
                    "location": vault.location().display(),
                    "master_key": key,
                    "credentials_by_term": by_term.iter().map(|(t, n)| (t.to_string(), *n)).collect::<BTreeMap<_, _>>(),
                });
                out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                out!("backend:     {}", vault.location().backend());
                out!("location:    {}", vault.location().display());
                out!("master key:  {key}");
                let total: u64 = by_term.values().sum();
                let terms: Vec<String> = by_term.iter().map(|(t, n)| format!("term {t}: {n}")).collect();
                out!(
                    "credentials: {total}{}",
                    if terms.is_empty() { String::new() } else { format!(" ({})", terms.join(", ")) }
                );
            }
        }
        VaultCmd::RotateMasterKey { no_generate, json } => {
            let report = vault.rotate_master_key(!no_generate, &cli_actor()).await?;
            if json {
                let v = serde_json::json!({
                    "term": report.term,
                    "generated": report.generated,
                    "rewrapped": report.rewrapped,
                    "credentials_by_term": report.by_term.iter().map(|(t, n)| (t.to_string(), *n)).collect::<BTreeMap<_, _>>(),
                    "failed": report.failed.iter().map(|(o, n, c)| serde_json::json!({"org": o, "name": n, "code": c})).collect::<Vec<_>>(),
                });
                out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                if report.generated {
                    out!("generated master key term {} in the keyring file (back the file up now)", report.term);
                }
                out!("re-wrapped {} data key(s) under master key term {}", report.rewrapped, report.term);
                for (org, name, code) in &report.failed {
                    out!("  failed: {org}/{name}: {code}");
                }
                let old: u64 = report.by_term.iter().filter(|(t, _)| **t != report.term).map(|(_, n)| n).sum();
                if old == 0 {
                    out!("every credential is on term {}; older terms can be removed from the keyring", report.term);
                } else {
                    out!("{old} credential(s) are still on older terms; keep those terms in the keyring");
                }
            }
            if !report.failed.is_empty() {
                return Err(Failure::new(
                    ErrorCode::RewrapIncomplete,
                    format!("{} data key(s) could not be re-wrapped", report.failed.len()),
                ));
            }
        }
    }
    Ok(())
}

/// `90s`, `15m`, `2h`, `7d`, or an RFC 3339 time.
fn parse_since(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, Failure> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let d = crate::cli::agents::parse_duration(s).ok_or_else(|| {
        Failure::new(
            ErrorCode::InvalidArgument,
            format!("--since `{s}`: give a duration like 90s, 15m, 2h or 7d, or an RFC 3339 time"),
        )
    })?;
    Ok(now - d)
}

pub async fn audit(vault: &Vault, a: AuditArgs) -> Result<(), Failure> {
    let action = match a.action.as_deref() {
        None => None,
        Some(s) => Some(AuditAction::parse(s).ok_or_else(|| {
            let all: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
            Failure::new(ErrorCode::InvalidArgument, format!("--action `{s}`: one of {}", all.join(", ")))
        })?),
    };
    let filter = AuditFilter {
        org: a.org.as_deref().map(|o| parse_org(Some(o))).transpose()?.map(|o| o.to_string()),
        credential: a.credential,
        action,
        since: a.since.as_deref().map(|s| parse_since(s, OffsetDateTime::now_utc())).transpose()?,
        limit: Some(a.limit),
    };
    let events = vault.audit(&filter).await?;
    if a.json {
        for e in &events {
            out!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        return Ok(());
    }
    let mut table = crate::cli::output::Table::new(&["seq", "at", "org", "credential", "action", "outcome", "detail"]);
    for e in &events {
        let mut detail = Vec::new();
        if let Some(actor) = &e.actor {
            detail.push(format!("by {actor}"));
        }
        if let Some(agent) = &e.agent {
            detail.push(format!("agent {agent}"));
        }
        if let Some(dest) = &e.destination {
            detail.push(format!("to {dest}"));
        }
        if let Some(layer) = &e.layer {
            detail.push(format!("layer {layer}"));
        }
        if let Some(v) = e.version {
            detail.push(format!("v{v}"));
        }
        if let Some(d) = &e.detail {
            detail.push(d.clone());
        }
        table.row(vec![
            // A count of uses (one minute's) has no place in the trail's sequence.
            if e.count.is_some() { "-".into() } else { e.seq.to_string() },
            time_text(e.at.replace_nanosecond(0).ok()),
            e.org.clone(),
            // Directory events (an agent, an identity provider) name no credential.
            if e.credential.is_empty() { "-".into() } else { e.credential.clone() },
            e.action.clone(),
            e.outcome.clone(),
            detail.join("; "),
        ]);
    }
    table.print("no audit events match");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(parse_since("90s", now).ok().map(|t| t.unix_timestamp()), Some(1_000_000 - 90));
        assert_eq!(parse_since("2h", now).ok().map(|t| t.unix_timestamp()), Some(1_000_000 - 7200));
        assert_eq!(parse_since("1970-01-01T00:00:10Z", now).ok().map(|t| t.unix_timestamp()), Some(10));
        assert!(parse_since("2w", now).is_err());
        assert!(parse_since("h", now).is_err());
    }
}
