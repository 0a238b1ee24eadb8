//! The operator's console (`/ui`): server-rendered pages over the same
//! vault operations as the admin API and the CLI.
//!
//! - **Sign-in** with the admin token opens a session: a random id in a
//!   cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` on a TLS
//!   listener), held in this process's memory by its SHA-256, ending after
//!   30 idle minutes or 8 hours, or at sign-out. Without an admin token the
//!   console is refused with a page that says how to enable it.
//! - **Every state change is a POST carrying the session's CSRF token**
//!   (compared in constant time); one without it is refused (403).
//! - **Pages are built with maud**, which escapes every value it inserts,
//!   so a config value or a JWT subject holding markup shows as text. The
//!   one script and the one style sheet are files inside the binary, served
//!   under a Content-Security-Policy that allows nothing inline and nothing
//!   from elsewhere; `X-Frame-Options: DENY`; `Cache-Control: no-store`.
//! - **No secret value ever reaches a page**: secret inputs are password
//!   fields that are never filled back, and the views shown are the admin
//!   API's (field names, never values). A token shown once (a new agent's,
//!   a registration token) is in that one answer only.
//!
//! Sessions live in the process: behind a load balancer, pin a console
//! user to one replica (or sign in again on another).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use ring::digest;
use ring::rand::SecureRandom as _;
use serde::Deserialize;

use super::views::{AgentView, IdpView, RouteView, TokenView};
use super::{AppState, admin};
use crate::error::ErrorCode;
use crate::secret::Secret;
use crate::vault::agents::Route;
use crate::vault::identity::{IdentityProvider, JwksSource};
use crate::vault::model::{DEFAULT_ORG, NoticeKind, RawCredential};
use crate::vault::{AttachmentKind, AuditAction, AuditFilter, CredentialInfo, VaultError};

const COOKIE: &str = "lk_console";
const IDLE: Duration = Duration::from_secs(30 * 60);
const LIFETIME: Duration = Duration::from_secs(8 * 3600);
const PAGE: usize = 50;

const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The console's sessions, by the SHA-256 of their id, and the failed
/// sign-ins of the current minute.
pub struct Sessions(Mutex<HashMap<String, Session>>, Mutex<(Instant, u32)>);

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions(Mutex::default(), Mutex::new((Instant::now(), 0)))
    }
}

/// Failed sign-ins allowed per minute, in the whole process.
const MAX_FAILED_SIGN_INS: u32 = 10;

struct Session {
    csrf: String,
    created: Instant,
    seen: Instant,
    org: String,
    flash: Vec<Flash>,
    /// A token to show once, on the next GET of `/ui/once` (post, redirect,
    /// get: reloading the page shows it no more and re-issues nothing).
    reveal: Option<Reveal>,
}

struct Reveal {
    active: &'static str,
    title: &'static str,
    what: String,
    token: Secret,
}

#[derive(Clone)]
struct Flash {
    ok: bool,
    text: String,
}

fn session_key(id: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, id.as_bytes()))
}

fn random_token() -> Option<String> {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some(base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b))
}

impl Sessions {
    /// A new session, or `None` when the system's random source fails
    /// (never a predictable id).
    fn open(&self) -> Option<(String, String)> {
        let (id, csrf) = (random_token()?, random_token()?);
        let now = Instant::now();
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, s| now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < LIFETIME);
        let session = Session {
            csrf: csrf.clone(),
            created: now,
            seen: now,
            org: DEFAULT_ORG.into(),
            flash: Vec::new(),
            reveal: None,
        };
        all.insert(session_key(&id), session);
        Some((id, csrf))
    }

    /// Count a failed sign-in; `false` once more than [`MAX_FAILED_SIGN_INS`]
    /// failed in the last minute (then every attempt is refused until the
    /// minute is over, so the admin token cannot be guessed at speed).
    fn sign_in_allowed(&self, failed: bool) -> bool {
        let mut f = self.1.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(f.0) > Duration::from_secs(60) {
            *f = (now, 0);
        }
        if failed {
            f.1 += 1;
        }
        f.1 <= MAX_FAILED_SIGN_INS
    }

    /// The live session `id`, touched, with its flash messages taken.
    fn get(&self, id: &str) -> Option<(String, String, Vec<Flash>)> {
        let now = Instant::now();
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = session_key(id);
        let s = all.get_mut(&key)?;
        if now.duration_since(s.seen) >= IDLE || now.duration_since(s.created) >= LIFETIME {
            all.remove(&key);
            return None;
        }
        s.seen = now;
        Some((s.csrf.clone(), s.org.clone(), std::mem::take(&mut s.flash)))
    }

    fn with(&self, id: &str, f: impl FnOnce(&mut Session)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = all.get_mut(&session_key(id)) {
            f(s);
        }
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&session_key(id));
    }
}

/// A signed-in operator: the session, its CSRF token, the organisation it
/// works in, and the messages to show once.
struct Console {
    id: String,
    csrf: String,
    org: String,
    flash: Vec<Flash>,
    actor: String,
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<Arc<AppState>> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Console, Response> {
        if app.config.admin_token_sha256.is_none() {
            return Err(disabled());
        }
        let id = cookie(&parts.headers, COOKIE).ok_or_else(to_login)?.to_string();
        let (csrf, org, flash) = app.console.get(&id).ok_or_else(to_login)?;
        Ok(Console { id, csrf, org, flash, actor: format!("console:{}", app.config.admin_token_name) })
    }
}

impl Console {
    fn flash(&self, app: &AppState, ok: bool, text: impl Into<String>) {
        let text = text.into();
        app.console.with(&self.id, |s| s.flash.push(Flash { ok, text }));
    }

    /// Flash what a change did: its message, or the refusal with its code.
    fn report(&self, app: &AppState, result: Result<String, VaultError>) {
        match result {
            Ok(msg) => self.flash(app, true, msg),
            Err(e) => self.refused(app, &e),
        }
    }

    /// Flash a refusal with its stable code.
    fn refused(&self, app: &AppState, e: &VaultError) {
        self.flash(app, false, format!("{e} ({})", e.code()));
    }

    /// The form's fields, once its CSRF token is the session's.
    fn checked(&self, form: Vec<(String, String)>) -> Result<Fields, Box<Response>> {
        let fields = Fields(form);
        let given = fields.get("csrf").unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), self.csrf.as_bytes())) {
            let body = message_page(
                "Refused",
                "This form is missing its security token or is out of date. Reload the page and try again.",
            );
            return Err(Box::new((StatusCode::FORBIDDEN, body).into_response()));
        }
        Ok(fields)
    }
}

/// A form's fields, in order.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_string()
    }

    fn on(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v == "on" || v == "true")
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty()).collect()
    }

    /// `prefix.NAME` fields with a value, as (NAME, value).
    fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }
}

fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

fn disabled() -> Response {
    let body = message_page(
        "Console disabled",
        "The console signs in with the admin token, and none is configured: start the broker with \
         LATCHKEY_ADMIN_TOKEN set (16 characters or more).",
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

fn back(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// The console's routes (nested under `/ui`), with its security headers.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/credentials") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/org", post(switch_org))
        .route("/static/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route("/static/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }))
        .route("/credentials", get(credentials).post(create_credential))
        .route("/new-credential", get(new_credential))
        .route("/credentials/{name}", get(credential))
        .route("/credentials/{name}/{action}", post(credential_action))
        .route("/routes", get(routes_page).post(add_route))
        .route("/routes/{name}/delete", post(delete_route))
        .route("/agents", get(agents).post(create_agent))
        .route("/agents/{name}/{action}", post(agent_action))
        .route("/tokens", get(tokens).post(create_token))
        .route("/tokens/{prefix}/revoke", post(revoke_token))
        .route("/idps", get(idps).post(add_idp))
        .route("/idps/{name}/delete", post(delete_idp))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}", get(plugin))
        .route("/audit", get(audit))
        .route("/once", get(shown_once))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// ---------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------

const NAV: [(&str, &str); 7] = [
    ("credentials", "Credentials"),
    ("routes", "Routes"),
    ("agents", "Agents"),
    ("tokens", "Registration tokens"),
    ("idps", "Identity providers"),
    ("plugins", "Plugins"),
    ("audit", "Audit"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Latchkey" }
            link rel="stylesheet" href="/ui/static/console.css";
            script src="/ui/static/console.js" defer {}
        }
    }
}

fn message_page(title: &str, text: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body.bare { main { h1 { (title) } p { (text) } p { a href="/ui/login" { "Sign in" } } } }
            }
        }
        .into_string(),
    )
}

fn csrf(c: &Console) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.csrf); }
}

/// A POST button form, with an optional confirmation the script asks for.
fn action(c: &Console, url: &str, label: &str, confirm: Option<&str>, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(url) data-confirm=[confirm] {
            (csrf(c))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A path segment: names are `[A-Za-z0-9_-]`, anything else is encoded.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

async fn orgs(app: &AppState, current: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::from([DEFAULT_ORG.to_string(), current.to_string()]);
    if let Ok(list) = app.vault.list(None).await {
        all.extend(list.iter().map(|c| c.credential.org.to_string()));
    }
    if let Ok(list) = app.vault.list_agents(None).await {
        all.extend(list.into_iter().map(|a| a.org));
    }
    all
}

async fn page(app: &AppState, c: &Console, active: &str, title: &str, body: Markup) -> Response {
    let orgs = orgs(app, &c.org).await;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    a.brand href="/ui/credentials" { "Latchkey" }
                    nav {
                        @for (key, label) in NAV {
                            a href={ "/ui/" (key) } class=[(key == active).then_some("active")] { (label) }
                        }
                    }
                    form.org method="post" action="/ui/org" {
                        (csrf(c))
                        label { "Organisation " select name="org" id="org-switch" {
                            @for o in &orgs { option value=(o) selected[*o == c.org] { (o) } }
                        } }
                        input type="text" name="new_org" placeholder="another…" size="10";
                        button type="submit" { "Switch" }
                    }
                    form.inline method="post" action="/ui/logout" { (csrf(c)) button type="submit" id="sign-out" { "Sign out" } }
                }
                main {
                    @for f in &c.flash {
                        p class={ "flash " (if f.ok { "ok" } else { "error" }) } role="status" { (f.text) }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

fn when(t: &Option<String>) -> String {
    t.as_deref()
        .map(|t| t.split('.').next().unwrap_or(t).replace('T', " ").trim_end_matches('Z').to_string())
        .unwrap_or_else(|| "never".into())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

// ---------------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------------

fn login_form(error: Option<&str>) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Sign in"))
                body.bare {
                    main {
                        h1 { "Latchkey console" }
                        @if let Some(e) = error { p.flash.error role="alert" { (e) } }
                        form method="post" action="/ui/login" id="login" {
                            label { "Admin token " input type="password" name="token" autocomplete="off" required autofocus; }
                            button type="submit" { "Sign in" }
                        }
                        p.hint { "The admin token is the broker's LATCHKEY_ADMIN_TOKEN." }
                    }
                }
            }
        }
        .into_string(),
    )
}

async fn login_page(State(app): State<Arc<AppState>>) -> Response {
    if app.config.admin_token_sha256.is_none() {
        return disabled();
    }
    login_form(None).into_response()
}

async fn login(
    State(app): State<Arc<AppState>>,
    tls: Option<axum::Extension<super::auth::ArrivedOverTls>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let Some(expected) = &app.config.admin_token_sha256 else { return disabled() };
    if !app.console.sign_in_allowed(false) {
        let page = login_form(Some("Too many failed sign-ins: wait a minute and try again."));
        return (StatusCode::TOO_MANY_REQUESTS, page).into_response();
    }
    let token = Secret::new(Fields(form).get("token").unwrap_or_default().trim());
    if !super::auth::admin_token_matches(expected, token.expose()) {
        app.console.sign_in_allowed(true);
        tracing::warn!(target: "latchkey::audit", action = "console-sign-in", outcome = "invalid_admin_token", "audit");
        return (StatusCode::UNAUTHORIZED, login_form(Some("That is not the admin token."))).into_response();
    }
    let Some((id, _)) = app.console.open() else {
        let page = message_page("Sign-in failed", "The system's random source failed; no session was opened.");
        return (StatusCode::INTERNAL_SERVER_ERROR, page).into_response();
    };
    tracing::info!(target: "latchkey::audit", action = "console-sign-in", outcome = "ok", "audit");
    // Secure on a TLS listener, and behind a proxy that terminated TLS.
    let forwarded_https =
        headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let secure = if tls.is_some() || forwarded_https { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}", LIFETIME.as_secs());
    let mut response = Redirect::to("/ui/credentials").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(c: Console, State(app): State<Arc<AppState>>, Form(form): Form<Vec<(String, String)>>) -> Response {
    if let Err(r) = c.checked(form) {
        return *r;
    }
    app.console.close(&c.id);
    let mut response = to_login();
    let expired = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn switch_org(c: Console, State(app): State<Arc<AppState>>, Form(form): Form<Vec<(String, String)>>) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let wanted = Some(f.text("new_org")).filter(|o| !o.is_empty()).unwrap_or_else(|| f.text("org"));
    match crate::vault::parse_org(Some(&wanted)) {
        Ok(org) => app.console.with(&c.id, |s| s.org = org.to_string()),
        Err(e) => c.flash(&app, false, e.to_string()),
    }
    back("/ui/credentials")
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    state: Option<String>,
}

async fn credentials(c: Console, State(app): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    let all = match app.vault.list(Some(&c.org)).await {
        Ok(all) => all,
        Err(e) => return page(&app, &c, "credentials", "Credentials", error_body(&e.to_string())).await,
    };
    let checks = app.vault.check_states().await.unwrap_or_default();
    let needle = q.q.clone().unwrap_or_default().to_lowercase();
    let state = q.state.clone().unwrap_or_else(|| "all".into());
    let shown: Vec<&CredentialInfo> = all
        .iter()
        .filter(|i| {
            let v = i.view();
            let hay = format!(
                "{} {} {} {} {}",
                v.name,
                v.scheme,
                v.destinations.join(" "),
                v.attachments.agents.iter().cloned().collect::<Vec<_>>().join(" "),
                v.attachments.routes.iter().cloned().collect::<Vec<_>>().join(" ")
            )
            .to_lowercase();
            (needle.is_empty() || hay.contains(&needle)) && (state == "all" || v.state == state)
        })
        .collect();
    let body = html! {
        form.filters method="get" action="/ui/credentials" {
            input type="search" name="q" value=[q.q.as_deref()] placeholder="Filter by name, scheme, destination, agent or route" id="filter";
            select name="state" {
                @for s in ["all", "enabled", "disabled"] { option value=(s) selected[state == s] { (s) } }
            }
            button type="submit" { "Filter" }
            a.button href="/ui/new-credential" id="add-credential" { "Add a credential" }
        }
        @if shown.is_empty() {
            p.none { @if all.is_empty() { "No credentials in " (c.org) " yet." } @else { "No credential matches." } }
        } @else {
            table id="credentials" {
                thead { tr { th { "Name" } th { "Scheme" } th { "State" } th { "Provider check" } th { "Destinations" } th { "Agents" } th { "Routes" } th { "Last used" } } }
                tbody {
                    @for i in &shown {
                        @let v = i.view();
                        @let check = checks.get(&(v.org.clone(), v.name.clone())).map(|(s, _)| s.clone()).unwrap_or_else(|| "-".into());
                        tr {
                            td { a href={ "/ui/credentials/" (seg(&v.name)) } { (v.name) } }
                            td { (v.scheme) }
                            td { span class={ "state " (v.state) } { (v.state) } }
                            td { (check) }
                            td { (list_or_none(&v.destinations)) }
                            td { (list_or_none(&v.attachments.agents.iter().cloned().collect::<Vec<_>>())) }
                            td { (list_or_none(&v.attachments.routes.iter().cloned().collect::<Vec<_>>())) }
                            td { (when(&v.last_used_at)) }
                        }
                    }
                }
            }
        }
    };
    page(&app, &c, "credentials", "Credentials", body).await
}

fn error_body(text: &str) -> Markup {
    html! { p.flash.error role="alert" { (text) } }
}

#[derive(Deserialize)]
struct SchemeQuery {
    scheme: Option<String>,
}

/// What a create form had, to show it again after a refusal (never the
/// secrets).
#[derive(Default)]
struct Typed {
    name: String,
    destinations: String,
    config: Vec<(String, String)>,
    error: Option<String>,
}

async fn new_credential(c: Console, State(app): State<Arc<AppState>>, Query(q): Query<SchemeQuery>) -> Response {
    credential_form(&app, &c, q.scheme.as_deref(), Typed::default()).await
}

async fn credential_form(app: &AppState, c: &Console, scheme: Option<&str>, typed: Typed) -> Response {
    let plugins = match admin::plugin_views(app) {
        Ok(p) => p,
        Err(e) => return page(app, c, "credentials", "Add a credential", error_body(&e.message)).await,
    };
    let Some(plugin) = scheme.and_then(|s| plugins.iter().find(|p| p.name == s)) else {
        let body = html! {
            p { "Choose the scheme that applies the credential:" }
            ul.schemes {
                @for p in &plugins {
                    li { a href={ "/ui/new-credential?scheme=" (seg(&p.name)) } { (p.name) } " — " (p.description) }
                }
            }
        };
        return page(app, c, "credentials", "Add a credential", body).await;
    };
    let config_value = |field: &str| typed.config.iter().find(|(k, _)| k == field).map(|(_, v)| v.clone());
    let body = html! {
        @if let Some(e) = &typed.error { (error_body(e)) }
        p.hint { (plugin.name) " " (plugin.version) ": " (plugin.description) }
        form method="post" action="/ui/credentials" id="credential-form" {
            (csrf(c))
            input type="hidden" name="scheme" value=(plugin.name);
            label { "Name " input type="text" name="name" value=(typed.name) required pattern="[A-Za-z_][A-Za-z0-9_-]{0,63}"; }
            label { "Destinations (hosts it may be sent to, one per line)"
                textarea name="destinations" rows="2" placeholder="api.openai.com" { (typed.destinations) } }
            @if !plugin.config_fields.is_empty() {
                fieldset { legend { "Configuration" }
                    @for f in &plugin.config_fields {
                        label {
                            (f.name) @if f.required { " (required)" }
                            input type="text" name={ "config." (f.name) } value=[config_value(&f.name)] required[f.required];
                            small { (f.description) }
                        }
                    }
                }
            }
            fieldset { legend { "Secrets (stored encrypted, never shown again)" }
                @for f in &plugin.secret_fields {
                    label {
                        (f.name) @if f.required { " (required)" }
                        input type="password" name={ "secret." (f.name) } autocomplete="new-password" required[f.required];
                        small { (f.description) " — exposure: " (f.exposure) }
                    }
                }
                @if let Some(exposure) = plugin.open_secret_fields {
                    p.hint { "This scheme accepts secret fields of any name (exposure " (exposure) "): add them with the CLI or the admin API." }
                }
            }
            label.check { input type="checkbox" name="enabled" checked; " Enabled" }
            button type="submit" id="create" { "Add the credential" }
        }
    };
    page(app, c, "credentials", &format!("Add a {} credential", plugin.name), body).await
}

async fn create_credential(
    c: Console,
    State(app): State<Arc<AppState>>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let scheme = f.text("scheme");
    let destinations: Vec<String> =
        f.text("destinations").split(['\n', ',']).map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect();
    let config = f.prefixed("config.");
    let raw = RawCredential {
        name: f.get("name").unwrap_or_default().to_string(),
        org: Some(c.org.clone()),
        scheme: scheme.clone(),
        config: config.clone(),
        secrets: f.prefixed("secret.").into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
        verbatim: Default::default(),
        enabled: f.on("enabled"),
        destinations,
    };
    match app.vault.create(raw, &c.actor).await {
        Ok(done) => {
            let name = done.value.credential.name.to_string();
            c.flash(&app, true, format!("Added credential {name}."));
            for n in &done.notices {
                let ok = matches!(n.kind, NoticeKind::Changed);
                c.flash(&app, ok, n.message.clone());
            }
            back(&format!("/ui/credentials/{}", seg(&name)))
        }
        Err(e) => {
            let typed = Typed {
                name: f.text("name"),
                destinations: f.text("destinations"),
                config,
                error: Some(format!("{} ({})", e, e.code())),
            };
            credential_form(&app, &c, Some(&scheme), typed).await
        }
    }
}

async fn credential(c: Console, State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let info = match app.vault.get(&c.org, &name).await {
        Ok(i) => i,
        Err(e) => {
            let status = StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::NOT_FOUND);
            let body = page(&app, &c, "credentials", "Credential", error_body(&e.to_string())).await;
            return (status, body).into_response();
        }
    };
    let v = info.view();
    let check = app.vault.check_states().await.unwrap_or_default().remove(&(v.org.clone(), v.name.clone()));
    let agents: Vec<String> =
        app.vault.list_agents(Some(&c.org)).await.unwrap_or_default().into_iter().map(|a| a.name).collect();
    let attachable: Vec<&String> = agents.iter().filter(|a| !v.attachments.agents.contains(*a)).collect();
    let base = format!("/ui/credentials/{}", seg(&v.name));
    let secret_fields: Vec<String> = v.secret_fields.iter().cloned().collect();
    let switch = if v.enabled {
        action(
            &c,
            &format!("{base}/disable"),
            "Disable",
            Some(&format!("Disable {}? Every call that uses it fails until it is enabled again.", v.name)),
            "danger",
        )
    } else {
        action(&c, &format!("{base}/enable"), "Enable", Some(&format!("Enable {}?", v.name)), "")
    };
    let body = html! {
        dl.details id="credential" {
            dt { "State" } dd { span class={ "state " (v.state) } id="state" { (v.state) } " " (switch) }
            dt { "Scheme" } dd { (v.scheme) }
            dt { "Configuration" } dd { @if v.config.is_empty() { "none" } @else { @for (k, val) in &v.config { code { (k) "=" (val) } " " } } }
            dt { "Secret fields" } dd { (list_or_none(&secret_fields)) " (values are never shown)" }
            dt { "Destinations" } dd { (list_or_none(&v.destinations)) }
            dt { "Provider check" } dd {
                @match &check { Some((s, t)) => { (s) " at " (t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()) }, None => { "never checked" } }
                " " (action(&c, &format!("{base}/check"), "Check with the provider", None, ""))
            }
            dt { "Last used" } dd { (when(&v.last_used_at)) }
            dt { "Version" } dd { (v.version) " (secret version " (v.secret_version) ", master key term " (v.key_term) ")" }
            dt { "Created" } dd { (when(&v.created_at)) }
            dt { "Updated" } dd { (when(&v.updated_at)) }
        }
        h2 { "Used by" }
        table id="attachments" {
            thead { tr { th { "Kind" } th { "Name" } th {} } }
            tbody {
                @for a in &v.attachments.agents {
                    tr { td { "agent" } td { (a) } td { (action(&c, &format!("{base}/detach?agent={}", seg(a)), "Detach", Some(&format!("Detach agent {a}? It can no longer use this credential.")), "")) } }
                }
                @for r in &v.attachments.routes {
                    tr { td { "route" } td { a href="/ui/routes" { (r) } } td { "delete or re-point the route to detach it" } }
                }
                @if v.attachments.agents.is_empty() && v.attachments.routes.is_empty() { tr { td colspan="3" { "Nothing uses it." } } }
            }
        }
        @if !attachable.is_empty() {
            form.inline method="post" action={ (base) "/attach" } id="attach" {
                (csrf(&c))
                label { "Attach agent " select name="agent" { @for a in &attachable { option value=(a) { (a) } } } }
                button type="submit" { "Attach" }
            }
        }
        h2 { "Rotate the secrets" }
        form method="post" action={ (base) "/rotate" } id="rotate" data-confirm="Replace the secret values? The next call uses the new ones." {
            (csrf(&c))
            @for f in &secret_fields { label { (f) input type="password" name={ "secret." (f) } autocomplete="new-password"; } }
            button type="submit" { "Rotate" }
        }
        h2 { "Delete" }
        form method="post" action={ (base) "/delete" } id="delete" data-confirm={ "Delete " (v.name) " for good?" } {
            (csrf(&c))
            label.check { input type="checkbox" name="force"; " Also while used (detaches its agents and deletes its routes)" }
            button.danger type="submit" { "Delete" }
        }
    };
    page(&app, &c, "credentials", &v.name, body).await
}

#[derive(Deserialize)]
struct DetachQuery {
    agent: Option<String>,
}

async fn credential_action(
    c: Console,
    State(app): State<Arc<AppState>>,
    Path((name, verb)): Path<(String, String)>,
    Query(q): Query<DetachQuery>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let base = format!("/ui/credentials/{}", seg(&name));
    let org = c.org.clone();
    let result: Result<String, VaultError> = match verb.as_str() {
        "enable" | "disable" => {
            let on = verb == "enable";
            app.vault.set_enabled(&org, &name, on, &c.actor).await.map(|_| format!("{name} is {verb}d."))
        }
        "attach" | "detach" => {
            let agent = if verb == "attach" { f.text("agent") } else { q.agent.unwrap_or_default() };
            app.vault
                .set_attachment(&org, &name, AttachmentKind::Agent, &agent, verb == "attach", &c.actor)
                .await
                .map(|_| format!("Agent {agent} {verb}ed."))
        }
        "rotate" => {
            let secrets = f.prefixed("secret.").into_iter().map(|(k, v)| (k, Secret::new(v))).collect();
            match app.vault.rotate(&org, &name, secrets, Default::default(), &c.actor).await {
                Ok(done) => {
                    for n in &done.notices {
                        c.flash(&app, matches!(n.kind, NoticeKind::Changed), n.message.clone());
                    }
                    Ok(format!("Rotated: secret version {}.", done.value.secret_version))
                }
                Err(e) => Err(e),
            }
        }
        "check" => {
            return match super::check::check_credential(&app, &org, &name).await {
                Ok(o) => {
                    let status = o.status.map(|s| format!(" ({s})")).unwrap_or_default();
                    c.flash(
                        &app,
                        matches!(o.state, "valid" | "mock"),
                        format!("Provider check: {}{status}: {}", o.state, o.detail),
                    );
                    back(&base)
                }
                Err(e) => {
                    c.flash(&app, false, format!("{} ({})", e.message, e.code));
                    back(&base)
                }
            };
        }
        "delete" => {
            return match app.vault.delete(&org, &name, f.on("force"), &c.actor).await {
                Ok(_) => {
                    c.flash(&app, true, format!("Deleted {name}."));
                    back("/ui/credentials")
                }
                Err(e) => {
                    c.refused(&app, &e);
                    back(&base)
                }
            };
        }
        _ => return (StatusCode::NOT_FOUND, message_page("Not found", "No such action.")).into_response(),
    };
    c.report(&app, result);
    back(&base)
}

// ---------------------------------------------------------------------------
// Routes, agents, tokens, identity providers
// ---------------------------------------------------------------------------

async fn routes_page(c: Console, State(app): State<Arc<AppState>>) -> Response {
    let routes: Vec<RouteView> =
        app.vault.list_routes(Some(&c.org)).await.unwrap_or_default().iter().map(RouteView::from).collect();
    let credentials: Vec<String> =
        app.vault.list(Some(&c.org)).await.unwrap_or_default().iter().map(|i| i.credential.name.to_string()).collect();
    let body = html! {
        @if routes.is_empty() { p.none { "No routes in " (c.org) "." } } @else {
            table id="routes" {
                thead { tr { th { "Name" } th { "Upstream" } th { "Credential" } th { "Mock" } th { "Check path" } th {} } }
                tbody { @for r in &routes { tr {
                    td { (r.name) } td { (r.upstream) }
                    td { a href={ "/ui/credentials/" (seg(&r.credential)) } { (r.credential) } }
                    td { @if r.mock { "yes" } @else { "no" } } td { (r.check_path.as_deref().unwrap_or("-")) }
                    td { (action(&c, &format!("/ui/routes/{}/delete", seg(&r.name)), "Delete", Some(&format!("Delete route {}?", r.name)), "danger")) }
                } } }
            }
        }
        h2 { "Add or replace a route" }
        form method="post" action="/ui/routes" id="route-form" {
            (csrf(&c))
            label { "Name " input type="text" name="name" required; }
            label { "Upstream " input type="url" name="upstream" placeholder="https://api.openai.com" required; }
            label { "Credential " select name="credential" { @for n in &credentials { option value=(n) { (n) } } } }
            label { "Check path " input type="text" name="check_path" placeholder="/v1/models"; }
            label.check { input type="checkbox" name="mock"; " Answer from the built-in mock" }
            button type="submit" { "Save the route" }
        }
    };
    page(&app, &c, "routes", "Routes", body).await
}

async fn add_route(c: Console, State(app): State<Arc<AppState>>, Form(form): Form<Vec<(String, String)>>) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let route = Route {
        name: f.text("name"),
        org: c.org.clone(),
        upstream: f.text("upstream"),
        credential: f.text("credential"),
        mock: f.on("mock"),
        check_path: Some(f.text("check_path")).filter(|p| !p.is_empty()),
    };
    c.report(&app, app.vault.put_route(&route, &c.actor).await.map(|()| format!("Route {} saved.", route.name)));
    back("/ui/routes")
}

async fn delete_route(
    c: Console,
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = c.checked(form) {
        return *r;
    }
    match app.vault.delete_route(&c.org, &name, &c.actor).await {
        Ok(true) => c.flash(&app, true, format!("Route {name} deleted.")),
        Ok(false) => c.flash(&app, false, format!("No route named {name}.")),
        Err(e) => c.refused(&app, &e),
    }
    back("/ui/routes")
}

async fn agents(c: Console, State(app): State<Arc<AppState>>) -> Response {
    let agents = app.vault.list_agents(Some(&c.org)).await.unwrap_or_default();
    let attached = app.vault.agent_credentials(Some(&c.org)).await.unwrap_or_default();
    let views = AgentView::all(agents, &attached);
    let credentials: Vec<String> =
        app.vault.list(Some(&c.org)).await.unwrap_or_default().iter().map(|i| i.credential.name.to_string()).collect();
    let body = html! {
        @if views.is_empty() { p.none { "No agents in " (c.org) "." } } @else {
            table id="agents" {
                thead { tr { th { "Name" } th { "State" } th { "Created" } th { "JWT identity" } th { "Credentials" } th {} } }
                tbody { @for a in &views {
                    @let base = format!("/ui/agents/{}", seg(&a.name));
                    tr {
                        td { (a.name) } td { span class={ "state " (a.state) } { (a.state) } } td { (when(&a.created_at)) }
                        td { @if let Some(j) = &a.jwt { (j.idp) ": " (j.subject) } @else { "-" } }
                        td { (list_or_none(&a.credentials)) }
                        td.actions {
                            @if a.disabled { (action(&c, &format!("{base}/enable"), "Enable", None, "")) }
                            @else { (action(&c, &format!("{base}/disable"), "Disable", Some(&format!("Disable agent {}? Its calls are refused until it is enabled.", a.name)), "")) }
                            (action(&c, &format!("{base}/token"), "New token", Some(&format!("Give {} a new token? The old one stops working at once.", a.name)), ""))
                            form.inline method="post" action={ (base) "/delete" } data-confirm={ "Delete agent " (a.name) "?" } {
                                (csrf(&c))
                                label.check { input type="checkbox" name="force"; " detach" }
                                button.danger type="submit" { "Delete" }
                            }
                        }
                    }
                } }
            }
        }
        h2 { "Create an agent" }
        form method="post" action="/ui/agents" id="agent-form" {
            (csrf(&c))
            label { "Name " input type="text" name="name" required; }
            @if !credentials.is_empty() {
                fieldset { legend { "Credentials it may use" }
                    @for n in &credentials { label.check { input type="checkbox" name="credential" value=(n); " " (n) } }
                }
            }
            button type="submit" { "Create" }
        }
    };
    page(&app, &c, "agents", "Agents", body).await
}

/// Keep a token to show once and send the browser to `/ui/once`, so a
/// reload shows it no more and re-sends nothing.
fn reveal(
    app: &AppState,
    c: &Console,
    active: &'static str,
    title: &'static str,
    what: String,
    token: &str,
) -> Response {
    let token = Secret::new(token);
    app.console.with(&c.id, |s| s.reveal = Some(Reveal { active, title, what, token }));
    back("/ui/once")
}

/// The token kept by [`reveal`], shown once: this answer is the only place
/// it appears.
async fn shown_once(c: Console, State(app): State<Arc<AppState>>) -> Response {
    let mut kept = None;
    app.console.with(&c.id, |s| kept = s.reveal.take());
    let Some(r) = kept else {
        let body = html! { p { "That token was shown once and is gone; create a new one if it was not copied." } };
        return page(&app, &c, "tokens", "Shown once", body).await;
    };
    let body = html! {
        p.flash.ok { (r.what) }
        p { "Copy it now: it is shown once, and only its hash is stored." }
        pre.token id="token" { (r.token.expose()) }
        p { a href={ "/ui/" (r.active) } { "Done" } }
    };
    page(&app, &c, r.active, r.title, body).await
}

async fn create_agent(
    c: Console,
    State(app): State<Arc<AppState>>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let name = f.text("name");
    match app.vault.create_agent_with(&c.org, &name, &f.all("credential"), &c.actor).await {
        Ok(issued) => {
            let what = format!("Agent {} created in {}.", issued.agent.name, issued.agent.org);
            reveal(&app, &c, "agents", "Agent token", what, issued.token.expose())
        }
        Err(e) => {
            c.refused(&app, &e);
            back("/ui/agents")
        }
    }
}

async fn agent_action(
    c: Console,
    State(app): State<Arc<AppState>>,
    Path((name, verb)): Path<(String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let result = match verb.as_str() {
        "enable" | "disable" => match app.vault.require_agent(&c.org, &name).await {
            Ok(_) => app
                .vault
                .set_agent_disabled(&c.org, &name, verb == "disable", &c.actor)
                .await
                .map(|_| format!("Agent {name} is {verb}d.")),
            Err(e) => Err(e),
        },
        "token" => {
            return match app.vault.reissue_agent_token(&c.org, &name, &c.actor).await {
                Ok(issued) => {
                    let what = format!("Agent {name} has a new token; the old one is refused from now on.");
                    reveal(&app, &c, "agents", "Agent token", what, issued.token.expose())
                }
                Err(e) => {
                    c.refused(&app, &e);
                    back("/ui/agents")
                }
            };
        }
        "delete" => app.vault.delete_agent(&c.org, &name, f.on("force"), &c.actor).await.map(|detached| {
            if detached.is_empty() {
                format!("Agent {name} deleted.")
            } else {
                format!("Agent {name} deleted, detached from {}.", detached.join(", "))
            }
        }),
        _ => return (StatusCode::NOT_FOUND, message_page("Not found", "No such action.")).into_response(),
    };
    c.report(&app, result);
    back("/ui/agents")
}

async fn tokens(c: Console, State(app): State<Arc<AppState>>) -> Response {
    let all: Vec<TokenView> = app
        .vault
        .list_registration_tokens(Some(&c.org))
        .await
        .unwrap_or_default()
        .iter()
        .map(TokenView::from)
        .collect();
    let body = html! {
        form.inline method="post" action="/ui/tokens" id="token-form" {
            (csrf(&c))
            label { "Valid for " input type="text" name="ttl" value="1h" size="5" pattern="[0-9]+[smhd]"; }
            button type="submit" { "Create a registration token" }
        }
        @if all.is_empty() { p.none { "No registration tokens in " (c.org) "." } } @else {
            table id="tokens" {
                thead { tr { th { "Prefix" } th { "State" } th { "Created" } th { "Expires" } th { "Agent" } th {} } }
                tbody { @for t in &all { tr {
                    td { code { (t.prefix) "…" } } td { span class={ "state " (t.state) } { (t.state) } }
                    td { (when(&t.created_at)) } td { (when(&t.expires_at)) } td { (t.agent.as_deref().unwrap_or("-")) }
                    td { @if t.state == "active" { (action(&c, &format!("/ui/tokens/{}/revoke", seg(&t.prefix)), "Revoke", Some("Revoke this token?"), "danger")) } }
                } } }
            }
        }
    };
    page(&app, &c, "tokens", "Registration tokens", body).await
}

async fn create_token(
    c: Console,
    State(app): State<Arc<AppState>>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let ttl = f.text("ttl");
    let Some(ttl) = crate::text::parse_duration_seconds(&ttl).map(time::Duration::seconds) else {
        c.flash(
            &app,
            false,
            format!("`{ttl}` is not a duration like 90s, 15m, 1h or 2d ({})", ErrorCode::InvalidArgument),
        );
        return back("/ui/tokens");
    };
    match app.vault.create_registration_token(&c.org, ttl, &c.actor).await {
        Ok(t) => {
            let expires = t.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            let what = format!("Registration token for {}, single-use, valid until {expires}.", t.org);
            reveal(&app, &c, "tokens", "Registration token", what, t.token.expose())
        }
        Err(e) => {
            c.refused(&app, &e);
            back("/ui/tokens")
        }
    }
}

async fn revoke_token(
    c: Console,
    State(app): State<Arc<AppState>>,
    Path(prefix): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = c.checked(form) {
        return *r;
    }
    let revoked = app.vault.revoke_registration_token(&c.org, &prefix, &c.actor).await;
    c.report(&app, revoked.map(|_| format!("Token {prefix} revoked.")));
    back("/ui/tokens")
}

async fn idps(c: Console, State(app): State<Arc<AppState>>) -> Response {
    let all: Vec<IdpView> =
        app.vault.list_identity_providers(Some(&c.org)).await.unwrap_or_default().iter().map(IdpView::from).collect();
    let body = html! {
        @if all.is_empty() { p.none { "No identity providers in " (c.org) "." } } @else {
            table id="idps" {
                thead { tr { th { "Name" } th { "Issuer" } th { "Algorithm" } th { "Audience" } th { "Keys" } th {} } }
                tbody { @for p in &all { tr {
                    td { (p.name) } td { (p.issuer) } td { (p.alg) } td { (list_or_none(&p.audience)) }
                    td { (p.jwks_url.as_deref().unwrap_or("inline JWKS")) }
                    td { form.inline method="post" action={ "/ui/idps/" (seg(&p.name)) "/delete" } data-confirm={ "Delete identity provider " (p.name) "?" } {
                        (csrf(&c)) label.check { input type="checkbox" name="force"; " unbind agents" } button.danger type="submit" { "Delete" }
                    } }
                } } }
            }
        }
        h2 { "Add or replace an identity provider" }
        form method="post" action="/ui/idps" id="idp-form" {
            (csrf(&c))
            label { "Name " input type="text" name="name" required; }
            label { "Issuer (the exact iss) " input type="text" name="issuer" required; }
            label { "Algorithm " select name="alg" { @for a in crate::vault::identity::PROVIDER_ALGS { option value=(a) { (a) } } } }
            label { "JWKS URL (https) " input type="url" name="jwks_url"; }
            label { "or the JWKS itself " textarea name="jwks" rows="3" {} }
            label { "Audiences (comma-separated) " input type="text" name="audience"; }
            label { "Clock-skew leeway, seconds (0 to 300) " input type="text" name="leeway" value=(crate::vault::identity::DEFAULT_LEEWAY_SECONDS); }
            label { "Key set refresh (90s, 5m, 1h) " input type="text" name="refresh" value="5m"; }
            label { "Claim naming the agent " input type="text" name="subject_claim" value="sub"; }
            label { "Longest token lifetime (5m, 1h, 1d) " input type="text" name="max_lifetime" value="1d"; }
            p.hint { "Saving a provider of an existing name replaces all of its settings with these." }
            button type="submit" { "Save" }
        }
    };
    page(&app, &c, "idps", "Identity providers", body).await
}

async fn add_idp(c: Console, State(app): State<Arc<AppState>>, Form(form): Form<Vec<(String, String)>>) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let jwks = match (f.text("jwks_url"), f.text("jwks")) {
        (url, doc) if !url.is_empty() && doc.is_empty() => JwksSource::Url(url),
        (url, doc) if url.is_empty() && !doc.is_empty() => JwksSource::Static(doc),
        _ => {
            c.flash(&app, false, "Give a JWKS URL or the JWKS itself, not both.");
            return back("/ui/idps");
        }
    };
    let p = IdentityProvider {
        org: c.org.clone(),
        name: f.text("name"),
        issuer: f.text("issuer"),
        alg: f.text("alg"),
        audience: f.text("audience").split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect(),
        leeway_seconds: f.text("leeway").parse().unwrap_or(-1),
        jwks,
        refresh_seconds: crate::text::parse_duration_seconds(&f.text("refresh")).unwrap_or(-1),
        subject_claim: Some(f.text("subject_claim")).filter(|c| !c.is_empty()).unwrap_or_else(|| "sub".into()),
        max_token_lifetime_seconds: crate::text::parse_duration_seconds(&f.text("max_lifetime")).unwrap_or(-1),
    };
    let saved = app.vault.put_identity_provider(&p, &c.actor).await;
    c.report(&app, saved.map(|()| format!("Identity provider {} saved.", p.name)));
    back("/ui/idps")
}

async fn delete_idp(
    c: Console,
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let f = match c.checked(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    match app.vault.delete_identity_provider(&c.org, &name, f.on("force"), &c.actor).await {
        Ok(unbound) if unbound.is_empty() => c.flash(&app, true, format!("Identity provider {name} deleted.")),
        Ok(unbound) => {
            c.flash(&app, true, format!("Identity provider {name} deleted; unbound {}.", unbound.join(", ")))
        }
        Err(e) => c.refused(&app, &e),
    }
    back("/ui/idps")
}

// ---------------------------------------------------------------------------
// Plugins and the audit trail
// ---------------------------------------------------------------------------

async fn plugins(c: Console, State(app): State<Arc<AppState>>) -> Response {
    let all = admin::plugin_views(&app).unwrap_or_default();
    let body = html! {
        table id="plugins" {
            thead { tr { th { "Scheme" } th { "Version" } th { "Description" } th { "Reads the body" } th { "Request-independent" } th { "Raw secrets" } } }
            tbody { @for p in &all { tr {
                td { a href={ "/ui/plugins/" (seg(&p.name)) } { (p.name) } } td { (p.version) } td { (p.description) }
                td { @if p.reads_body { "yes" } @else { "no" } } td { @if p.request_independent { "yes" } @else { "no" } }
                td { @if p.reads_raw_secrets { "granted" } @else { "no" } }
            } } }
        }
    };
    page(&app, &c, "plugins", "Plugins", body).await
}

async fn plugin(c: Console, State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let all = admin::plugin_views(&app).unwrap_or_default();
    let Some(p) = all.iter().find(|p| p.name == name) else {
        let body =
            page(&app, &c, "plugins", "Plugin", error_body(&format!("No plugin implements scheme {name}."))).await;
        return (StatusCode::NOT_FOUND, body).into_response();
    };
    let body = html! {
        p { (p.description) }
        dl.details {
            dt { "Version" } dd { (p.version) }
            dt { "SHA-256" } dd { code { (p.sha256) } }
            dt { "Verifies agents' tokens" } dd { @if p.verifies_tokens { "yes" } @else { "no" } }
            dt { "Reads the body" } dd { @if p.reads_body { "yes" } @else { "no" } }
        }
        h2 { "Configuration fields" }
        table { thead { tr { th { "Field" } th { "Required" } th { "Description" } } }
            tbody { @for f in &p.config_fields { tr { td { (f.name) } td { @if f.required { "yes" } @else { "no" } } td { (f.description) } } } } }
        h2 { "Secret fields" }
        table { thead { tr { th { "Field" } th { "Required" } th { "Exposure" } th { "Description" } } }
            tbody { @for f in &p.secret_fields { tr { td { (f.name) } td { @if f.required { "yes" } @else { "no" } } td { (f.exposure) } td { (f.description) } } } } }
    };
    page(&app, &c, "plugins", &p.name, body).await
}

#[derive(Deserialize)]
struct AuditQuery {
    credential: Option<String>,
    agent: Option<String>,
    action: Option<String>,
    since: Option<String>,
    page: Option<usize>,
}

async fn audit(c: Console, State(app): State<Arc<AppState>>, Query(q): Query<AuditQuery>) -> Response {
    let some = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let page_no = q.page.unwrap_or(1).clamp(1, 200);
    let action = some(&q.action).and_then(|a| AuditAction::parse(&a));
    let since = some(&q.since).and_then(|s| {
        crate::text::parse_duration_seconds(&s)
            .map(|secs| time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
            .or_else(|| time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok())
    });
    let agent = some(&q.agent);
    // The agent filter is applied here, so read enough to fill the page.
    let want = page_no * PAGE + 1;
    let fetch = if agent.is_some() { (want * 20).min(20_000) } else { want };
    let filter = AuditFilter {
        org: Some(c.org.clone()),
        credential: some(&q.credential),
        action,
        since,
        limit: Some(u32::try_from(fetch).unwrap_or(u32::MAX)),
    };
    let events = match app.vault.audit(&filter).await {
        Ok(e) => e,
        Err(e) => return page(&app, &c, "audit", "Audit", error_body(&e.to_string())).await,
    };
    let events: Vec<_> =
        events.into_iter().filter(|e| agent.as_ref().is_none_or(|a| e.agent.as_ref() == Some(a))).collect();
    let shown: Vec<_> = events.iter().skip((page_no - 1) * PAGE).take(PAGE).collect();
    let more = events.len() > page_no * PAGE;
    let link = |n: usize| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("credential", &q.credential), ("agent", &q.agent), ("action", &q.action), ("since", &q.since)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                s.append_pair(k, v);
            }
        }
        s.append_pair("page", &n.to_string());
        format!("/ui/audit?{}", s.finish())
    };
    let body = html! {
        form.filters method="get" action="/ui/audit" id="audit-filter" {
            input type="text" name="credential" placeholder="credential" value=[q.credential.as_deref()];
            input type="text" name="agent" placeholder="agent" value=[q.agent.as_deref()];
            select name="action" {
                option value="" { "any action" }
                @for a in AuditAction::ALL { option value=(a.as_str()) selected[q.action.as_deref() == Some(a.as_str())] { (a.as_str()) } }
            }
            input type="text" name="since" placeholder="since: 1h, 7d or RFC 3339" value=[q.since.as_deref()];
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() { p.none { "No audit events match." } } @else {
            table id="audit" {
                thead { tr { th { "At" } th { "Credential" } th { "Action" } th { "Outcome" } th { "Actor" } th { "Agent" } th { "Count" } th { "Detail" } } }
                tbody { @for e in &shown { tr {
                    td { (e.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()) }
                    td { (if e.credential.is_empty() { "-" } else { &e.credential }) } td { (e.action) } td { (e.outcome) }
                    td { (e.actor.as_deref().unwrap_or("-")) } td { (e.agent.as_deref().unwrap_or("-")) }
                    td { (e.count.map(|n| n.to_string()).unwrap_or_default()) } td { (e.detail.as_deref().unwrap_or("")) }
                } } }
            }
        }
        nav.pager {
            @if page_no > 1 { a href=(link(page_no - 1)) { "← Newer" } }
            " Page " (page_no) " "
            @if more { a href=(link(page_no + 1)) id="older" { "Older →" } }
        }
    };
    page(&app, &c, "audit", "Audit trail", body).await
}
