//! Every rule a name, number or address must satisfy, whichever way it arrives:
//! the cluster file ([`super::validate`]), the local API (`agent::handlers`) and
//! the node plan (`host::plan`) all call these. Each returns the problem in words
//! that make sense after "field: ".

use std::net::{Ipv4Addr, SocketAddr};

use overlay_common::VNI_MAX;

use crate::model::Subnet;

/// Names that appear in gossip keys, pin paths and table output are kept plain:
/// 1-64 of A-Z a-z 0-9 - _ ., not starting with a dot. `what` names the kind of
/// name in the error, `why` says what else it is used for.
fn plain_name(name: &str, what: &str, why: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a {what} (1-64 of A-Z a-z 0-9 - _ ., not starting with .{why})"
        ))
    }
}

pub fn node_name(name: &str) -> Result<(), String> {
    plain_name(name, "node name", "; it names the pin directory")
}

pub fn network_name(name: &str) -> Result<(), String> {
    plain_name(name, "network name", "")
}

/// An interface name as the kernel takes it (IFNAMSIZ - 1 bytes, no slash).
pub fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
        Err(format!("{name:?} is not an interface name"))
    } else {
        Ok(())
    }
}

/// A named network namespace: a file in `/var/run/netns` (whether it exists is
/// the host's to say: `host::netns::existing`).
pub fn netns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        Err(format!("{name:?} is not a namespace name"))
    } else {
        Ok(())
    }
}

/// A VXLAN network identifier: 24 bits, 0 reserved.
pub fn vni(vni: i64) -> Result<u32, String> {
    match u32::try_from(vni) {
        Ok(v) if (1..=VNI_MAX).contains(&v) => Ok(v),
        _ => Err(format!("{vni} is outside 1..={VNI_MAX}")),
    }
}

/// A network's subnet: a prefix with room for at least two endpoints besides its
/// network and broadcast addresses.
pub fn network_subnet(text: &str) -> Result<Subnet, String> {
    let subnet: Subnet = text.parse()?;
    if subnet.prefix_len > 30 {
        return Err(format!("{subnet} is too small for endpoints (at most /30)"));
    }
    Ok(subnet)
}

/// An endpoint MTU the kernel accepts for IPv4.
pub fn mtu(mtu: u32) -> Result<(), String> {
    if (68..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(format!("{mtu} is outside 68..=65535"))
    }
}

/// An address packets can be sent to and come from: a VTEP.
pub fn unicast(ip: Ipv4Addr) -> Result<(), String> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        Err(format!("{ip} is not a unicast address"))
    } else {
        Ok(())
    }
}

/// An endpoint address of network `network`: inside its subnet, and neither its
/// network nor its broadcast address.
pub fn host_address(ip: Ipv4Addr, network: &str, subnet: Subnet) -> Result<(), String> {
    if !subnet.contains(ip) {
        return Err(format!(
            "{ip} is outside network {network:?}'s subnet {subnet}, so not a host address of it"
        ));
    }
    if subnet.is_reserved(ip) {
        return Err(format!(
            "{ip} is the network or broadcast address of {subnet}, not a host address"
        ));
    }
    Ok(())
}

/// Where the metrics endpoint listens: an address (IPv4 or IPv6) and a port.
pub fn metrics_listen(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an address and port such as \"127.0.0.1:9464\""))?;
    if addr.port() == 0 {
        return Err(format!("{text:?} needs a port"));
    }
    Ok(addr)
}

/// A `[low, high]` range of outer UDP source ports.
pub fn source_ports(ports: [u16; 2]) -> Result<(), String> {
    if ports[0] == 0 || ports[0] > ports[1] {
        Err(format!(
            "{ports:?} is not a range [low, high] with 0 < low <= high"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_not_hidden() {
        assert!(node_name("node-1.a_b").is_ok());
        for bad in ["", ".hidden", "a/b", "a:b", &"x".repeat(65)] {
            assert!(node_name(bad).is_err(), "{bad:?}");
            assert!(network_name(bad).is_err(), "{bad:?}");
        }
        assert!(netns_name("c1").is_ok());
        assert!(netns_name("a/b").is_err());
        assert!(netns_name("..").is_err());
        assert!(interface_name("eth0").is_ok());
        assert!(interface_name("sixteen-chars-xx").is_err());
    }

    #[test]
    fn vnis_subnets_and_addresses() {
        assert_eq!(vni(4097), Ok(4097));
        assert!(vni(0).is_err());
        assert!(vni(16_777_216).is_err());
        assert!(vni(-1).is_err());
        assert!(network_subnet("10.0.0.0/30").is_ok());
        assert!(network_subnet("10.0.0.0/31").is_err());
        assert!(network_subnet("10.0.0.1/24").is_err());
        let s: Subnet = "10.0.0.0/24".parse().unwrap();
        assert!(host_address(Ipv4Addr::new(10, 0, 0, 3), "n", s).is_ok());
        assert!(host_address(Ipv4Addr::new(10, 0, 0, 255), "n", s).is_err());
        assert!(host_address(Ipv4Addr::new(10, 0, 1, 3), "n", s).is_err());
        assert!(unicast(Ipv4Addr::new(224, 0, 0, 1)).is_err());
        assert!(source_ports([10, 9]).is_err());
        assert!(metrics_listen("127.0.0.1:9464").is_ok());
        assert!(metrics_listen("0.0.0.0:0").is_err());
        assert!(metrics_listen("localhost:9464").is_err());
    }
}
