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

/// A network namespace as the API, the CLI and the file name it: a name in
/// `/var/run/netns` (`ip netns add NAME`), or an absolute path to a namespace
/// file (CNI's `/run/netns/cni-…`, `/proc/PID/ns/net`, Docker's
/// `/var/run/docker/netns/ID`). Whether it exists is the host's to say
/// (`host::netns::existing`).
pub fn netns(netns: &str) -> Result<(), String> {
    if netns.starts_with('/') {
        if netns.contains('\0') || netns.split('/').any(|part| part == "..") {
            return Err(format!("{netns:?} is not a namespace path"));
        }
        return Ok(());
    }
    if netns.is_empty() || netns.contains(['/', '\0']) || netns.starts_with('.') {
        Err(format!(
            "{netns:?} is neither a namespace name nor an absolute namespace path"
        ))
    } else {
        Ok(())
    }
}

/// A runtime's container ID (CNI's `CNI_CONTAINERID`, Docker's EndpointID):
/// non-empty, printable, at most 256 bytes.
pub fn container_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        Err(format!(
            "{id:?} is not a container ID (1-256 printable characters)"
        ))
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

/// Where VNIs that nobody chose are allocated: above the range people type by
/// hand (Docker's overlay starts at 4096).
pub const ALLOCATED_VNIS: std::ops::RangeInclusive<u32> = (1 << 20)..=VNI_MAX;

/// The VNI of a network created without one: a hash of its name into
/// [`ALLOCATED_VNIS`], moved on to the next free one while `taken` says it is
/// used. Every node that knows the same networks picks the same VNI; two
/// creations that could not see each other are settled by resolve, as any VNI
/// clash is.
pub fn allocate_vni(name: &str, taken: impl Fn(u32) -> bool) -> Result<u32, String> {
    let (low, high) = (*ALLOCATED_VNIS.start(), *ALLOCATED_VNIS.end());
    let span = high - low + 1;
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (0..span)
        .map(|i| low + (hash.wrapping_add(i) % span))
        .find(|vni| !taken(*vni))
        .ok_or_else(|| "every VNI is taken".to_owned())
}

/// A new network's subnet must not overlap another overlay network's: each
/// endpoint address must name one container, also for the host's routes.
pub fn subnet_free<'a>(
    subnet: Subnet,
    others: impl IntoIterator<Item = (&'a str, Subnet)>,
) -> Result<(), String> {
    match others.into_iter().find(|(_, o)| o.overlaps(subnet)) {
        Some((name, other)) => Err(format!(
            "{subnet} overlaps network {name:?}'s subnet {other}"
        )),
        None => Ok(()),
    }
}

/// A network's addressing: its gateway (the given one, else the subnet's first
/// host address) and its auxiliary addresses, all host addresses of the
/// subnet, none twice. Neither is ever given to an endpoint. The error names
/// the option: `gateway`, or `aux_addresses[i]`.
pub fn network_addresses(
    network: &str,
    subnet: Subnet,
    gateway: Option<Ipv4Addr>,
    aux: &[Ipv4Addr],
) -> Result<Ipv4Addr, (String, String)> {
    let gateway = gateway.unwrap_or_else(|| subnet.first_host());
    host_address(gateway, network, subnet).map_err(|p| ("gateway".to_owned(), p))?;
    for (i, &a) in aux.iter().enumerate() {
        let field = || format!("aux_addresses[{i}]");
        host_address(a, network, subnet).map_err(|p| (field(), p))?;
        if a == gateway {
            return Err((field(), format!("{a} is the gateway already")));
        }
        if aux[..i].contains(&a) {
            return Err((field(), format!("{a} is listed twice")));
        }
    }
    Ok(gateway)
}

/// An endpoint address that the network keeps for itself: its gateway or an
/// auxiliary address.
pub fn not_reserved(
    ip: Ipv4Addr,
    network: &str,
    gateway: Ipv4Addr,
    aux: &[Ipv4Addr],
) -> Result<(), String> {
    if ip == gateway {
        Err(format!(
            "{ip} is network {network:?}'s gateway, which no endpoint may take"
        ))
    } else if aux.contains(&ip) {
        Err(format!(
            "{ip} is an auxiliary address of network {network:?}, which no endpoint may take"
        ))
    } else {
        Ok(())
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

/// The underlay MTU gossip datagrams are cut to: at least IPv4's minimum
/// datagram size (576), so that a chunk still carries more than the seal.
pub fn gossip_mtu(mtu: u32) -> Result<(), String> {
    if (576..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(format!(
            "{mtu} is outside 576..=65535 (the underlay's IP MTU, 1500 on Ethernet)"
        ))
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

/// Where the Docker plugin is served: an absolute path of a socket file.
/// dockerd finds `/run/docker/plugins/<name>.sock` by the name alone; a
/// socket elsewhere needs `/etc/docker/plugins/<name>.spec`.
pub fn plugin_socket(path: &str) -> Result<(), String> {
    let clean = path.starts_with('/')
        && path.ends_with(".sock")
        && !path.contains('\0')
        && !path.split('/').any(|part| part == "..");
    if clean {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not an absolute path of a socket file (…/overlay-ebpf.sock)"
        ))
    }
}

/// A Docker Engine address: `unix://` and an absolute socket path (the
/// only transport the agent speaks to its own node's dockerd).
pub fn docker_engine(address: &str) -> Result<std::path::PathBuf, String> {
    match address.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') && !path.contains('\0') => Ok(path.into()),
        _ => Err(format!(
            "{address:?} is not a unix socket address such as \"unix:///var/run/docker.sock\""
        )),
    }
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
        assert!(netns("c1").is_ok());
        assert!(netns("/run/netns/cni-1234").is_ok());
        assert!(netns("/proc/42/ns/net").is_ok());
        assert!(netns("a/b").is_err());
        assert!(netns("..").is_err());
        assert!(netns("/run/netns/../x").is_err());
        assert!(container_id("abc123").is_ok());
        assert!(container_id("").is_err());
        assert!(container_id("a\nb").is_err());
        assert!(interface_name("eth0").is_ok());
        assert!(interface_name("sixteen-chars-xx").is_err());
        assert!(plugin_socket("/run/docker/plugins/overlay-ebpf.sock").is_ok());
        assert!(plugin_socket("overlay-ebpf.sock").is_err());
        assert!(plugin_socket("/run/docker/plugins/overlay-ebpf").is_err());
        assert_eq!(
            docker_engine("unix:///var/run/docker.sock"),
            Ok("/var/run/docker.sock".into())
        );
        assert!(docker_engine("tcp://127.0.0.1:2375").is_err());
        assert!(docker_engine("unix://docker.sock").is_err());
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

    #[test]
    fn allocated_vnis_are_stable_and_skip_taken_ones() {
        let first = allocate_vni("uber-net", |_| false).unwrap();
        assert!(ALLOCATED_VNIS.contains(&first));
        assert_eq!(allocate_vni("uber-net", |_| false).unwrap(), first);
        let next = allocate_vni("uber-net", |v| v == first).unwrap();
        assert_ne!(next, first);
        assert!(ALLOCATED_VNIS.contains(&next));
        assert_ne!(allocate_vni("other-net", |_| false).unwrap(), first);
    }

    #[test]
    fn subnets_gateways_and_aux_addresses() {
        let s: Subnet = "10.0.0.0/24".parse().unwrap();
        let inner: Subnet = "10.0.0.128/25".parse().unwrap();
        let apart: Subnet = "10.0.1.0/24".parse().unwrap();
        let err = subnet_free(inner, [("a", apart), ("b", s)]).unwrap_err();
        assert!(err.contains("network \"b\"'s subnet 10.0.0.0/24"), "{err}");
        assert!(subnet_free(apart, [("b", s)]).is_ok());
        let ip = |d| Ipv4Addr::new(10, 0, 0, d);
        assert_eq!(network_addresses("n", s, None, &[]), Ok(ip(1)));
        assert_eq!(
            network_addresses("n", s, Some(ip(254)), &[ip(1)]),
            Ok(ip(254))
        );
        assert_eq!(
            network_addresses("n", s, Some(ip(0)), &[]).unwrap_err().0,
            "gateway"
        );
        assert_eq!(
            network_addresses("n", s, None, &[ip(5), ip(1)])
                .unwrap_err()
                .0,
            "aux_addresses[1]"
        );
        assert_eq!(
            network_addresses("n", s, None, &[Ipv4Addr::new(10, 9, 0, 1)])
                .unwrap_err()
                .0,
            "aux_addresses[0]"
        );
        assert!(not_reserved(ip(1), "n", ip(1), &[]).is_err());
        assert!(not_reserved(ip(7), "n", ip(1), &[ip(7)]).is_err());
        assert!(not_reserved(ip(8), "n", ip(1), &[ip(7)]).is_ok());
    }
}
