//! Outbound fetches that cannot be turned against the node (SSRF): a job's `urlDownload` input (and
//! any redirect it leads to) may reach only public addresses, unless the node's owner allows a
//! host or network (`Compute.Fetch.AllowPrivate`). The check is made on the address actually
//! connected to — by the HTTP client's resolver for names, so a name that resolves to a public
//! address for the check and to 127.0.0.1 for the connection (DNS rebinding) cannot slip through,
//! and by the redirect policy for address literals — at every hop.
//!
//! Not public: loopback, private (RFC 1918, unique local), link-local (the cloud metadata service
//! at 169.254.169.254 among them), shared/CGNAT, multicast, broadcast, unspecified, documentation
//! and benchmarking ranges, and IPv4 mapped into IPv6 is judged as IPv4.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b)) // NAT64: embeds any IPv4
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 shared
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240)
}

/// `a.b.c.d/n` or `x::/n` containing `ip`.
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return cidr.parse::<IpAddr>().is_ok_and(|n| n == ip);
    };
    let Ok(bits) = bits.parse::<u32>() else {
        return false;
    };
    match (net.parse::<IpAddr>(), ip) {
        (Ok(IpAddr::V4(n)), IpAddr::V4(a)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            (u32::from(n) & mask) == (u32::from(a) & mask)
        }
        (Ok(IpAddr::V6(n)), IpAddr::V6(a)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            (u128::from(n) & mask) == (u128::from(a) & mask)
        }
        _ => false,
    }
}

/// What a node lets its fetches reach besides public addresses.
#[derive(Debug, Clone, Default)]
pub struct FetchGuard {
    allow: Vec<String>,
}

impl FetchGuard {
    pub fn new(allow_private: &[String], also: impl IntoIterator<Item = String>) -> Self {
        let mut allow: Vec<String> = allow_private
            .iter()
            .map(|a| a.trim().to_ascii_lowercase())
            .filter(|a| !a.is_empty())
            .collect();
        allow.extend(also);
        FetchGuard { allow }
    }

    /// Whether a fetch of `host` may connect to `ip`.
    pub fn permits(&self, host: &str, ip: IpAddr) -> bool {
        is_public(ip)
            || self.allow.iter().any(|a| {
                a == "*" || cidr_contains(a, ip) || caravel_model::admission::glob(a, host)
            })
    }

    /// The refusal of a fetch of `host` at `ip`, in words that say what to change.
    pub fn refusal(host: &str, ip: IpAddr) -> String {
        format!(
            "{host} is at {ip}, a loopback, private or link-local address this node does not fetch from (its owner may allow it in Compute.Fetch.AllowPrivate)"
        )
    }

    /// A URL's literal-address host, checked (names are checked by [`GuardedResolver`]).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("the URL has no host".into()),
        };
        let host = url.host_str().unwrap_or_default();
        if self.permits(host, ip) {
            Ok(())
        } else {
            Err(Self::refusal(host, ip))
        }
    }
}

/// The HTTP client's resolver: resolves, then keeps only the addresses the guard permits; a name
/// with none left is an error that names it and the address refused.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub guard: Arc<FetchGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
                .into_iter()
                .partition(|a| guard.permits(&host, a.ip()));
            if ok.is_empty() {
                let why = match refused.first() {
                    Some(a) => FetchGuard::refusal(&host, a.ip()),
                    None => format!("{host} resolves to no address"),
                };
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    why,
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_owner_allows_hosts_and_networks() {
        let g = FetchGuard::new(&["files.corp".into(), "10.20.0.0/16".into()], []);
        assert!(g.permits("files.corp", "10.0.0.5".parse().unwrap()));
        assert!(g.permits("x", "10.20.3.4".parse().unwrap()));
        assert!(!g.permits("x", "10.21.3.4".parse().unwrap()));
        assert!(!g.permits("metadata", "169.254.169.254".parse().unwrap()));
        let all = FetchGuard::new(&["*".into()], []);
        assert!(all.permits("x", "127.0.0.1".parse().unwrap()));
        let url = reqwest::Url::parse("http://169.254.169.254/latest/meta-data/").unwrap();
        let e = FetchGuard::default().check_url(&url).unwrap_err();
        assert!(e.contains("Compute.Fetch.AllowPrivate"), "{e}");
    }
}
