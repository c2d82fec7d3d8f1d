//! Docker's words turned into the agent's: a CreateNetwork's options and
//! IPAM data into a [`NetworkCreate`], `-p`'s bindings into port mappings.
//! Every refusal names the option as the user typed it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::Value;

use super::protocol::{
    ADDRESS_SPACE, CreateNetwork, ENABLE_IPV6, GENERIC, INTERNAL, IpamData, PORT_MAP, PortBinding,
};
use crate::{
    api::proto::NetworkCreate,
    config::DOCKER_PLUGIN,
    model::{PortMapping, Protocol},
};

/// The `-o` keys a network takes. Docker's own MTU key is taken too, so that
/// a command written for Docker's overlay keeps working.
const VNI: &str = "vni";
const MTU: &[&str] = &["mtu", "com.docker.network.driver.mtu"];

/// The network a CreateNetwork asks for, its name still unknown (empty), or
/// why not.
pub fn network_create(c: &CreateNetwork) -> Result<NetworkCreate, String> {
    if flag(&c.options, ENABLE_IPV6) || c.ipv6_data.as_ref().is_some_and(|v6| !v6.is_empty()) {
        return Err(ipv6_refused());
    }
    let v4 = match c.ipv4_data.as_deref() {
        Some([one]) => one,
        Some([]) | None => return Err("--subnet: a network needs one IPv4 subnet".into()),
        Some(_) => return Err("--subnet: an overlay network has exactly one subnet".into()),
    };
    if v4.address_space != ADDRESS_SPACE {
        return Err(format!(
            "--ipam-driver: this network's addresses come from another IPAM driver \
             ({:?} address space), which hands them out per node, so two nodes would \
             give containers the same address; add --ipam-driver {DOCKER_PLUGIN}",
            v4.address_space
        ));
    }
    let mut create = NetworkCreate {
        subnet: v4.pool.clone(),
        gateway: address(&v4.gateway, "--gateway")?,
        aux_addresses: aux_addresses(v4)?,
        internal: flag(&c.options, INTERNAL),
        ..NetworkCreate::default()
    };
    for (key, value) in generic(&c.options)? {
        match key.as_str() {
            VNI => {
                create.vni = Some(
                    value
                        .parse()
                        .map_err(|_| format!("-o vni={value}: not a number"))?,
                );
            }
            k if MTU.contains(&k) => {
                create.mtu = Some(
                    value
                        .parse()
                        .map_err(|_| format!("-o {k}={value}: not a number"))?,
                );
            }
            other => {
                return Err(format!(
                    "-o {other}: unknown option of the {DOCKER_PLUGIN} driver (it takes vni and mtu)"
                ));
            }
        }
    }
    Ok(create)
}

pub fn ipv6_refused() -> String {
    "--ipv6: the overlay carries IPv4 only, as Docker's overlay does by default".into()
}

fn flag(options: &BTreeMap<String, Value>, key: &str) -> bool {
    match options.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The `-o` map: string values (Docker sends `map[string]string`).
fn generic(options: &BTreeMap<String, Value>) -> Result<Vec<(String, String)>, String> {
    let Some(map) = options.get(GENERIC) else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = map else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(format!("-o {k}={other}: not a string")),
        })
        .collect()
}

/// An address in Docker's CIDR form (`10.0.9.1/24`); empty is none.
fn address(cidr: &str, option: &str) -> Result<Option<Ipv4Addr>, String> {
    if cidr.is_empty() {
        return Ok(None);
    }
    let ip = cidr.split_once('/').map_or(cidr, |(ip, _)| ip);
    ip.parse()
        .map(Some)
        .map_err(|_| format!("{option} {cidr}: not an IPv4 address"))
}

/// `--aux-address` in address order, so every node stores the same list.
fn aux_addresses(v4: &IpamData) -> Result<Vec<Ipv4Addr>, String> {
    let mut aux = v4
        .aux_addresses
        .iter()
        .map(|(name, cidr)| {
            // Empty is no address here: an aux address that names none.
            let option = format!("--aux-address {name}=");
            address(cidr, &option)?.ok_or_else(|| format!("{option}: no address given"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    aux.sort_unstable();
    Ok(aux)
}

/// The ports a ProgramExternalConnectivity's options publish (Docker's port
/// map; none when absent or null).
pub fn published_ports(options: &BTreeMap<String, Value>) -> Result<Vec<PortMapping>, String> {
    let bindings: Vec<PortBinding> = match options.get(PORT_MAP) {
        Some(v) if !v.is_null() => serde_json::from_value(v.clone())
            .map_err(|e| format!("-p: Docker's port map is not valid: {e}"))?,
        _ => Vec::new(),
    };
    port_mappings(&bindings)
}

/// `-p`'s bindings as the agent publishes them. IPv6 host addresses are left
/// out (the overlay is IPv4); a host port range publishes its first port.
pub fn port_mappings(bindings: &[PortBinding]) -> Result<Vec<PortMapping>, String> {
    let mut ports = Vec::new();
    for b in bindings {
        let protocol = match b.proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            other => return Err(format!("-p {}: unknown protocol number {other}", b.port)),
        };
        let host_ip = match b.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            ip if ip.contains(':') => continue,
            ip => Some(
                ip.parse()
                    .map_err(|_| format!("-p {ip}:{}: not an IPv4 address", b.host_port))?,
            ),
        };
        ports.push(PortMapping {
            protocol,
            host_ip,
            host_port: b.host_port,
            container_port: b.port,
        });
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> CreateNetwork {
        serde_json::from_str(json).unwrap()
    }

    const V4: &str = r#""IPv4Data":[{"AddressSpace":"overlay-ebpf","Pool":"10.0.9.0/24","Gateway":"10.0.9.254/24","AuxAddresses":{"b":"10.0.9.5/24","a":"10.0.9.3/24"}}]"#;

    #[test]
    fn options_become_the_agents_network() {
        let c = request(&format!(
            r#"{{"NetworkID":"x","Options":{{"com.docker.network.internal":true,
            "com.docker.network.generic":{{"vni":"5000","com.docker.network.driver.mtu":"1400"}}}},{V4}}}"#
        ));
        let n = network_create(&c).unwrap();
        assert_eq!(n.name, "");
        assert_eq!(n.subnet, "10.0.9.0/24");
        assert_eq!((n.vni, n.mtu, n.internal), (Some(5000), Some(1400), true));
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 0, 9, 254)));
        assert_eq!(
            n.aux_addresses,
            [Ipv4Addr::new(10, 0, 9, 3), Ipv4Addr::new(10, 0, 9, 5)]
        );
    }

    #[test]
    fn refusals_name_the_option() {
        let cases = [
            (
                format!(
                    r#"{{"Options":{{"com.docker.network.generic":{{"colour":"blue"}}}},{V4}}}"#
                ),
                "-o colour: unknown option",
            ),
            (
                format!(r#"{{"Options":{{"com.docker.network.generic":{{"vni":"many"}}}},{V4}}}"#),
                "-o vni=many: not a number",
            ),
            (
                format!(r#"{{"Options":{{"com.docker.network.enable_ipv6":true}},{V4}}}"#),
                "--ipv6",
            ),
            (
                r#"{"IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"172.18.0.0/16"}]}"#.into(),
                "add --ipam-driver overlay-ebpf",
            ),
            (r#"{"IPv4Data":[]}"#.into(), "--subnet"),
            (
                r#"{"IPv4Data":[{"AddressSpace":"overlay-ebpf","Pool":"10.0.9.0/24","AuxAddresses":{"a":""}}]}"#.into(),
                "--aux-address a=",
            ),
        ];
        for (json, expected) in cases {
            let err = network_create(&request(&json)).unwrap_err();
            assert!(err.contains(expected), "{expected:?} in {err:?}");
        }
    }

    #[test]
    fn port_bindings_become_mappings() {
        let bindings: Vec<PortBinding> = serde_json::from_str(
            r#"[{"Proto":6,"Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
                {"Proto":17,"Port":53,"HostIP":"172.31.1.5","HostPort":5353},
                {"Proto":6,"Port":80,"HostIP":"::","HostPort":8080}]"#,
        )
        .unwrap();
        let ports = port_mappings(&bindings).unwrap();
        assert_eq!(ports.len(), 2, "the IPv6 binding is left out");
        assert_eq!(ports[0].to_string(), "8080->80/tcp");
        assert_eq!(ports[1].to_string(), "172.31.1.5:5353->53/udp");
        let options =
            |json: &str| -> BTreeMap<String, Value> { serde_json::from_str(json).unwrap() };
        let null = options(r#"{"com.docker.network.portmap":null}"#);
        assert!(published_ports(&null).unwrap().is_empty());
        let bad = options(r#"{"com.docker.network.portmap":{"Port":80}}"#);
        let e = published_ports(&bad).unwrap_err();
        assert!(e.starts_with("-p: Docker's port map is not valid"), "{e}");
    }
}
