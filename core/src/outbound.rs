//! The outbound guard: webhooks must not become a way into the network KiviHook runs in.
//!
//! Every address a webhook URL resolves to is checked, when the webhook is saved and again
//! at every delivery (the resolver of the outbound HTTP client does it, so a name that
//! resolves somewhere else later — DNS rebinding — is caught too). Loopback, private,
//! link-local (cloud metadata at 169.254.169.254 among them), CGNAT, multicast, unspecified
//! and reserved addresses are refused, in IPv4, IPv6 and IPv4-mapped forms, unless they
//! fall inside `KIVIHOOK_OUTBOUND_ALLOW`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One `address/prefix` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn v4_forbidden(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || o[0] >= 240 // 240.0.0.0/4, reserved
}

fn v6_forbidden(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_forbidden(v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32, documentation
        || (s[0] == 0x64 && s[1] == 0xff9b) // 64:ff9b::/96, NAT64 (reaches IPv4 inside)
        || s[0] == 0x2002 // 2002::/16, 6to4 (embeds an IPv4 address)
        || (s[..6] == [0, 0, 0, 0, 0, 0]) // ::/96, IPv4-compatible (deprecated)
}

/// Whether an address is one that webhooks may not reach by default.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

/// The outbound policy of an installation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    pub allow: Vec<Cidr>,
    pub require_https: bool,
    /// The egress proxy every delivery goes through (`KIVIHOOK_OUTBOUND_PROXY`), if any. The
    /// environment's `HTTP(S)_PROXY` is never used: through a proxy, the proxy resolves the
    /// names, and the guard can no longer check at each delivery where a name leads.
    pub proxy: Option<url::Url>,
}

/// Why a URL may not be called.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("must use https (KIVIHOOK_REQUIRE_HTTPS is set)")]
    NotHttps,
    #[error("points at {0}, a loopback, private, link-local or reserved address; allow it with KIVIHOOK_OUTBOUND_ALLOW")]
    Forbidden(IpAddr),
    #[error("`{0}` resolves only to loopback, private, link-local or reserved addresses ({1}); allow them with KIVIHOOK_OUTBOUND_ALLOW")]
    ResolvesForbidden(String, IpAddr),
    #[error("`{0}` does not resolve ({1})")]
    Unresolvable(String, String),
}

impl Guard {
    /// Parse `KIVIHOOK_OUTBOUND_ALLOW`: comma-separated CIDR blocks.
    pub fn parse_allow(s: &str) -> Result<Vec<Cidr>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Cidr::parse)
            .collect()
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // A mapped address is the IPv4 address it carries.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !is_forbidden(ip) || self.allow.iter().any(|c| c.contains(ip))
    }

    /// Check a URL the way a delivery would reach it: its scheme, and every address its host
    /// is or resolves to (when saving a webhook). A name that does not resolve passes.
    pub async fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        if self.require_https && url.scheme() != "https" {
            return Err(Refused::NotHttps);
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                let port = url.port_or_known_default().unwrap_or(443);
                match self.resolve(name, port).await {
                    // A name that does not resolve now is no danger; every delivery checks
                    // again what it resolves to then.
                    Err(Refused::Unresolvable(..)) => Ok(()),
                    other => other.map(|_| ()),
                }
            }
            None => Err(Refused::Unresolvable(String::new(), "no host".into())),
        }
    }

    /// Refuse a literal address the policy does not permit.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refused::Forbidden(ip))
        }
    }

    /// Every address a name resolves to, unchecked.
    async fn lookup(name: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        Ok(
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                .await
                .map_err(|_| Refused::Unresolvable(name.to_owned(), "timed out".into()))?
                .map_err(|e| Refused::Unresolvable(name.to_owned(), e.to_string()))?
                .collect(),
        )
    }

    /// Resolve a name and keep only permitted addresses; an error if none is left.
    pub async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let found = Self::lookup(name, port).await?;
        let first = found.first().map(SocketAddr::ip);
        let permitted: Vec<SocketAddr> =
            found.into_iter().filter(|a| self.permits(a.ip())).collect();
        match (permitted.is_empty(), first) {
            (true, Some(ip)) => Err(Refused::ResolvesForbidden(name.to_owned(), ip)),
            _ => Ok(permitted),
        }
    }
}

/// The outbound HTTP client's resolver: the guard runs on every connection it opens.
pub struct GuardedResolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            // The configured proxy is the operator's own choice, wherever it is; every other
            // connection goes through it, and it resolves those names itself.
            let is_proxy = guard
                .proxy
                .as_ref()
                .and_then(|p| p.host_str())
                .is_some_and(|h| h.eq_ignore_ascii_case(name.as_str()));
            let addrs = if is_proxy {
                Guard::lookup(name.as_str(), 0).await
            } else {
                guard.resolve(name.as_str(), 0).await
            }
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_forbidden_in_every_form() {
        for s in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
        ] {
            assert!(is_forbidden(ip(s)), "{s}");
        }
        for s in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
        ] {
            assert!(!is_forbidden(ip(s)), "{s}");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_blocks() {
        let g = Guard {
            allow: Guard::parse_allow("127.0.0.0/8, 10.1.0.0/16").unwrap(),
            require_https: false,
            proxy: None,
        };
        assert!(g.permits(ip("127.0.0.1")));
        assert!(g.permits(ip("::ffff:127.0.0.1")));
        assert!(g.permits(ip("10.1.2.3")));
        assert!(!g.permits(ip("10.2.0.1")));
        assert!(!g.permits(ip("::1")));
        assert!(!g.permits(ip("169.254.169.254")));
        assert!(Guard::parse_allow("10.0.0.0/33").is_err());
        assert!(Guard::parse_allow("nope").is_err());
        assert_eq!(Guard::parse_allow("").unwrap(), vec![]);
    }

    #[tokio::test]
    async fn urls_are_checked_by_what_they_resolve_to() {
        let g = Guard::default();
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(matches!(
            g.check_url(&url("http://169.254.169.254/latest")).await,
            Err(Refused::Forbidden(_))
        ));
        assert!(matches!(
            g.check_url(&url("http://[::ffff:127.0.0.1]/")).await,
            Err(Refused::Forbidden(_))
        ));
        assert!(matches!(
            g.check_url(&url("http://localhost:8080/")).await,
            Err(Refused::ResolvesForbidden(..))
        ));
        let strict = Guard {
            allow: vec![],
            require_https: true,
            proxy: None,
        };
        assert_eq!(
            strict.check_url(&url("http://93.184.216.34/")).await,
            Err(Refused::NotHttps)
        );
        assert!(g.check_url(&url("https://93.184.216.34/")).await.is_ok());
    }
}
