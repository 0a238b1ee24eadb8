//! The one call path from vault to wire. Every surface — the sidecar proxy,
//! `POST /v1/sign`, provider checks and `latchkey sign --credential` — only
//! adapts its input and output to these steps:
//!
//! 1. **Caller**: the surface authenticates the caller (an agent, or the
//!    operator at the CLI) and names a credential ([`Caller`]).
//! 2. **Snapshot** ([`Broker::open`]): one read of the credential — the
//!    record and the secrets opened from that same row, so config, secrets
//!    and version belong together — then the attachment check and the
//!    scheme plugin's declaration (does it read the body?).
//! 3. **Request** ([`Broker::sign`]): input hygiene (`sign::prepare`) and
//!    the destination check on the URL's host.
//! 4. **Plugin**: `apply` on the plugin call pool ([`crate::plugin::CallPool`]),
//!    never on a server worker, within the plugin's and organisation's share.
//! 5. **Edits**: checked against the scheme's declaration (writable headers,
//!    each secret field's exposure, fields used as keys) and applied.
//! 6. **Release check**: an answer going back to an agent must carry no
//!    secret: refused when the declaration says it does, when the plugin
//!    reads raw secrets, or when [`leak::find`] finds a secret value in what
//!    the plugin produced (`secret_in_output`).
//! 7. **Audit**: the use (credential version, secret fingerprint) is
//!    committed before the signed request leaves the process; if it cannot
//!    be, the call fails with `audit_unavailable` (fail closed).
//!
//! A refusal at any step is recorded too (queued, since nothing left).

pub mod aws_chunked;
pub mod leak;

use crate::error::ErrorCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::plugin::{CallCredential, Plugin, PluginError, PoolError, Runtime};
use crate::sign::{self, SignError, SignInput, SignedRequest};
use crate::vault::agents::Agent;
use crate::vault::audit::AuditUnavailable;
use crate::vault::model::{Layer, Overrides};
use crate::vault::{CredentialRef, UseEvent, Vault, VaultError};

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An authenticated agent: only credentials the vault holds and has
    /// attached to it (their secrets resolved through the layers, as the
    /// operator configured them).
    Agent(Agent),
    /// The operator (the CLI, or the broker's own provider checks): any
    /// credential of the organisation, through every resolution layer.
    Operator {
        /// The organisation.
        org: String,
        /// Who, for the audit trail (`cli:user@host`, `check`).
        actor: String,
    },
}

impl Caller {
    fn org(&self) -> &str {
        match self {
            Caller::Agent(a) => &a.org,
            Caller::Operator { org, .. } => org,
        }
    }

    fn name(&self) -> String {
        match self {
            Caller::Agent(a) => a.name.clone(),
            Caller::Operator { actor, .. } => actor.clone(),
        }
    }
}

/// Where the signed request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The broker sends it (proxy, provider checks): it may carry `wire`
    /// secrets.
    Upstream,
    /// It is handed to the caller (`/v1/sign`, the CLI). For an agent it
    /// must carry no secret.
    Caller,
    /// A mock route answers with it: shown to the caller with every secret
    /// the plugin placed redacted ([`Signed::shown`]).
    Mock,
}

/// Why a call was refused: a stable code and one sentence with no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The stable code.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

impl CallError {
    /// An error with a code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CallError {
        CallError { code, message: message.into() }
    }
}

macro_rules! call_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CallError {
            fn from(e: $t) -> CallError {
                CallError { code: e.code(), message: e.to_string() }
            }
        }
    )*};
}
call_error_from!(VaultError, SignError, PluginError, aws_chunked::PayloadError);

impl From<PoolError> for CallError {
    fn from(e: PoolError) -> CallError {
        CallError::new(ErrorCode::PluginBusy, e.to_string())
    }
}

impl From<AuditUnavailable> for CallError {
    fn from(e: AuditUnavailable) -> CallError {
        CallError::new(ErrorCode::AuditUnavailable, e.to_string())
    }
}

/// Steps 1–2 done: who, which credential (one snapshot), which plugin.
pub struct Ticket {
    caller: Caller,
    name: String,
    /// The vault record the secrets were opened from, when the vault holds
    /// the name (its destinations are checked against).
    record: Option<CredentialRef>,
    opened: Arc<Opened>,
    /// The credential as this call's plugin sees it: the secrets, opened
    /// for this call.
    cred: Arc<CallCredential>,
}

/// What a credential's state gives every call with it, no secret value
/// among it: the winning layer, the plugin, the config, and what the calls
/// keep between them (the output-template key, derived signing keys:
/// [`crate::plugin::Kept`]; the audit fingerprint of the secrets).
///
/// When the vault supplies the secrets, this is made once per record and
/// kept with the cached record ([`CredentialRef::keep`]): a call with an
/// unchanged credential runs no resolution layers and fingerprints nothing,
/// and any change to the credential (a new record) starts afresh. Each call
/// still opens the secrets from the sealed record for itself: no plaintext
/// outlives its call. It must never hold the record, which holds it.
/// Secrets from an override or the environment get one per call.
struct Opened {
    layer: Layer,
    source: String,
    plugin: Arc<Plugin>,
    config: Vec<(String, String)>,
    scope: Option<Arc<str>>,
    kept: Arc<crate::plugin::Kept>,
    version: u64,
    /// Computed on the first released call (it needs the audit salt).
    fingerprint: OnceLock<String>,
}

impl Opened {
    /// The credential for one call, with `secrets` opened for it.
    fn credential(&self, name: &str, secrets: std::collections::BTreeMap<String, crate::Secret>) -> CallCredential {
        let cred = CallCredential::new(name, self.version, self.config.clone(), secrets).with_kept(self.kept.clone());
        match &self.scope {
            Some(scope) => cred.with_cache_scope(scope.clone()),
            None => cred,
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("name", &self.name)
            .field("version", &self.opened.version)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The scheme plugin (its declaration decides how the body travels).
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.opened.plugin
    }

    /// Whether the scheme needs the body's hash, so the body must be
    /// buffered (the plugin's declaration, never its name).
    pub fn reads_body(&self) -> bool {
        self.opened.plugin.info.reads_body
    }

    /// Whether the vault holds the credential (else an override or the
    /// environment supplied it).
    pub fn in_vault(&self) -> bool {
        self.record.is_some()
    }

    /// The scheme's name.
    pub fn scheme(&self) -> &str {
        &self.opened.plugin.info.name
    }

    /// The credential's name.
    pub fn credential(&self) -> &str {
        &self.name
    }

    /// The layer that supplied the secrets.
    pub fn layer(&self) -> Layer {
        self.opened.layer
    }

    /// Where in that layer (for `--explain`; never a value).
    pub fn source(&self) -> &str {
        &self.opened.source
    }

    /// The version an audit row names: the vault's, when the vault supplied
    /// the secrets.
    fn audit_version(&self) -> Option<u64> {
        (self.layer() == Layer::Vault).then_some(self.opened.version)
    }

    /// Refuse `host` unless the credential may be sent there. A name the
    /// vault does not hold has no destination list (an override is the
    /// caller's own key; an environment credential's destination is the
    /// operator's route).
    pub fn check_destination(&self, host: &str) -> Result<(), CallError> {
        match &self.record {
            Some(record) => Ok(record.check_destination(host)?),
            None => Ok(()),
        }
    }

    /// The secret values, for redacting mock answers.
    pub(crate) fn secrets(&self) -> &std::collections::BTreeMap<String, crate::Secret> {
        self.cred.secrets()
    }

    /// The credential as a plugin call sees it.
    pub fn call_credential(&self) -> Arc<CallCredential> {
        self.cred.clone()
    }
}

/// The outgoing request and how long the plugin took.
#[derive(Debug)]
pub struct Signed {
    /// The request after the scheme was applied.
    pub request: SignedRequest,
    /// Time spent in the plugin call (queueing for a share included).
    pub plugin_time: Duration,
    /// For [`Delivery::Mock`]: the URL and headers with the secrets the
    /// plugin placed redacted (see [`sign::shown`]).
    pub shown: Option<(String, Vec<(String, String)>)>,
}

/// The call path. Cheap to share.
pub struct Broker {
    vault: Arc<Vault>,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker over `vault`, running plugins on `runtime` (the broker owns
    /// the runtime; the vault sees it only as a scheme catalogue).
    pub fn new(vault: Arc<Vault>, runtime: Arc<Runtime>) -> Broker {
        Broker { vault, runtime }
    }

    /// The plugin runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Step 2: take one snapshot of credential `name` for `caller` and check
    /// that the caller may use it. `scheme` and `config` describe a
    /// credential that only an override or the environment supplies (the
    /// CLI's `--scheme`/`--config`); agents get vault credentials only.
    pub async fn open(
        &self,
        caller: &Caller,
        name: &str,
        overrides: &Overrides,
        scheme: Option<(&str, Vec<(String, String)>)>,
    ) -> Result<Ticket, CallError> {
        let result = self.open_inner(caller, name, overrides, scheme).await;
        if let Err(e) = &result {
            self.record_refusal(caller, name, None, None, None, e.code);
        }
        result
    }

    async fn open_inner(
        &self,
        caller: &Caller,
        name: &str,
        overrides: &Overrides,
        scheme: Option<(&str, Vec<(String, String)>)>,
    ) -> Result<Ticket, CallError> {
        let org = caller.org();
        if matches!(caller, Caller::Agent(_)) {
            // Agents name vault credentials only: refuse what no credential
            // can be called before it reaches the store.
            crate::vault::model::CredentialName::parse(name).map_err(VaultError::from)?;
        }
        let record = self.vault.credential(org, name).await?;
        if let Caller::Agent(agent) = caller {
            let Some(record) = &record else {
                return Err(CallError::new(ErrorCode::CredentialNotFound, format!("no credential named `{name}`")));
            };
            if !record.attachments.agents.contains(&agent.name) {
                return Err(CallError::new(
                    ErrorCode::CredentialNotAttached,
                    format!(
                        "agent `{}` may not use credential `{name}`: it is not attached \
                         (latchkey credential attach {name} --agent {})",
                        agent.name, agent.name
                    ),
                ));
            }
        }
        // A record resolved for an earlier call: the same snapshot, its
        // call-independent part made already (see `Opened`); only the
        // secrets are opened, for this call. If they cannot be (another
        // process rotated the master key), the full path below reloads.
        if overrides.is_empty()
            && let Some(record) = &record
            && let Some(opened) = record.memo::<Opened>()
            && let Ok(secrets) = self.vault.open_record(record)
        {
            let cred = Arc::new(opened.credential(name, secrets));
            return Ok(Ticket {
                caller: caller.clone(),
                name: name.to_string(),
                record: Some(record.clone()),
                opened,
                cred,
            });
        }
        // The secrets come from the record just checked: one snapshot.
        let resolution = self.vault.resolve_snapshot(org, name, record.as_ref(), overrides).await?;
        let (scheme, config, version) = match (resolution.credential(), scheme) {
            (Some(c), _) => (c.scheme.clone(), c.config.clone(), c.version),
            (None, Some((s, config))) => (s.to_string(), config, 0),
            (None, None) => {
                return Err(CallError::new(
                    ErrorCode::InvalidArgument,
                    format!("`{name}` is not in the vault, so its scheme is unknown: give --scheme"),
                ));
            }
        };
        let plugin = self.runtime.get(&scheme)?;
        if resolution.resolved.layer != Layer::Vault {
            // Vault secrets were validated when stored; others are checked now.
            sign::check_credential(&self.runtime, &plugin, &config, &resolution.resolved.secrets)?;
        }
        let scope = resolution.cache_scope().map(Arc::from);
        let (record, resolved) = resolution.into_parts();
        let opened = Arc::new(Opened {
            layer: resolved.layer,
            source: resolved.source,
            plugin,
            config,
            scope,
            kept: Arc::default(),
            version,
            fingerprint: OnceLock::new(),
        });
        // Kept only for what the record alone decides: the vault's secrets,
        // with no per-call override.
        let opened = match &record {
            Some(record) if opened.layer == Layer::Vault && overrides.is_empty() => record.keep(opened),
            _ => opened,
        };
        let cred = Arc::new(opened.credential(name, resolved.secrets));
        Ok(Ticket { caller: caller.clone(), name: name.to_string(), record, opened, cred })
    }

    /// Steps 3–7: sign `input` with the ticket's credential for `delivery`,
    /// and commit the use before returning.
    pub async fn sign(&self, ticket: &Ticket, input: &SignInput, delivery: Delivery) -> Result<Signed, CallError> {
        // The URL is parsed once, by the input checks; a request they refuse
        // is recorded with its host when it has one.
        let prepared = match sign::prepare(input) {
            Ok(p) => p,
            Err(e) => {
                let host = url::Url::parse(&input.url).ok().and_then(|u| u.host_str().map(str::to_string));
                self.refused(ticket, host.as_deref(), e.code());
                return Err(e.into());
            }
        };
        let result = self.sign_inner(ticket, input, &prepared, delivery).await;
        if let Err(e) = &result {
            self.refused(ticket, Some(prepared.host()), e.code);
        }
        result
    }

    async fn sign_inner(
        &self,
        ticket: &Ticket,
        input: &SignInput,
        prepared: &sign::Prepared,
        delivery: Delivery,
    ) -> Result<Signed, CallError> {
        let host = prepared.host();
        ticket.check_destination(host)?;
        let for_agent = delivery == Delivery::Caller && matches!(ticket.caller, Caller::Agent(_));
        if for_agent && ticket.plugin().reads_secrets {
            // Refused before the call: not even its error text reaches the agent.
            return Err(granted_refusal(ticket));
        }

        let cred = ticket.call_credential();
        let started = Instant::now();
        // A request-independent scheme's answer for this credential state is
        // reused (checked and spliced afresh); other calls run the plugin.
        let applied = match self.runtime.apply_template(ticket.plugin(), &cred) {
            Some(applied) => applied,
            None => {
                let (runtime, plugin) = (self.runtime.clone(), ticket.plugin().clone());
                let (request, now) = (prepared.request().clone(), prepared.now());
                // Short calls run on this worker, long ones on a pool
                // thread (the pool's inline lane).
                let called = self
                    .runtime
                    .pool()
                    .run_call(
                        ticket.plugin().name(),
                        ticket.caller.org(),
                        move |lane| runtime.apply_call_in(&plugin, &cred, now, &request, lane),
                        |called| called.is_err(),
                    )
                    .await?;
                called.unwrap_or_else(|_| unreachable!("a call on a pool thread has its whole budget"))
            }
        };
        let applied = match applied {
            Ok(a) => a,
            Err(e) if ticket.plugin().reads_secrets => {
                // A plugin that reads raw secrets may quote one in its error.
                let text = e.to_string();
                if leak::find(&[text], ticket.secrets()).is_some() {
                    return Err(CallError::new(
                        e.code(),
                        format!(
                            "scheme `{}` failed (its message held a secret value and was withheld)",
                            ticket.scheme()
                        ),
                    ));
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let plugin_time = started.elapsed();
        // Derived only where they are used: the scan text for an answer to an
        // agent, the redacted view for a mock answer.
        let produced = for_agent.then(|| sign::produced(&applied.edits));
        let shown = (delivery == Delivery::Mock).then(|| sign::shown(prepared, &applied.edits));
        let signed = sign::finish(prepared, applied.edits);

        if let Some(produced) = &produced {
            release_check(ticket, &signed, produced, input, applied.digested)?;
        }

        // Without the salt no use can be recorded as it must be: fail closed.
        let fingerprint = match ticket.opened.fingerprint.get() {
            Some(f) => f.clone(),
            None => {
                let f = self.vault.fingerprint(ticket.secrets()).await.map_err(|e| {
                    CallError::new(
                        ErrorCode::AuditUnavailable,
                        format!("the audit fingerprint cannot be computed ({e}); nothing was sent"),
                    )
                })?;
                ticket.opened.fingerprint.get_or_init(|| f).clone()
            }
        };
        self.vault
            .record_use_durable(UseEvent {
                org: ticket.caller.org().to_string(),
                credential: ticket.name.clone(),
                agent: Some(ticket.caller.name()),
                destination: Some(host.to_string()),
                outcome: "ok".into(),
                layer: Some(ticket.layer()),
                version: ticket.audit_version(),
                fingerprint: Some(fingerprint),
            })
            .await?;
        Ok(Signed { request: signed, plugin_time, shown })
    }

    /// Record that a call with this ticket was refused after step 2 (by a
    /// surface's own check between steps, or by a later step).
    pub fn refused(&self, ticket: &Ticket, host: Option<&str>, code: ErrorCode) {
        self.record_refusal(&ticket.caller, &ticket.name, host, Some(ticket.layer()), ticket.audit_version(), code);
    }

    fn record_refusal(
        &self,
        caller: &Caller,
        name: &str,
        host: Option<&str>,
        layer: Option<Layer>,
        version: Option<u64>,
        code: ErrorCode,
    ) {
        self.vault.record_use(UseEvent {
            org: caller.org().to_string(),
            // The name as asked for, escaped: a NUL or a control character
            // must not make the audit store refuse the row.
            credential: crate::plugin::sanitize_for_log(name, 200),
            agent: Some(caller.name()),
            destination: host.map(str::to_string),
            outcome: code.to_string(),
            layer,
            version,
            fingerprint: None,
        });
    }
}

/// Step 6: an answer handed to an agent must not carry a secret.
fn release_check(
    ticket: &Ticket,
    signed: &SignedRequest,
    produced: &[String],
    input: &SignInput,
    digested: bool,
) -> Result<(), CallError> {
    let (name, scheme) = (&ticket.name, ticket.scheme());
    if ticket.plugin().reads_secrets {
        return Err(granted_refusal(ticket));
    }
    if signed.carries_secret {
        return Err(CallError::new(
            ErrorCode::SecretInOutput,
            format!(
                "credential `{name}` uses scheme `{scheme}`, which puts the secret itself into the request; \
                 /v1/sign would hand it to the agent. Send the call through a proxy route instead"
            ),
        ));
    }
    if digested {
        return Err(CallError::new(
            ErrorCode::SecretInOutput,
            format!(
                "scheme `{scheme}` hashed a secret field of credential `{name}` that is not an identifier \
                 (crypto.sha256-parts); a bare hash of a secret can be guessed offline, so /v1/sign does not \
                 hand it to the agent. Send the call through a proxy route instead"
            ),
        ));
    }
    // Masking only takes text away (it puts a NUL, in no alphabet the scan
    // decodes, where the caller's text was), so what it finds in the masked
    // answer it finds in the whole one: an answer with no secret in it at
    // all, the usual case, needs no masking.
    if leak::find(produced, ticket.secrets()).is_none() {
        return Ok(());
    }
    // What the caller sent and the plugin echoes (a body hash, header names)
    // is masked first, so the scan cannot be used to test guesses.
    let mut caller: Vec<&str> = vec![input.url.as_str()];
    for (n, v) in &input.headers {
        caller.extend([n.as_str(), v.as_str()]);
    }
    caller.extend(input.url.split(['/', '?', '&', '=', ';', ',', ':']));
    if let sign::BodyDigest::Given(hex) = &input.body_digest {
        caller.push(hex);
    }
    caller.retain(|c| c.len() >= leak::MIN_SCANNED);
    caller.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let produced: Vec<String> = produced
        .iter()
        .map(|p| caller.iter().fold(p.clone(), |acc, c| if acc.contains(c) { acc.replace(c, "\0") } else { acc }))
        .collect();
    if let Some(field) = leak::find(&produced, ticket.secrets()) {
        tracing::warn!(credential = %name, scheme, field, "plugin answer holds an undeclared secret value; refused");
        return Err(CallError::new(
            ErrorCode::SecretInOutput,
            format!(
                "the answer of scheme `{scheme}` for credential `{name}` contains a secret value in a form its \
                 declaration does not allow; refused (the broker's log names the field)"
            ),
        ));
    }
    Ok(())
}

fn granted_refusal(ticket: &Ticket) -> CallError {
    CallError::new(
        ErrorCode::SecretInOutput,
        format!(
            "credential `{}` uses scheme `{}`, which reads raw secret values (it is granted \
             latchkey:plugin/secrets), so no answer of it can be shown to hold no secret; /v1/sign would hand \
             it to the agent. Send the call through a proxy route instead",
            ticket.name,
            ticket.scheme()
        ),
    )
}
