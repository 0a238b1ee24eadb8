//! JWT agent identity: the host side.
//!
//! The host finds the identity provider a token claims to come from (by its
//! unverified `iss`, used only to choose), makes sure it holds that
//! provider's JWKS, and hands token, JWKS and policy to the `jwt` plugin's
//! `verifier` export, which decides. Only then is the subject claim mapped
//! to an agent.
//!
//! JWKS fetching, for providers configured with a URL:
//!
//! - HTTPS only (checked when the provider is stored), through the same
//!   client and address policy as upstreams, so a JWKS URL cannot reach the
//!   metadata service or a private address the operator did not allow;
//! - a 5 s timeout and a 256 KiB cap, a JSON object with a `keys` array and
//!   no private key material;
//! - refreshed in the background once older than the provider's refresh
//!   interval (the old keys serve meanwhile), and at once when a token names
//!   a `kid` the cached set lacks, such fetches at most once per
//!   [`MIN_REFETCH`] per provider, so a stream of made-up `kid`s cannot turn the broker into a
//!   request amplifier against the identity provider;
//! - if refreshing keeps failing, cached keys are used until they are 12
//!   refresh intervals old (at least an hour), then calls fail with
//!   `jwks_unavailable` rather than trust keys the issuer may have revoked;
//!   through an outage a background refresh, an unknown `kid` and a call
//!   past that grace each try the issuer at most once per [`MIN_REFETCH`],
//!   so a down issuer is not met with a fetch per call.

use crate::error::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt as _;

use super::{ApiError, AppState};
use crate::plugin::{Datetime, PluginError, SchemeError};
use crate::vault::agents::Agent;
use crate::vault::identity::{IdentityProvider, JwksSource, MAX_JWKS_BYTES, check_jwks};

/// The least time between two fetches of one provider's JWKS caused by an
/// unknown `kid`.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One fetched key set.
#[derive(Debug, Clone)]
struct Keys {
    json: Arc<str>,
    kids: HashSet<String>,
    fetched: Instant,
    source: JwksSource,
}

#[derive(Default)]
struct Entry {
    keys: Mutex<Option<Keys>>,
    /// When a token's unknown `kid` last caused a fetch.
    last_kid_refetch: Mutex<Option<Instant>>,
    /// When a background refresh was last started.
    last_refresh: Mutex<Option<Instant>>,
    /// When a fetch last failed: past the grace period, calls fail at once
    /// until [`MIN_REFETCH`] after it instead of each fetching again.
    last_failure: Mutex<Option<Instant>>,
    refreshing: std::sync::atomic::AtomicBool,
    fetch: tokio::sync::Mutex<()>,
}

/// The JWKS of every identity provider in use, by (org, name), and the
/// tokens verified against them.
#[derive(Default)]
pub struct JwksStore {
    entries: Mutex<HashMap<(String, String), Arc<Entry>>>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// How far the store's clock runs ahead of the system's, in
    /// milliseconds: 0 but in tests of refresh, grace and expiry
    /// ([`JwksStore::advance`]).
    ahead_ms: std::sync::atomic::AtomicU64,
}

/// A token that verified: who it names, and until when that holds without
/// verifying again. Keyed by the token's SHA-256, never the token.
#[derive(Clone)]
struct Verified {
    org: String,
    idp: String,
    subject: String,
    /// Unix seconds: the token's `exp`, at most [`VERIFIED_FOR`] after it verified.
    until: i64,
    /// The vault's change generation when it verified: any change (an
    /// identity provider replaced or deleted, an agent rebound) drops it.
    generation: u64,
}

/// How long a verified token is trusted without verifying again, at most
/// (its `exp` is the other bound). A key removed from the issuer's JWKS
/// stops being honoured within this time.
const VERIFIED_FOR: i64 = 60;

/// Verified tokens kept at most; beyond, expired ones go, then all.
const MAX_VERIFIED: usize = 10_000;

impl JwksStore {
    /// The store's clock: key-set ages, refresh intervals, the grace period
    /// and the unknown-`kid` rate limit are all read from it.
    fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.ahead_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Move the store's clock `by` ahead, as if that much time had passed
    /// (for tests of the refresh interval, the grace period and the
    /// unknown-`kid` rate limit; a verified token's trust is bounded by its
    /// `exp` and the wall clock, not by this).
    #[doc(hidden)]
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn verified(&self, hash: &[u8; 32], now: i64, generation: u64) -> Option<Verified> {
        let map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        map.get(hash).filter(|v| v.until > now && v.generation == generation).cloned()
    }

    fn remember(&self, hash: [u8; 32], v: Verified, now: i64) {
        let mut map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_VERIFIED {
            map.retain(|_, e| e.until > now);
            if map.len() >= MAX_VERIFIED {
                map.clear();
            }
        }
        map.insert(hash, v);
    }
}

/// The `kid`s of a JWKS document's keys (none when it is not one).
/// Public only for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn kids_of(doc: &str) -> HashSet<String> {
    serde_json::from_str::<serde_json::Value>(doc)
        .ok()
        .and_then(|v| v.get("keys").and_then(|k| k.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.get("kid").and_then(|x| x.as_str()).map(str::to_string))
        .collect()
}

fn unavailable(p: &IdentityProvider, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::JwksUnavailable,
        format!("the JWKS of identity provider `{}` cannot be fetched: {why}", p.name),
    )
}

impl JwksStore {
    fn entry(&self, p: &IdentityProvider) -> Arc<Entry> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((p.org.clone(), p.name.clone())).or_default().clone()
    }

    /// The key set to verify a token from `p` naming `kid`.
    async fn keys_for(
        &self,
        app: &Arc<AppState>,
        p: &IdentityProvider,
        kid: Option<&str>,
    ) -> Result<Arc<str>, ApiError> {
        let entry = self.entry(p);
        let current = entry.keys.lock().unwrap_or_else(|e| e.into_inner()).clone().filter(|k| k.source == p.jwks);
        let url = match &p.jwks {
            JwksSource::Static(doc) => {
                if let Some(k) = current {
                    return Ok(k.json);
                }
                let keys = Keys {
                    json: Arc::from(doc.as_str()),
                    kids: kids_of(doc),
                    fetched: self.now(),
                    source: p.jwks.clone(),
                };
                *entry.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some(keys.clone());
                return Ok(keys.json);
            }
            JwksSource::Url(url) => url.clone(),
        };
        let refresh = Duration::from_secs(p.refresh_seconds.max(1) as u64);
        let max_stale = (refresh * 12).max(Duration::from_secs(3600));
        match current {
            None => self.fetch_now(app, p, &entry, &url, None).await,
            Some(k) => {
                let now = self.now();
                let age = now.saturating_duration_since(k.fetched);
                let unknown_kid = kid.is_some_and(|kid| !k.kids.contains(kid));
                if unknown_kid && claim_slot(&entry.last_kid_refetch, now) {
                    // The issuer may have rotated: fetch now, once per MIN_REFETCH.
                    return match self.fetch_now(app, p, &entry, &url, Some(k.fetched)).await {
                        Ok(json) => Ok(json),
                        Err(e) if age < max_stale => {
                            tracing::warn!(idp = %p.name, error = %e.message, "JWKS refresh for an unknown kid failed; using the cached keys");
                            Ok(k.json)
                        }
                        Err(e) => Err(e),
                    };
                }
                if age >= max_stale {
                    // Failing closed; one fetch per MIN_REFETCH tries again,
                    // so an outage is not met with a fetch per call.
                    let failed = *entry.last_failure.lock().unwrap_or_else(|e| e.into_inner());
                    if failed.is_some_and(|t| now.saturating_duration_since(t) < MIN_REFETCH) {
                        return Err(unavailable(
                            p,
                            "the last fetch failed and the cached keys are past their grace period",
                        ));
                    }
                    return self.fetch_now(app, p, &entry, &url, Some(k.fetched)).await;
                }
                // One background refresh at a time, and after one is started
                // (it may fail: an outage) none again for MIN_REFETCH.
                if age >= refresh
                    && claim_slot(&entry.last_refresh, now)
                    && !entry.refreshing.swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    let (app2, p2, entry2, url2) = (app.clone(), p.clone(), entry.clone(), url.clone());
                    tokio::spawn(async move {
                        let store = &app2.jwks;
                        if let Err(e) = store.fetch_now(&app2, &p2, &entry2, &url2, Some(k.fetched)).await {
                            tracing::warn!(idp = %p2.name, error = %e.message, "periodic JWKS refresh failed; the cached keys stay in use");
                        }
                        entry2.refreshing.store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                Ok(k.json)
            }
        }
    }

    /// Fetch (single-flight per provider). `seen` is the fetch time of the
    /// keys the caller saw: when another caller fetched since, its result is
    /// used instead of fetching again.
    async fn fetch_now(
        &self,
        app: &Arc<AppState>,
        p: &IdentityProvider,
        entry: &Entry,
        url: &str,
        seen: Option<Instant>,
    ) -> Result<Arc<str>, ApiError> {
        let _guard = entry.fetch.lock().await;
        if let Some(k) = entry.keys.lock().unwrap_or_else(|e| e.into_inner()).clone()
            && k.source == p.jwks
            && Some(k.fetched) != seen
        {
            return Ok(k.json);
        }
        let doc = match fetch(app, url).await {
            Ok(doc) => doc,
            Err(why) => {
                *entry.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.now());
                return Err(unavailable(p, why));
            }
        };
        let keys =
            Keys { json: Arc::from(doc.as_str()), kids: kids_of(&doc), fetched: self.now(), source: p.jwks.clone() };
        tracing::info!(idp = %p.name, keys = keys.kids.len(), "fetched the JWKS");
        app.metrics.jwks_fetches.inc();
        *entry.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some(keys.clone());
        Ok(keys.json)
    }
}

/// Whether what `slot` times (an unknown-`kid` fetch, a background
/// refresh) may happen now, at most once per [`MIN_REFETCH`] per
/// provider; claims it if so.
fn claim_slot(slot: &Mutex<Option<Instant>>, now: Instant) -> bool {
    let mut last = slot.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| now.saturating_duration_since(t) < MIN_REFETCH) {
        return false;
    }
    *last = Some(now);
    true
}

/// GET a JWKS document.
async fn fetch(app: &AppState, url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    if let Some(why) = app.config.address_policy.literal_refusal(&parsed) {
        return Err(format!("the JWKS URL's address is refused: {why}"));
    }
    let request = axum::http::Request::builder()
        .method("GET")
        .uri(url)
        .header("accept", "application/json, application/jwk-set+json")
        .header("user-agent", concat!("latchkey/", env!("CARGO_PKG_VERSION")))
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, app.client.get().request(request))
        .await
        .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        })?;
    if response.status() != axum::http::StatusCode::OK {
        return Err(format!("{url} answered {}", response.status()));
    }
    let limited = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES);
    let bytes = tokio::time::timeout(FETCH_TIMEOUT, limited.collect())
        .await
        .map_err(|_| "the body did not arrive in time".to_string())?
        .map_err(|_| format!("the body is over {MAX_JWKS_BYTES} bytes or broke off"))?
        .to_bytes();
    let doc = String::from_utf8(bytes.to_vec()).map_err(|_| "the body is not UTF-8".to_string())?;
    check_jwks(&doc).map_err(|e| e.to_string())?;
    Ok(doc)
}

/// Whether a bearer value looks like a compact JWS (so it is treated as a
/// JWT rather than as a malformed agent token).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The unverified header `kid` and claims `iss` of a compact JWS: used only
/// to choose the provider and its keys, never trusted. Public only for the
/// fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn peek(token: &str) -> Option<(Option<String>, String)> {
    let mut parts = token.split('.');
    let (h, c) = (parts.next()?, parts.next()?);
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let kid = header.get("kid").and_then(|k| k.as_str()).map(str::to_string);
    let iss = claims.get("iss").and_then(|i| i.as_str())?.to_string();
    Some((kid, iss))
}

fn rejected(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::TokenRejected, message)
}

/// Authenticate an agent by a JWT. A token that verified is trusted until
/// its `exp` (at most [`VERIFIED_FOR`] seconds, and only while nothing in
/// the vault changes) without running the verifier again; the agent it
/// names is looked up on every call, so disabling the agent takes effect
/// at once.
pub async fn authenticate(app: &Arc<AppState>, token: &str) -> Result<Agent, ApiError> {
    let hash: [u8; 32] =
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().try_into().expect("SHA-256 is 32 bytes");
    let unix_now = time::OffsetDateTime::now_utc().unix_timestamp();
    let generation = app.vault.change_generation();
    if let Some(v) = app.jwks.verified(&hash, unix_now, generation) {
        return match app.vault.agent_by_jwt_subject(&v.org, &v.idp, &v.subject).await? {
            Some(agent) => Ok(agent),
            None => Err(ApiError::new(
                ErrorCode::UnknownAgent,
                format!("the JWT is valid, but no enabled agent is bound to it in identity provider `{}`", v.idp),
            )),
        };
    }
    let (kid, iss) = peek(token).ok_or_else(|| rejected("the bearer value is not a JWT with an `iss` claim"))?;
    let providers = app.vault.identity_providers().await?;
    let trusting: Vec<&IdentityProvider> = providers.iter().filter(|p| p.issuer == iss).collect();
    if trusting.is_empty() {
        tracing::warn!(issuer = %crate::plugin::sanitize_for_log(&iss, 200), "JWT from an issuer no identity provider trusts");
        return Err(rejected(format!(
            "no identity provider trusts issuer `{}` (latchkey idp add NAME --issuer …)",
            crate::plugin::sanitize_for_log(&iss, 200)
        )));
    }
    // The verifier is the plugin that exports `verifier`, whatever its name.
    let plugin = app.broker.runtime().verifier()?;
    let now = time::OffsetDateTime::now_utc();
    let now = Datetime { seconds: now.unix_timestamp(), nanoseconds: now.nanosecond() };
    let mut last = None;
    for p in trusting {
        let jwks = app.jwks.keys_for(app, p, kid.as_deref()).await?;
        let started = Instant::now();
        // On the plugin call pool, like every plugin call, under a share of
        // its own: a flood of tokens cannot take the signing scheme's share.
        let verify_key: std::sync::Arc<str> = format!("{}#verify", plugin.name()).into();
        let (runtime, verifier, policy, token_owned) =
            (app.broker.runtime().clone(), plugin.clone(), p.policy(), token.to_string());
        let verified = match app
            .broker
            .runtime()
            .pool()
            .run(&verify_key, &p.org, move || runtime.verify(&verifier, &policy, now, &jwks, &token_owned))
            .await
        {
            Ok(v) => v,
            Err(e) => return Err(ApiError::new(ErrorCode::PluginBusy, e.to_string())),
        };
        app.metrics.observe_plugin("jwt-verify", started.elapsed());
        match verified {
            Ok(claims) => {
                let claims: serde_json::Value = serde_json::from_str(&claims)
                    .map_err(|_| rejected("the verifier returned claims that are not JSON"))?;
                let subject = claims.get(&p.subject_claim).and_then(|s| s.as_str()).ok_or_else(|| {
                    rejected(format!("the verified token has no string `{}` claim naming the agent", p.subject_claim))
                })?;
                // The provider's longest lifetime (THREATS.md case 42): an
                // `exp` far ahead, or far after `iat`, is refused, so a token
                // minted to live for ever does not.
                let max = p.max_token_lifetime_seconds;
                let exp = claims.get("exp").and_then(serde_json::Value::as_i64);
                let iat = claims.get("iat").and_then(serde_json::Value::as_i64);
                let too_long = match exp {
                    None => true,
                    Some(exp) => {
                        exp.saturating_sub(unix_now) > max.saturating_add(p.leeway_seconds)
                            || iat.is_some_and(|iat| exp.saturating_sub(iat) > max)
                    }
                };
                if too_long {
                    tracing::warn!(idp = %p.name, "JWT lives longer than its identity provider allows");
                    last = Some(rejected(format!(
                        "JWT rejected by identity provider `{}`: its exp must be an integer at most {max} s after \
                         its iat and after now (the provider's longest token lifetime)",
                        p.name
                    )));
                    continue;
                }
                if let Some(exp) = exp {
                    let until = exp.min(unix_now + VERIFIED_FOR);
                    let v = Verified {
                        org: p.org.clone(),
                        idp: p.name.clone(),
                        subject: subject.to_string(),
                        until,
                        generation,
                    };
                    app.jwks.remember(hash, v, unix_now);
                }
                return match app.vault.agent_by_jwt_subject(&p.org, &p.name, subject).await? {
                    Some(agent) => Ok(agent),
                    None => {
                        let subject = crate::plugin::sanitize_for_log(subject, 200);
                        tracing::warn!(idp = %p.name, subject = %subject, "verified JWT for no (enabled) agent");
                        Err(ApiError::new(
                            ErrorCode::UnknownAgent,
                            format!(
                                "the JWT is valid, but no enabled agent is bound to {} `{subject}` of identity provider \
                                 `{}` (latchkey agent bind-jwt NAME --idp {} --subject '{subject}')",
                                p.subject_claim, p.name, p.name
                            ),
                        ))
                    }
                };
            }
            Err(PluginError::Scheme { error: SchemeError::TokenRejected(why), .. }) => {
                tracing::warn!(idp = %p.name, reason = %why, "JWT rejected");
                last = Some(rejected(format!("JWT rejected by identity provider `{}`: {why}", p.name)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| rejected("JWT rejected")))
}
