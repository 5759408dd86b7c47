//! What a link from a stranger may reach: the policy of the http(s) link
//! store (`[links]` in the config).
//!
//! A receiver downloads whatever URL a message carries, so by default a link
//! may not lead to this machine or its network: targets that resolve to
//! loopback, private, link-local (the cloud metadata service at
//! 169.254.169.254 among them), shared, unique-local, unspecified, reserved
//! or multicast addresses are refused, unless their host is a configured
//! store's endpoint (or `serve_url`) or is listed in `allow_hosts`. The
//! address checked is the address connected to: names are resolved once, by
//! the guard, and the connection goes to what the guard let through, so a
//! name that resolves differently the second time (DNS rebinding) gains
//! nothing. Every redirect hop is checked the same way, and counted.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use url::{Host, Url};

/// Default for `max_redirects`.
pub const DEFAULT_MAX_REDIRECTS: usize = 5;
/// Default for `max_size`: 4 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 4 << 30;

/// How the guard turns a host name into addresses (the system resolver,
/// or a test's).
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The rules every link download follows. See the module documentation.
#[derive(Clone)]
pub struct LinkPolicy {
    /// Let links reach private and local addresses too (`allow_private`).
    pub allow_private: bool,
    /// Hosts (`name` for any port, `name:port` for one) a link may reach
    /// whatever they resolve to (`allow_hosts`).
    pub allow_hosts: Vec<String>,
    /// Redirects followed at most (`max_redirects`).
    pub max_redirects: usize,
    /// Largest object a link may deliver, in bytes (`max_size`).
    pub max_size: u64,
    /// Origins (`host:port`) of configured stores: their presigned URLs.
    pub(crate) trusted: Vec<String>,
    pub(crate) lookup: Option<Lookup>,
}

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            allow_private: false,
            allow_hosts: Vec::new(),
            max_redirects: DEFAULT_MAX_REDIRECTS,
            max_size: DEFAULT_MAX_SIZE,
            trusted: Vec::new(),
            lookup: None,
        }
    }
}

impl fmt::Debug for LinkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkPolicy")
            .field("allow_private", &self.allow_private)
            .field("allow_hosts", &self.allow_hosts)
            .field("max_redirects", &self.max_redirects)
            .field("max_size", &self.max_size)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl LinkPolicy {
    /// Trust the origin of `endpoint` (a configured store's endpoint or
    /// `serve_url`): links to that host and port may be private. Anything
    /// that is not an http(s) URL with a host is ignored.
    pub fn trust_endpoint(mut self, endpoint: &str) -> Self {
        if let Some(origin) = Url::parse(endpoint).ok().as_ref().and_then(origin)
            && !self.trusted.contains(&origin)
        {
            self.trusted.push(origin);
        }
        self
    }

    /// Resolve host names with `lookup` instead of the system resolver
    /// (tests: a name that resolves to 127.0.0.1).
    pub fn with_lookup(mut self, lookup: Lookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// Whether `url` may go anywhere its host resolves to: a trusted
    /// origin, an allowed host, or `allow_private`.
    pub(crate) fn unguarded(&self, url: &Url) -> bool {
        if self.allow_private {
            return true;
        }
        let Some(origin) = origin(url) else {
            return false;
        };
        let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
        self.trusted.contains(&origin)
            || self.allow_hosts.iter().any(|h| {
                let h = h.trim().to_ascii_lowercase();
                h == origin || h.trim_matches(['[', ']']) == host
            })
    }

    /// The scheme and, for an address written in the URL, the address
    /// rules; `None` when `url` may be fetched (named hosts are checked when
    /// they are resolved).
    pub(crate) fn check_url(&self, url: &Url) -> Option<String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Some(format!(
                "only http and https links are fetched, not {}:",
                url.scheme()
            ));
        }
        if self.unguarded(url) {
            return None;
        }
        let ip = match url.host()? {
            Host::Ipv4(a) => IpAddr::V4(a),
            Host::Ipv6(a) => IpAddr::V6(a),
            Host::Domain(_) => return None,
        };
        not_public(ip).map(|why| self.refusal(&ip.to_string(), ip, why))
    }

    /// The message for a refused address: the rule and the ways out.
    fn refusal(&self, host: &str, ip: IpAddr, why: &str) -> String {
        let named = if host == ip.to_string() {
            format!("{ip} is {why}")
        } else {
            format!("{host} resolves to {ip}, {why}")
        };
        format!(
            "{named}; links may not reach this machine or its network. To allow it, add the host to \
             [links] allow_hosts, or set [links] allow_private = true (xfer: --allow-private-links)"
        )
    }

    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        match &self.lookup {
            Some(f) => f(host.to_string()).await,
            None => Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect()),
        }
    }
}

/// `host:port` of an http(s) URL, lower case, the port made explicit.
fn origin(url: &Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    let port = url.port_or_known_default()?;
    Some(format!("{host}:{port}"))
}

/// Why `ip` is not a public unicast address, or `None` if it is one.
pub fn not_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => not_public_v4(a),
        IpAddr::V6(a) => not_public_v6(a),
    }
}

fn not_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [b0, b1, b2, _] = a.octets();
    Some(match (b0, b1, b2) {
        (0, ..) => "an unspecified (\"this network\") address",
        (127, ..) => "a loopback address",
        (10, ..) | (192, 168, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (169, 254, _) => "a link-local address (cloud metadata services live there)",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, ..) => "a multicast address",
        (240..=255, ..) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn not_public_v6(a: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return not_public_v4(v4);
    }
    let s = a.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return not_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    Some(match s[0] {
        _ if a.is_unspecified() => "an unspecified address",
        _ if a.is_loopback() => "a loopback address",
        0xfc00..=0xfdff => "a unique-local (private) address",
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local (private) address",
        0xff00..=0xffff => "a multicast address",
        0x2001 if s[1] == 0xdb8 => "a documentation address",
        // ::/96 (IPv4-compatible, deprecated) and the rest of ::/8.
        0 => "a reserved address",
        _ => return None,
    })
}

/// A refusal raised inside the resolver, found again in reqwest's error chain.
#[derive(Debug)]
pub(crate) struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// The resolver of link requests. Guarded (`check`), it resolves a name
/// once and hands the connector only the addresses the policy allows;
/// unguarded, it only resolves (through the policy's lookup).
pub(crate) struct Guard {
    pub policy: Arc<LinkPolicy>,
    pub check: bool,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (policy, check) = (self.policy.clone(), self.check);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = policy.lookup(&host).await?;
            if !check {
                let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, 0));
                return Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as reqwest::dns::Addrs);
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = ips
                .into_iter()
                .filter(|ip| match not_public(*ip) {
                    Some(why) => {
                        refused.get_or_insert((*ip, why));
                        false
                    }
                    None => true,
                })
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if allowed.is_empty() {
                let Some((ip, why)) = refused else {
                    let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
                    return Err(e.into());
                };
                return Err(Box::new(Refusal(policy.refusal(&host, ip, why))) as _);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_named() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "carrier-grade"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("::127.0.0.1", "reserved"),
        ] {
            let got = not_public(ip.parse().unwrap());
            assert!(got.is_some_and(|g| g.contains(why)), "{ip}: {got:?}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert_eq!(not_public(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_by_scheme_and_literal_address() {
        let p = LinkPolicy::default();
        let check = |u: &str| p.check_url(&Url::parse(u).unwrap());
        assert!(check("https://example.com/a").is_none());
        assert!(check("http://93.184.216.34/a").is_none());
        let e = check("ftp://example.com/a").unwrap();
        assert!(e.contains("only http and https"), "{e}");
        let e = check("http://127.0.0.1:8080/internal.txt").unwrap();
        assert!(e.contains("127.0.0.1 is a loopback address"), "{e}");
        assert!(
            e.contains("allow_hosts") && e.contains("--allow-private-links"),
            "{e}"
        );
        // The URL parser reads other spellings of an address as that address.
        assert!(check("http://2130706433/").is_some());
        assert!(check("http://0x7f.1/").is_some());
        assert!(check("http://[::ffff:7f00:1]/").is_some());
    }

    #[test]
    fn trusted_origins_and_allowed_hosts_open_only_themselves() {
        let p = LinkPolicy {
            allow_hosts: vec!["files.lan".into(), "10.0.0.5:8443".into()],
            ..Default::default()
        }
        .trust_endpoint("http://127.0.0.1:9000");
        let open = |u: &str| p.unguarded(&Url::parse(u).unwrap());
        assert!(open("http://127.0.0.1:9000/bkt/k?X-Amz-Signature=1"));
        assert!(
            !open("http://127.0.0.1:9001/"),
            "another port of a trusted host"
        );
        assert!(open("http://files.lan:1234/x"));
        assert!(open("http://FILES.lan/x"));
        assert!(open("https://10.0.0.5:8443/x"));
        assert!(!open("https://10.0.0.5/x"));
        assert!(
            p.check_url(&Url::parse("http://127.0.0.1:9000/k").unwrap())
                .is_none()
        );
        assert!(
            p.check_url(&Url::parse("http://127.0.0.1:9001/k").unwrap())
                .is_some()
        );
        let all = LinkPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(
            all.check_url(&Url::parse("http://127.0.0.1/").unwrap())
                .is_none()
        );
        assert!(
            all.check_url(&Url::parse("file:///etc/passwd").unwrap())
                .is_some()
        );
    }
}
