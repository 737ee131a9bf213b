//! Address prefixes ("192.0.2.0/24", "2001:db8::/32", or one address) for
//! the address filters of `collector query`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network: the addresses sharing its first `len` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    network: IpAddr,
    len: u8,
}

/// Why a prefix was refused, said so an operator can fix the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IPv4 or IPv6 address or prefix (like 192.0.2.0/24 or 2001:db8::/32)")]
    NotAnAddress(String),
    /// The length is not a number within the family's bits.
    #[error("`{text}`: prefix length must be a number from 0 to {max}")]
    BadLength {
        /// The argument as given.
        text: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits beyond the length are set: probably a typo, so it is not
    /// silently widened.
    #[error("`{text}` has host bits set; did you mean {suggestion}?")]
    HostBits {
        /// The argument as given.
        text: String,
        /// The network the argument's length selects.
        suggestion: IpPrefix,
    },
}

impl IpPrefix {
    /// Whether `addr` lies in this network (never across address families).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask32(self.len) & u32::from(a) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                mask128(self.len) & u128::from(a) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, length) = match text.split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (text, None),
        };
        let addr: IpAddr = address
            .parse()
            .map_err(|_| PrefixError::NotAnAddress(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match length {
            None => max,
            Some(length) => length.parse::<u8>().ok().filter(|len| *len <= max).ok_or(
                PrefixError::BadLength {
                    text: text.to_owned(),
                    max,
                },
            )?,
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(len)).into()),
        };
        let prefix = Self { network, len };
        if network != addr {
            return Err(PrefixError::HostBits {
                text: text.to_owned(),
                suggestion: prefix,
            });
        }
        Ok(prefix)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_prefixes_hold_their_addresses_only() {
        let net = prefix("198.51.100.0/24");
        assert!(net.contains(ip("198.51.100.0")));
        assert!(net.contains(ip("198.51.100.255")));
        assert!(!net.contains(ip("198.51.101.0")));
        assert!(!net.contains(ip("::ffff:198.51.100.1")), "no family mixing");
        assert!(prefix("0.0.0.0/0").contains(ip("203.0.113.9")));
        let host = prefix("192.0.2.7");
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.6")));
    }

    #[test]
    fn ipv6_prefixes_hold_their_addresses_only() {
        let net = prefix("2001:db8:10::/48");
        assert!(net.contains(ip("2001:db8:10::1")));
        assert!(net.contains(ip("2001:db8:10:ffff::1")));
        assert!(!net.contains(ip("2001:db8:11::1")));
        assert!(!net.contains(ip("192.0.2.1")));
        assert!(prefix("::/0").contains(ip("2001:db8::1")));
        assert_eq!(prefix("2001:db8::1").to_string(), "2001:db8::1/128");
    }

    #[test]
    fn bad_prefixes_are_refused_with_the_reason() {
        assert_eq!(
            "192.0.2.0/33".parse::<IpPrefix>(),
            Err(PrefixError::BadLength {
                text: "192.0.2.0/33".into(),
                max: 32
            })
        );
        assert!(matches!(
            "2001:db8::/129".parse::<IpPrefix>(),
            Err(PrefixError::BadLength { max: 128, .. })
        ));
        assert!(matches!(
            "example.net/24".parse::<IpPrefix>(),
            Err(PrefixError::NotAnAddress(_))
        ));
        assert!(matches!(
            "192.0.2.0/x".parse::<IpPrefix>(),
            Err(PrefixError::BadLength { .. })
        ));
        let err = "192.0.2.1/24".parse::<IpPrefix>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`192.0.2.1/24` has host bits set; did you mean 192.0.2.0/24?"
        );
    }
}
