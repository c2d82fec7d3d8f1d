//! From [`RawConfig`] to [`ClusterConfig`]: every check that needs only the file,
//! one step per section, each naming the field it refuses.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use overlay_common::DEFAULT_VXLAN_PORT;

use super::{
    ClusterConfig, ClusterSection, ConfigError, DEFAULT_CLUSTER_ID, DEFAULT_DOCKER_ENGINE,
    DEFAULT_GOSSIP_INTERVAL_MS, DEFAULT_GOSSIP_MTU, DEFAULT_PLUGIN_SOCKET, DEFAULT_SOURCE_PORTS,
    DockerSection, EndpointConfig, NetworkConfig, RemoteConfig,
    raw::{RawCluster, RawConfig, RawDocker, RawEndpoint, RawNetwork, RawRemote},
    rules,
};
use crate::model::Mac;

pub fn validate(file: &Path, raw: RawConfig) -> Result<ClusterConfig, ConfigError> {
    let v = Validator { file };
    rules::node_name(&raw.node).map_err(|p| v.err("node", p))?;
    rules::interface_name(&raw.underlay).map_err(|p| v.err("underlay", p))?;
    let vtep = raw
        .vtep
        .as_deref()
        .map(|text| v.unicast("vtep", text))
        .transpose()?;
    let vxlan_port = raw.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT);
    if vxlan_port == 0 {
        return Err(v.err("vxlan_port", "0 is not a UDP port"));
    }
    let source_ports = raw.source_ports.unwrap_or(DEFAULT_SOURCE_PORTS);
    rules::source_ports(source_ports).map_err(|p| v.err("source_ports", p))?;
    let metrics_listen = raw
        .metrics_listen
        .as_deref()
        .map(|text| rules::metrics_listen(text).map_err(|p| v.err("metrics_listen", p)))
        .transpose()?;

    let networks = v.networks(&raw.networks)?;
    let mut addresses = Addresses::default();
    for (i, n) in networks.iter().enumerate().filter(|(_, n)| !n.internal) {
        // The gateway answers ARP with this MAC; no endpoint may use it.
        addresses.macs.insert(
            (i, Mac::from_ipv4(n.gateway)),
            format!("network[{i}].gateway"),
        );
    }
    let endpoints = v.endpoints(&raw.endpoints, &networks, &mut addresses)?;
    let remotes = v.remotes(&raw.remotes, &networks, vtep, &mut addresses)?;
    let cluster = raw.cluster.map(|c| v.cluster(c)).transpose()?;
    let docker = raw.docker.map(|d| v.docker(&d)).transpose()?;
    Ok(ClusterConfig {
        path: file.to_owned(),
        node: raw.node,
        underlay: raw.underlay,
        vtep,
        vxlan_port,
        source_ports,
        decap: raw.decap.unwrap_or_default(),
        metrics_listen,
        networks,
        endpoints,
        remotes,
        cluster,
        docker,
    })
}

struct Validator<'a> {
    file: &'a Path,
}

/// IPs and MACs are unique per network, across local and remote endpoints: who
/// took each first, for the error.
#[derive(Default)]
struct Addresses {
    ips: BTreeMap<(usize, Ipv4Addr), String>,
    macs: BTreeMap<(usize, Mac), String>,
}

impl Addresses {
    /// Takes `ip` and `mac` for `who`, or says which field clashes with whom.
    fn take(
        &mut self,
        network: usize,
        ip: Ipv4Addr,
        mac: Mac,
        who: String,
    ) -> Result<(), (&'static str, String)> {
        if let Some(first) = self.ips.get(&(network, ip)) {
            return Err(("ip", format!("{ip} is already used by {first}")));
        }
        if let Some(first) = self.macs.get(&(network, mac)) {
            return Err(("mac", format!("{mac} is already used by {first}")));
        }
        self.ips.insert((network, ip), who.clone());
        self.macs.insert((network, mac), who);
        Ok(())
    }
}

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn ipv4(&self, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
        text.parse()
            .map_err(|_| self.err(field, format!("{text:?} is not an IPv4 address")))
    }

    fn unicast(&self, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
        let ip = self.ipv4(field, text)?;
        rules::unicast(ip).map_err(|p| self.err(field, p))?;
        Ok(ip)
    }

    /// Networks with a VNI first, so that an allocated VNI avoids every
    /// given one whatever the order in the file.
    fn networks(&self, raw: &[RawNetwork]) -> Result<Vec<NetworkConfig>, ConfigError> {
        let mut vnis: Vec<Option<u32>> = Vec::with_capacity(raw.len());
        for (i, n) in raw.iter().enumerate() {
            let field = format!("network[{i}].vni");
            let vni = n
                .vni
                .map(|v| rules::vni(v).map_err(|p| self.err(&field, p)))
                .transpose()?;
            if let Some(vni) = vni
                && let Some(first) = vnis.iter().position(|v| *v == Some(vni))
            {
                return Err(self.err(
                    field,
                    format!(
                        "{vni} is already the VNI of network {:?}; each network needs its own",
                        raw[first].name
                    ),
                ));
            }
            vnis.push(vni);
        }
        let mut networks: Vec<NetworkConfig> = Vec::new();
        for (i, n) in raw.iter().enumerate() {
            let field = |f: &str| format!("network[{i}].{f}");
            rules::network_name(&n.name).map_err(|p| self.err(field("name"), p))?;
            if networks.iter().any(|o| o.name == n.name) {
                return Err(self.err(field("name"), format!("{:?} is defined twice", n.name)));
            }
            let vni = match vnis[i] {
                Some(vni) => vni,
                None => {
                    let vni = rules::allocate_vni(&n.name, |v| {
                        vnis.contains(&Some(v)) || networks.iter().any(|o| o.vni == v)
                    })
                    .map_err(|p| self.err(field("vni"), p))?;
                    vnis[i] = Some(vni);
                    vni
                }
            };
            let subnet =
                rules::network_subnet(&n.subnet).map_err(|p| self.err(field("subnet"), p))?;
            rules::subnet_free(subnet, networks.iter().map(|o| (o.name.as_str(), o.subnet)))
                .map_err(|p| self.err(field("subnet"), p))?;
            if let Some(mtu) = n.mtu {
                rules::mtu(mtu).map_err(|p| self.err(field("mtu"), p))?;
            }
            let gateway = n
                .gateway
                .as_deref()
                .map(|g| self.ipv4(&field("gateway"), g))
                .transpose()?;
            let aux = n
                .aux_addresses
                .iter()
                .enumerate()
                .map(|(k, a)| self.ipv4(&field(&format!("aux_addresses[{k}]")), a))
                .collect::<Result<Vec<_>, _>>()?;
            let gateway = rules::network_addresses(&n.name, subnet, gateway, &aux)
                .map_err(|(f, p)| self.err(field(&f), p))?;
            networks.push(NetworkConfig {
                name: n.name.clone(),
                vni,
                subnet,
                mtu: n.mtu,
                gateway,
                aux,
                internal: n.internal,
            });
        }
        Ok(networks)
    }

    /// The network an endpoint or remote names, as an index into `networks`.
    fn network_of(
        &self,
        field: String,
        name: &str,
        networks: &[NetworkConfig],
    ) -> Result<usize, ConfigError> {
        networks
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| self.err(field, format!("no network named {name:?} is defined")))
    }

    /// An endpoint address: IPv4, a host address of its network, neither its
    /// gateway nor one of its auxiliary addresses.
    fn host_address(
        &self,
        field: String,
        text: &str,
        network: &NetworkConfig,
    ) -> Result<Ipv4Addr, ConfigError> {
        let ip = self.ipv4(&field, text)?;
        rules::host_address(ip, &network.name, network.subnet)
            .and_then(|()| rules::not_reserved(ip, &network.name, network.gateway, &network.aux))
            .map_err(|p| self.err(field, p))?;
        Ok(ip)
    }

    fn endpoints(
        &self,
        raw: &[RawEndpoint],
        networks: &[NetworkConfig],
        addresses: &mut Addresses,
    ) -> Result<Vec<EndpointConfig>, ConfigError> {
        let mut endpoints = Vec::new();
        let mut netns_networks: HashMap<(&str, usize), usize> = HashMap::new();
        for (i, e) in raw.iter().enumerate() {
            let field = |f: &str| format!("endpoint[{i}].{f}");
            let network = self.network_of(field("network"), &e.network, networks)?;
            rules::netns(&e.netns).map_err(|p| self.err(field("netns"), p))?;
            if let Some(first) = netns_networks.insert((&e.netns, network), i) {
                return Err(self.err(
                    field("netns"),
                    format!(
                        "namespace {:?} already has an endpoint in this network (endpoint[{first}])",
                        e.netns
                    ),
                ));
            }
            let ip = self.host_address(field("ip"), &e.ip, &networks[network])?;
            let mac = match &e.mac {
                Some(m) => m.parse().map_err(|p| self.err(field("mac"), p))?,
                None => Mac::from_ipv4(ip),
            };
            addresses
                .take(network, ip, mac, format!("endpoint[{i}]"))
                .map_err(|(f, p)| self.err(field(f), p))?;
            endpoints.push(EndpointConfig {
                network,
                netns: e.netns.clone(),
                ip,
                mac,
            });
        }
        Ok(endpoints)
    }

    fn remotes(
        &self,
        raw: &[RawRemote],
        networks: &[NetworkConfig],
        own_vtep: Option<Ipv4Addr>,
        addresses: &mut Addresses,
    ) -> Result<Vec<RemoteConfig>, ConfigError> {
        let mut remotes = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let field = |f: &str| format!("remote[{i}].{f}");
            let network = self.network_of(field("network"), &r.network, networks)?;
            let ip = self.host_address(field("ip"), &r.ip, &networks[network])?;
            let mac: Mac = r.mac.parse().map_err(|p| self.err(field("mac"), p))?;
            let vtep = self.unicast(&field("vtep"), &r.vtep)?;
            if Some(vtep) == own_vtep {
                return Err(self.err(field("vtep"), format!("{vtep} is this node's own VTEP")));
            }
            addresses
                .take(network, ip, mac, format!("remote[{i}]"))
                .map_err(|(f, p)| self.err(field(f), p))?;
            remotes.push(RemoteConfig {
                network,
                ip,
                mac,
                vtep,
            });
        }
        Ok(remotes)
    }

    fn cluster(&self, raw: RawCluster) -> Result<ClusterSection, ConfigError> {
        let listen = self.socket_addr("listen", &raw.listen)?;
        let advertise = match raw.advertise.as_deref() {
            Some(a) => self.socket_addr("advertise", a)?,
            None if listen.ip().is_unspecified() => {
                return Err(self.err(
                    "cluster.advertise",
                    format!(
                        "listen is {listen}, so other nodes need an address to reach this one: set advertise"
                    ),
                ));
            }
            None => listen,
        };
        if advertise.ip().is_unspecified() {
            return Err(self.err("cluster.advertise", format!("{advertise} is not reachable")));
        }
        let seeds = raw
            .seeds
            .iter()
            .enumerate()
            .map(|(i, s)| self.socket_addr(&format!("seeds[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.key_file.is_empty() {
            return Err(self.err("cluster.key_file", "must name the cluster key file"));
        }
        let key_file = PathBuf::from(&raw.key_file);
        let key_file = if key_file.is_relative() {
            self.file.parent().unwrap_or(Path::new(".")).join(key_file)
        } else {
            key_file
        };
        let interval = raw.gossip_interval_ms.unwrap_or(DEFAULT_GOSSIP_INTERVAL_MS);
        if !(20..=10_000).contains(&interval) {
            return Err(self.err(
                "cluster.gossip_interval_ms",
                format!("{interval} is outside 20..=10000"),
            ));
        }
        let cluster_id = raw
            .cluster_id
            .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_owned());
        if cluster_id.is_empty() || cluster_id.len() > 64 {
            return Err(self.err("cluster.cluster_id", "must be 1-64 characters"));
        }
        let mtu = raw.mtu.unwrap_or(DEFAULT_GOSSIP_MTU);
        rules::gossip_mtu(mtu).map_err(|p| self.err("cluster.mtu", p))?;
        Ok(ClusterSection {
            listen,
            advertise,
            seeds,
            key_file,
            gossip_interval: Duration::from_millis(interval),
            cluster_id,
            mtu,
        })
    }

    fn docker(&self, raw: &RawDocker) -> Result<DockerSection, ConfigError> {
        let plugin_socket = raw
            .plugin_socket
            .as_deref()
            .unwrap_or(DEFAULT_PLUGIN_SOCKET);
        rules::plugin_socket(plugin_socket).map_err(|p| self.err("docker.plugin_socket", p))?;
        let engine = raw.engine.as_deref().unwrap_or(DEFAULT_DOCKER_ENGINE);
        let engine = rules::docker_engine(engine).map_err(|p| self.err("docker.engine", p))?;
        Ok(DockerSection {
            plugin_socket: PathBuf::from(plugin_socket),
            engine,
        })
    }

    /// `cluster.<field>`: an IPv4 address and a non-zero port.
    fn socket_addr(&self, field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        let field = format!("cluster.{field}");
        let addr: SocketAddr = text.parse().map_err(|_| {
            self.err(
                &field,
                format!("{text:?} is not an IPv4 address and port such as \"172.31.1.5:7946\""),
            )
        })?;
        if !addr.is_ipv4() || addr.port() == 0 {
            return Err(self.err(
                field,
                format!("{text:?} needs an IPv4 address and a non-zero port"),
            ));
        }
        Ok(addr)
    }
}
