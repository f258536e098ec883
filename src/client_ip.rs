//! The client's IP address, for login throttling and the access log.
//!
//! It is the socket's peer address. Only when that peer is one of
//! `[server] trusted_proxies` is `X-Forwarded-For` read, and then from the
//! right: the first address that is not itself a trusted proxy is the client.
//! A client cannot choose its own address by sending the header.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// An address or a CIDR block, e.g. `10.0.0.0/8` or `::1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("\"{s}\" has a bad prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    if shift >= 128 {
        return true;
    }
    (net >> shift) == (ip >> shift)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address for a request from `peer`.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().parse::<IpAddr>().map(canonical))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip,
            // A garbled hop: nothing to its left can be trusted.
            Err(_) => break,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn cidr_blocks_match_what_they_cover() {
        let n: IpNet = "10.0.0.0/8".parse().expect("net");
        assert!(n.contains("10.200.3.4".parse().expect("ip")));
        assert!(!n.contains("11.0.0.1".parse().expect("ip")));
        assert!(n.contains("::ffff:10.1.1.1".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("net");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        let one: IpNet = "::1".parse().expect("net");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().expect("addr");
        let ip = client_ip(peer, &xff("1.2.3.4"), &nets(&["127.0.0.1"]));
        assert_eq!(ip, peer.ip());
    }

    #[test]
    fn a_trusted_proxy_gives_the_rightmost_untrusted_hop() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let ip = client_ip(peer, &xff("6.6.6.6, 198.51.100.7, 10.0.0.5"), &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().expect("ip"));
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer.ip());
        // Garbage in the header stops the walk.
        let ip = client_ip(peer, &xff("6.6.6.6, garbage"), &trusted);
        assert_eq!(ip, peer.ip());
    }
}

/// The resolved client address, put in the request's extensions by the
/// access log layer.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);
