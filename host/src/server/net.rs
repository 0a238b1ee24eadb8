//! Outbound connections: which upstream addresses are allowed, and the
//! HTTP(S) client that connects only to addresses it checked.
//!
//! SSRF defence: an upstream host is resolved once, every resolved address is
//! checked against the deny list (loopback, private, link-local, CGNAT and
//! cloud metadata ranges, unspecified, multicast, reserved, and the IPv4
//! forms hidden in IPv6), and the connection goes to exactly the addresses
//! that passed. The check and the connect use the same address, so DNS
//! rebinding between them is impossible. IP literals never reach the
//! resolver and are checked before the request. Operators allow specific
//! networks (`--allow-upstream-network 10.1.0.0/16`) for internal upstreams.
//!
//! TLS: rustls with the system's root certificates plus any extra CA
//! certificates the operator configures; there is no "accept invalid
//! certificates" switch. Redirects are never followed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;

/// The body type the proxy sends upstream.
pub type OutBody = axum::body::Body;
/// The upstream client.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>, OutBody>;

/// Which upstream addresses may be connected to.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Networks allowed even though they are in a denied range.
    pub allow: Vec<IpNet>,
}

/// Ranges no upstream may resolve to unless allowed: where cloud metadata,
/// the host itself and internal services live.
const DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10", // CGNAT; Alibaba Cloud metadata is 100.100.100.200
    "127.0.0.0/8",
    "169.254.0.0/16", // link-local; AWS/GCP/Azure metadata, ECS 169.254.170.2
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "64:ff9b::/96", // NAT64: an IPv4 address in disguise
    "100::/64",
    "2001:db8::/32",
    "fc00::/7", // unique local; AWS IPv6 metadata fd00:ec2::254
    "fe80::/10",
    "ff00::/8",
];

fn denied_nets() -> &'static [IpNet] {
    static NETS: std::sync::OnceLock<Vec<IpNet>> = std::sync::OnceLock::new();
    NETS.get_or_init(|| DENIED.iter().filter_map(|n| n.parse().ok()).collect())
}

/// The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64),
/// so `[::ffff:a9fe:a9fe]` is judged as `169.254.169.254`.
fn embedded_v4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        let o = v6.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[..6].iter().all(|&x| x == 0) && !(s[6] == 0 && s[7] <= 1) {
        let o = v6.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

impl AddressPolicy {
    /// Why `ip` may not be connected to, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        let judged = match ip {
            IpAddr::V6(v6) => embedded_v4(&v6).map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self.allow.iter().any(|n| n.contains(&judged)) {
            return None;
        }
        denied_nets().iter().find(|n| n.contains(&judged) || n.contains(&ip)).map(|n| {
            format!("{ip} is in {n}, a private, loopback, link-local or reserved range (allow it with --allow-upstream-network)")
        })
    }

    /// Why a URL whose host is an IP literal may not be connected to. Host
    /// names are checked by [`CheckedResolver`]; literals never reach it.
    pub fn literal_refusal(&self, url: &url::Url) -> Option<String> {
        let ip = match url.host()? {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(_) => return None,
        };
        self.refusal(ip)
    }
}

/// Where a host name's addresses come from: the system's resolver
/// ([`SystemLookup`]) in the broker. The one seam for a stand-in (a test's
/// name that answers one address, then another), passed to
/// [`client_with_lookup`]; every answer still goes through the policy.
pub trait Lookup: Send + Sync {
    /// The addresses `host` resolves to now, with port 0 (the connector dials the URL's port).
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static>>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static>> {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    }
}

/// A DNS resolver that returns only addresses the policy allows, and fails
/// when none is left.
#[derive(Clone)]
pub struct CheckedResolver {
    policy: Arc<AddressPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl CheckedResolver {
    /// A resolver asking `lookup` and keeping what `policy` allows.
    pub fn new(policy: Arc<AddressPolicy>, lookup: Arc<dyn Lookup>) -> CheckedResolver {
        CheckedResolver { policy, lookup }
    }

    /// Resolve `host` once and keep the addresses the policy allows: what
    /// the connector dials, and all it dials (it never resolves again for
    /// the same connection). Fails with [`AddressRefused`] when none is left.
    pub async fn resolve(&self, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        let addrs = self.lookup.lookup(host).await?;
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.policy.refusal(a.ip()) {
                None => true,
                Some(why) => {
                    refused = Some(why);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            let why = refused.unwrap_or_else(|| "it has no addresses".into());
            let host = host.to_string();
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, AddressRefused { host, why }));
        }
        Ok(allowed)
    }
}

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { resolver.resolve(name.as_str()).await.map(Vec::into_iter) })
    }
}

/// The resolver's refusal: every address of `host` is outside the policy.
/// Travels inside the client's error chain; callers find it by type.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to an address that is not allowed: {why}")]
pub struct AddressRefused {
    /// The upstream host.
    pub host: String,
    /// Why the last address checked was refused.
    pub why: String,
}

impl AddressRefused {
    /// The refusal somewhere in an error's chain of causes, if there is one.
    pub fn find<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e AddressRefused> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(r) = err.downcast_ref::<AddressRefused>() {
                return Some(r);
            }
            // An io::Error holding a custom error exposes it as `get_ref`, not always as `source`.
            if let Some(r) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
                && let Some(r) = r.downcast_ref::<AddressRefused>()
            {
                return Some(r);
            }
            cur = err.source();
        }
        None
    }
}

/// TLS settings for upstreams.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM files of extra CA certificates to trust besides the system's.
    pub extra_ca_files: Vec<PathBuf>,
    /// Do not load the system's roots (tests with their own CA).
    pub no_system_roots: bool,
}

/// A TLS setting that cannot be used: a CA, certificate or key file, or
/// the TLS library's refusal of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file that cannot be read or parsed.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// The setting (`CA file`, `--tls-cert`, `--tls-key`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file with no certificate in it.
    #[error("{what} {} holds no certificate", path.display())]
    Empty {
        /// The setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration (a certificate it cannot use, a key that does not match).
    #[error("{what}: {source}")]
    Rustls {
        /// The setting.
        what: &'static str,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// Build the upstream client, resolving through the system's resolver.
pub fn client(policy: Arc<AddressPolicy>, tls: &TlsOptions) -> Result<UpstreamClient, TlsSetupError> {
    client_with_lookup(policy, tls, Arc::new(SystemLookup))
}

/// Build the upstream client, resolving host names through `lookup`
/// (checked by the policy like the system's answers).
pub fn client_with_lookup(
    policy: Arc<AddressPolicy>,
    tls: &TlsOptions,
    lookup: Arc<dyn Lookup>,
) -> Result<UpstreamClient, TlsSetupError> {
    Ok(client_on(tls_config(tls)?, policy, lookup))
}

/// One upstream client per HTTP worker (see [`Clients`]), sharing one TLS
/// configuration (the roots are read once).
pub fn clients(policy: Arc<AddressPolicy>, tls: &TlsOptions, workers: usize) -> Result<Clients, TlsSetupError> {
    let config = tls_config(tls)?;
    let lookup: Arc<dyn Lookup> = Arc::new(SystemLookup);
    Ok(Clients((0..workers.max(1)).map(|_| client_on(config.clone(), policy.clone(), lookup.clone())).collect()))
}

/// The upstream clients, one per HTTP worker, each with its own pool of
/// connections: a call goes out through its worker's client, so the
/// upstream connection's task runs on the thread that serves the call and
/// no call wakes another worker (see `workers.rs`). Off the workers (the
/// CLI, background tasks) the first one serves.
pub struct Clients(Vec<UpstreamClient>);

impl Clients {
    /// The client of the worker this runs on.
    pub fn get(&self) -> &UpstreamClient {
        let i = super::workers::current().unwrap_or(0);
        &self.0[i % self.0.len()]
    }
}

impl From<UpstreamClient> for Clients {
    /// One client for every worker (tests that give the state a client of their own).
    fn from(client: UpstreamClient) -> Clients {
        Clients(vec![client])
    }
}

/// The upstream TLS configuration: the system's roots unless turned off, and extra CA files.
fn tls_config(tls: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if !tls.no_system_roots {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
    }
    for file in &tls.extra_ca_files {
        use rustls_pki_types::pem::PemObject as _;
        let what = "CA file";
        let file_error = |source| TlsSetupError::File { what, path: file.clone(), source };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(file).map_err(file_error)?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(file_error)?;
            roots.add(cert).map_err(|source| TlsSetupError::Rustls { what, source })?;
            n += 1;
        }
        if n == 0 {
            return Err(TlsSetupError::Empty { what, path: file.clone() });
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsSetupError::Rustls { what: "upstream TLS", source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn client_on(config: Arc<rustls::ClientConfig>, policy: Arc<AddressPolicy>, lookup: Arc<dyn Lookup>) -> UpstreamClient {
    let mut http = HttpConnector::new_with_resolver(CheckedResolver::new(policy, lookup));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).pool_idle_timeout(std::time::Duration::from_secs(60)).build(https)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_ip(url: &str) -> Option<IpAddr> {
        match url::Url::parse(url).ok()?.host()? {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        }
    }

    #[test]
    fn metadata_loopback_and_disguised_forms_are_refused() {
        let p = AddressPolicy::default();
        for url in [
            "http://169.254.169.254/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://0xa9fea9fe/",
            "http://2852039166/",
            "http://127.1/",
            "http://[::1]/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://169.254.170.2/",
            "http://10.0.0.1/",
            "http://0.0.0.0/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[::a9fe:a9fe]/",
        ] {
            let ip = host_ip(url).unwrap_or_else(|| panic!("{url} should parse to an IP"));
            assert!(p.refusal(ip).is_some(), "{url} ({ip}) must be refused");
        }
        for ok in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"] {
            assert!(p.refusal(ok.parse().unwrap()).is_none(), "{ok} is public");
        }
    }

    #[test]
    fn allowed_networks_are_let_through() {
        let p = AddressPolicy { allow: vec!["127.0.0.0/8".parse().unwrap()] };
        assert!(p.refusal("127.0.0.1".parse().unwrap()).is_none());
        assert!(p.refusal("::ffff:127.0.0.1".parse().unwrap()).is_none());
        assert!(p.refusal("169.254.169.254".parse().unwrap()).is_some());
    }

    #[test]
    fn hosts_with_userinfo_or_encoded_slashes_do_not_parse_as_other_hosts() {
        assert!(url::Url::parse("http://a%2Fb/").is_err());
        let u = url::Url::parse("http://api.openai.com@169.254.169.254/").unwrap();
        assert_eq!(u.host_str(), Some("169.254.169.254"), "userinfo confusion: the real host is the IP");
    }
}
