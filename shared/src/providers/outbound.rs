//! Outbound HTTP that cannot be turned against the network it runs in (SSRF).
//!
//! Every request MAOF makes on a caller's behalf (an agent's `base_url`, a
//! transcription's audio URL) goes through an [`OutboundClient`]: the
//! process's one `reqwest::Client` plus the [`OutboundPolicy`] it enforces.
//!
//! - Names are resolved by a [`GuardedResolver`]: the system resolver's
//!   answers are filtered by the policy, and only admitted addresses are handed
//!   to the connector. The address checked is the address connected to, so a
//!   name that resolves differently the second time (DNS rebinding) gains
//!   nothing.
//! - reqwest does not resolve IP literals, so [`OutboundClient::send`] checks a
//!   literal host before sending ([`OutboundPolicy::check_url`]).
//! - The client follows no redirect: a provider API has no reason to send one,
//!   and following it would carry key headers (`x-api-key`, ...) to wherever
//!   it points. [`OutboundClient::get_following_redirects`] (the audio
//!   download) follows at most [`MAX_REDIRECTS`], each hop sent through
//!   [`OutboundClient::send`] and so checked like the first.
//! - No proxy from the environment is used: behind a proxy the proxy resolves
//!   the name, and the check above would see only the proxy's address.
//! - Bedrock's SDK client, for an agent's own endpoint, resolves through the
//!   same [`GuardedResolver`] and has its literal checked the same way.
//!
//! Refused by default ([`refused`]): loopback, unspecified, private,
//! link-local, CGNAT (shared address space), multicast, broadcast, reserved,
//! documentation and benchmarking ranges, IPv6 unique-local and link-local, and
//! IPv4 addresses embedded in IPv6 (mapped, NAT64, 6to4) by their IPv4 class.
//!
//! `MAOF_OUTBOUND_ALLOW` (comma-separated IPs, CIDR ranges and host names,
//! e.g. `10.0.0.0/8,vllm.internal`) admits destinations the classes above
//! would refuse, such as a vLLM server in the VPC. `maof dev` also admits
//! loopback (Ollama, local servers). Cloud metadata addresses
//! (169.254.169.254, 169.254.170.2, fd00:ec2::254, ...) and the unspecified
//! address are refused whatever the allow list says: credentials live there.
//!
//! Address classes are matched with std only; the operator's CIDR ranges are
//! parsed with `ipnet` (already in the tree through reqwest).

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::LOCATION;
use reqwest::{RequestBuilder, Response, StatusCode, Url};

/// The variable holding the allow list.
pub const ALLOW_VAR: &str = "MAOF_OUTBOUND_ALLOW";

type BoxError = Box<dyn StdError + Send + Sync>;

/// Redirects [`OutboundClient::get_following_redirects`] follows at most.
pub const MAX_REDIRECTS: usize = 5;

/// Why an address is refused: the class it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A cloud metadata service (instance, task or pod credentials).
    Metadata,
    /// `0.0.0.0` or `::`, which connect to the local host.
    Unspecified,
    Loopback,
    /// RFC 1918, IPv6 unique-local (fc00::/7) and site-local, local-use NAT64.
    Private,
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT.
    SharedAddressSpace,
    Multicast,
    /// Broadcast, "this network", future use, documentation, benchmarking,
    /// IETF protocol assignments, deprecated or tunnelled IPv6 forms.
    Reserved,
}

impl Refusal {
    /// Classes no allow list admits.
    pub fn is_absolute(self) -> bool {
        matches!(self, Refusal::Metadata | Refusal::Unspecified)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Metadata => "a cloud metadata address",
            Refusal::Unspecified => "the unspecified address",
            Refusal::Loopback => "a loopback address",
            Refusal::Private => "a private address",
            Refusal::LinkLocal => "a link-local address",
            Refusal::SharedAddressSpace => "a carrier-grade NAT address",
            Refusal::Multicast => "a multicast address",
            Refusal::Reserved => "a reserved address",
        })
    }
}

/// Metadata endpoints: EC2/GCP/Azure/OCI instance metadata, ECS task
/// credentials, EKS pod identity, Alibaba Cloud's.
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
];
/// EC2's IPv6 instance metadata and EKS pod identity.
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
];

/// The class that refuses `ip`, or `None` for a public address. The allow
/// list is not consulted: see [`OutboundPolicy::admits`].
pub fn refused(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let [a, b, c, _] = ip.octets();
    let refusal = if METADATA_V4.contains(&ip) {
        Refusal::Metadata
    } else if ip.is_unspecified() {
        Refusal::Unspecified
    } else if ip.is_loopback() {
        Refusal::Loopback
    } else if ip.is_private() {
        Refusal::Private
    } else if ip.is_link_local() {
        Refusal::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        Refusal::SharedAddressSpace
    } else if ip.is_multicast() {
        Refusal::Multicast
    } else if a == 0                                // "this network"
        || a >= 240                                 // future use, broadcast
        || (a == 192 && b == 0 && c == 0)           // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18)           // benchmarking
        || ip.is_documentation()
    {
        Refusal::Reserved
    } else {
        return None;
    };
    Some(refusal)
}

fn refused_v6(ip: Ipv6Addr) -> Option<Refusal> {
    let s = ip.segments();
    // The IPv4 address in the last 32 bits, or in bits 16..48 for 6to4.
    let embedded = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    let refusal = if METADATA_V6.contains(&ip) {
        Refusal::Metadata
    } else if ip.is_unspecified() {
        Refusal::Unspecified
    } else if ip.is_loopback() {
        Refusal::Loopback
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 (64:ff9b::/96) reaches the IPv4 address it embeds.
        return refused_v4(embedded(s[6], s[7]));
    } else if s[0] == 0x2002 {
        // 6to4 (2002::/16) likewise.
        return refused_v4(embedded(s[1], s[2]));
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 || s[..3] == [0x64, 0xff9b, 1]
    {
        // Unique local, deprecated site-local, local-use NAT64.
        Refusal::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Refusal::LinkLocal
    } else if (s[0] & 0xff00) == 0xff00 {
        Refusal::Multicast
    } else if s[..6] == [0; 6]                      // IPv4-compatible (deprecated)
        || s[..4] == [0x100, 0, 0, 0]               // discard-only
        || s[..2] == [0x2001, 0]                    // Teredo: the IPv4 inside is obfuscated
        || s[..2] == [0x2001, 0xdb8]
    // documentation
    {
        Refusal::Reserved
    } else {
        return None;
    };
    Some(refusal)
}

/// Which destinations outbound requests may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allow_loopback: bool,
    allowed_networks: Vec<IpNet>,
    /// Lower case, without a trailing dot.
    allowed_hosts: Vec<String>,
}

impl OutboundPolicy {
    /// Every class of [`Refusal`] refused: the Lambda default.
    pub fn strict() -> Self {
        OutboundPolicy::default()
    }

    /// Strict, but loopback admitted: `maof dev` and tests against local
    /// servers.
    pub fn allow_loopback() -> Self {
        OutboundPolicy {
            allow_loopback: true,
            ..OutboundPolicy::default()
        }
    }

    /// The Lambda policy: strict plus `MAOF_OUTBOUND_ALLOW`.
    pub fn from_env() -> Result<Self, OutboundConfigError> {
        OutboundPolicy::strict().with_env_allow_list()
    }

    /// This policy plus the entries of `MAOF_OUTBOUND_ALLOW`, when set.
    pub fn with_env_allow_list(self) -> Result<Self, OutboundConfigError> {
        match std::env::var(ALLOW_VAR) {
            Ok(list) => self.with_allowed(&list),
            Err(_) => Ok(self),
        }
    }

    /// This policy plus `list`: comma-separated IP addresses, CIDR ranges
    /// and host names (matched exactly, case-insensitively).
    pub fn with_allowed(mut self, list: &str) -> Result<Self, OutboundConfigError> {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bare = entry.trim_start_matches('[').trim_end_matches(']');
            if let Ok(network) = bare.parse::<IpNet>() {
                self.allowed_networks.push(network.trunc());
            } else if let Ok(ip) = bare.parse::<IpAddr>() {
                self.allowed_networks.push(IpNet::from(ip.to_canonical()));
            } else if is_host_name(entry) {
                self.allowed_hosts.push(normalized_host(entry));
            } else {
                return Err(OutboundConfigError::BadEntry {
                    entry: entry.to_owned(),
                });
            }
        }
        Ok(self)
    }

    /// Whether `ip`, reached by the name `host` (if by name), may be
    /// connected to; the class that refuses it if not.
    pub fn admits(&self, host: Option<&str>, ip: IpAddr) -> Result<(), Refusal> {
        let Some(refusal) = refused(ip) else {
            return Ok(());
        };
        if refusal.is_absolute() {
            return Err(refusal);
        }
        let canonical = ip.to_canonical();
        let admitted = (refusal == Refusal::Loopback && self.allow_loopback)
            || self.allowed_networks.iter().any(|n| n.contains(&canonical))
            || host.is_some_and(|h| self.allowed_hosts.contains(&normalized_host(h)));
        if admitted { Ok(()) } else { Err(refusal) }
    }

    /// What can be checked before sending: an http(s) URL with a host, and
    /// that host, if an IP literal, admitted. Names are checked by the
    /// resolver, on the addresses actually connected to.
    pub fn check_url(&self, url: &Url) -> Result<(), OutboundError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::NotHttp);
        }
        let host = url.host_str().ok_or(OutboundError::NoHost)?;
        // The URL parser has already rewritten IPv4 in any notation
        // (`0x7f.1`, `2130706433`) to dotted decimal; IPv6 keeps brackets.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self
                .admits(None, ip)
                .map_err(|refusal| OutboundError::Refused {
                    host: host.to_owned(),
                    refusal,
                }),
            Err(_) => Ok(()),
        }
    }
}

/// One line for start-up logs: what is admitted beyond public addresses.
impl fmt::Display for OutboundPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut admitted: Vec<String> = Vec::new();
        if self.allow_loopback {
            admitted.push("loopback".to_owned());
        }
        admitted.extend(self.allowed_networks.iter().map(IpNet::to_string));
        admitted.extend(self.allowed_hosts.iter().cloned());
        if admitted.is_empty() {
            f.write_str("public addresses only")
        } else {
            write!(f, "public addresses and {}", admitted.join(", "))
        }
    }
}

fn is_host_name(entry: &str) -> bool {
    let name = entry.strip_suffix('.').unwrap_or(entry);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn normalized_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A malformed `MAOF_OUTBOUND_ALLOW`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundConfigError {
    #[error("{ALLOW_VAR}: `{entry}` is not an IP address, a CIDR range or a host name")]
    BadEntry { entry: String },
}

/// A request the policy does not let out. Names the host as the caller
/// wrote it, never an address a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("{host} is not an allowed destination ({refusal})")]
    Refused { host: String, refusal: Refusal },
    #[error("only http and https URLs are fetched")]
    NotHttp,
    #[error("the URL has no host")]
    NoHost,
}

impl OutboundError {
    /// The refusal somewhere in `error`'s chain of sources (reqwest wraps
    /// what the resolver returned in a connect error).
    pub fn find_in<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e OutboundError> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<OutboundError>() {
                return Some(found);
            }
            current = error.source();
        }
        None
    }
}

/// A failed [`OutboundClient::send`].
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The policy refused the destination (the URL's or a redirect's).
    #[error(transparent)]
    Refused(OutboundError),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error(transparent)]
    Http(reqwest::Error),
}

impl From<reqwest::Error> for SendError {
    fn from(error: reqwest::Error) -> Self {
        match OutboundError::find_in(&error) {
            Some(refused) => SendError::Refused(refused.clone()),
            None => SendError::Http(error),
        }
    }
}

/// Resolves with `inner` and keeps only the addresses the policy admits.
/// Serves reqwest ([`Resolve`]) and the AWS SDK's client
/// ([`ResolveDns`](aws_smithy_runtime_api::client::dns::ResolveDns)).
#[derive(Clone)]
pub struct GuardedResolver {
    inner: Arc<dyn Resolve>,
    policy: Arc<OutboundPolicy>,
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn Resolve>, policy: Arc<OutboundPolicy>) -> Self {
        GuardedResolver { inner, policy }
    }

    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// The admitted addresses of `name`; the refusal when there is none.
    async fn admitted(
        inner: Arc<dyn Resolve>,
        policy: Arc<OutboundPolicy>,
        name: Name,
    ) -> Result<Vec<SocketAddr>, BoxError> {
        let host = name.as_str().to_owned();
        let mut refusal = None;
        let admitted: Vec<SocketAddr> = inner
            .resolve(name)
            .await?
            .filter(|addr| match policy.admits(Some(&host), addr.ip()) {
                Ok(()) => true,
                Err(why) => {
                    // The operator may see the address; the caller never does.
                    tracing::warn!(%host, address = %addr.ip(), refusal = %why, "outbound address refused");
                    refusal.get_or_insert(why);
                    false
                }
            })
            .collect();
        match (admitted.is_empty(), refusal) {
            (true, Some(refusal)) => Err(OutboundError::Refused { host, refusal }.into()),
            (true, None) => Err(format!("{host} resolved to no address").into()),
            (false, _) => Ok(admitted),
        }
    }
}

/// Strict, with the system resolver.
impl Default for GuardedResolver {
    fn default() -> Self {
        GuardedResolver::new(Arc::new(SystemResolver), Arc::new(OutboundPolicy::strict()))
    }
}

impl fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedResolver")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = GuardedResolver::admitted(self.inner.clone(), self.policy.clone(), name);
        Box::pin(async move { Ok(Box::new(lookup.await?.into_iter()) as Addrs) })
    }
}

impl ResolveDns for GuardedResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        DnsFuture::new(async move {
            let name: Name = name
                .parse()
                .map_err(|_| ResolveDnsError::new(format!("{name} is not a host name")))?;
            let addrs = GuardedResolver::admitted(inner, policy, name)
                .await
                .map_err(ResolveDnsError::new)?;
            Ok(addrs.into_iter().map(|a| a.ip()).collect())
        })
    }
}

/// The operating system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as Addrs)
        })
    }
}

/// The process's one outbound HTTP client and the policy it enforces.
/// Cheap to clone (both are shared).
#[derive(Debug, Clone)]
pub struct OutboundClient {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
    resolver: GuardedResolver,
}

/// The outbound client could not be built (its TLS backend did not start).
/// There is no fallback: a client without the guarded resolver would reach
/// whatever a name resolves to.
#[derive(Debug, thiserror::Error)]
#[error("the outbound HTTP client could not be built: {0}")]
pub struct BuildError(#[from] reqwest::Error);

impl OutboundClient {
    /// A client resolving names with the system resolver.
    pub fn new(policy: OutboundPolicy) -> Result<Self, BuildError> {
        OutboundClient::with_resolver(policy, Arc::new(SystemResolver))
    }

    /// A client resolving names with `resolver` (tests map names to the
    /// addresses they need), its answers filtered by `policy` as always.
    pub fn with_resolver(
        policy: OutboundPolicy,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, BuildError> {
        let policy = Arc::new(policy);
        let resolver = GuardedResolver::new(resolver, policy.clone());
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("maof/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(resolver.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(OutboundClient {
            client,
            policy,
            resolver,
        })
    }

    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// This client's resolver, for the clients that are not reqwest (the AWS
    /// SDK's, see [`Bedrock`](super::Bedrock)).
    pub fn resolver(&self) -> GuardedResolver {
        self.resolver.clone()
    }

    /// A request to send with [`OutboundClient::send`]; the builder's own
    /// `send` would skip the check of IP-literal hosts.
    pub fn post(&self, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.client.post(url)
    }

    /// As [`OutboundClient::post`].
    pub fn get(&self, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.client.get(url)
    }

    /// Sends `request` if the policy admits its URL; a name is checked again
    /// as it resolves. The response is not followed if it redirects.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, SendError> {
        let request = request.build()?;
        if let Err(refused) = self.policy.check_url(request.url()) {
            tracing::warn!(error = %refused, "outbound request refused");
            return Err(SendError::Refused(refused));
        }
        // Executed by this client, whichever built the request: this one
        // has the guarded resolver.
        Ok(self.client.execute(request).await?)
    }

    /// GETs `url`, following at most [`MAX_REDIRECTS`] redirects, each hop
    /// checked as the first; `timeout` bounds the whole (the last response's
    /// body included).
    pub async fn get_following_redirects(
        &self,
        url: Url,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let deadline = Instant::now() + timeout;
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            // At least 1 ms, so that a spent budget is a timeout error.
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let response = self.send(self.get(url.clone()).timeout(remaining)).await?;
            let is_redirect = matches!(
                response.status(),
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            let next = response
                .headers()
                .get(LOCATION)
                .and_then(|location| location.to_str().ok())
                .and_then(|location| url.join(location).ok());
            match next {
                Some(next) if is_redirect => url = next,
                // Not a redirect, or one that says not where: the caller
                // judges the status.
                _ => return Ok(response),
            }
        }
        Err(SendError::TooManyRedirects)
    }
}

#[cfg(test)]
mod tests;
