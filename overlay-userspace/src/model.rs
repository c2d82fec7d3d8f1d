//! The shared vocabulary of every floor: addresses as the overlay uses them.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Serialize};

/// An IPv4 prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    pub fn mask(self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix_len)
        }
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The network and broadcast addresses, which no endpoint may use (/31 and /32 have none).
    pub fn is_reserved(self, ip: Ipv4Addr) -> bool {
        if self.prefix_len >= 31 {
            return false;
        }
        let host = u32::from(ip) & !self.mask();
        host == 0 || host == !self.mask()
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(self, other: Subnet) -> bool {
        let shorter = if self.prefix_len <= other.prefix_len {
            self
        } else {
            other
        };
        shorter.contains(self.network) && shorter.contains(other.network)
    }

    /// The first address after the network address: the default gateway, as
    /// Docker's IPAM picks it.
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + u32::from(self.prefix_len < 31))
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR prefix such as \"10.0.0.0/24\""))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{len:?} is not a prefix length in 0..=32"))?;
        let subnet = Subnet {
            network: addr,
            prefix_len,
        };
        let network = Ipv4Addr::from(u32::from(addr) & subnet.mask());
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean \"{network}/{prefix_len}\"?"
            ));
        }
        Ok(subnet)
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Docker's convention: 02:42 followed by the IPv4 address.
    pub fn from_ipv4(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address such as \"02:42:0a:00:00:03\"");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "{s} is a multicast address; an endpoint needs a unicast MAC"
            ));
        }
        if mac == [0; 6] {
            return Err("00:00:00:00:00:00 is not a usable MAC".into());
        }
        Ok(Mac(mac))
    }
}

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The MAC the gateway of a network answers ARP with, and the host ends of its
/// endpoints' veths carry: Docker's convention applied to the gateway address,
/// which no endpoint may take, so no endpoint has this MAC either.
pub fn gateway_mac(gateway: Ipv4Addr) -> Mac {
    Mac::from_ipv4(gateway)
}

/// Who puts an endpoint's container end in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plumbing {
    /// The agent moves the container end into the namespace, names it, and sets
    /// its MAC, MTU, address and routes (the CLI, the cluster file, CNI).
    #[default]
    Agent,
    /// The agent leaves the container end in its own namespace, with MAC and
    /// MTU set; the caller moves it into the sandbox and sets the address and
    /// routes (Docker's Join: it moves `SrcName`, renames it, keeps the MTU).
    Caller,
}

/// A transport protocol a port is published for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// A published port (Docker's `-p HOST_PORT:CONTAINER_PORT`): what reaches
/// `host_port` on this node, at `host_ip` or at any of its addresses, goes to
/// the container's `container_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl PortMapping {
    /// Whether both would take the same packets: one protocol and port, and
    /// the same host address or either on all of them.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}
