//! The static cluster file: parsing and the checks that need nothing but the file.
//!
//! Every error names the file, the field and what is wrong with it. Checks against
//! the running system (interfaces, namespaces) are in [`crate::node`], and run before
//! anything is changed.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use overlay_common::{DEFAULT_VXLAN_PORT, VNI_MAX};
use serde::Deserialize;

/// What the kernel VXLAN device uses by default (the local ephemeral range).
pub const DEFAULT_SOURCE_PORTS: [u16; 2] = [32768, 60999];

/// A validation failure: `<file>: <field>: <problem>`.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.problem
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecapMode {
    #[default]
    Tc,
    Xdp,
}

impl fmt::Display for DecapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecapMode::Tc => "tc",
            DecapMode::Xdp => "xdp",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: String,
    underlay: String,
    vtep: Option<String>,
    vxlan_port: Option<u16>,
    source_ports: Option<[u16; 2]>,
    decap: Option<DecapMode>,
    #[serde(default, rename = "network")]
    networks: Vec<RawNetwork>,
    #[serde(default, rename = "endpoint")]
    endpoints: Vec<RawEndpoint>,
    #[serde(default, rename = "remote")]
    remotes: Vec<RawRemote>,
    cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    listen: String,
    advertise: Option<String>,
    #[serde(default)]
    seeds: Vec<String>,
    key_file: String,
    gossip_interval_ms: Option<u64>,
    cluster_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    vni: i64,
    subnet: String,
    mtu: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    network: String,
    netns: String,
    ip: String,
    mac: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    network: String,
    ip: String,
    mac: String,
    vtep: String,
}

/// An IPv4 prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, Deserialize)]
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
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize,
)]
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub name: String,
    pub vni: u32,
    pub subnet: Subnet,
    /// `None`: the underlay MTU minus the VXLAN overhead.
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Index into [`ClusterConfig::networks`].
    pub network: usize,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    pub network: usize,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub vtep: Ipv4Addr,
}

/// Gossip membership: the `[cluster]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSection {
    /// Where the gossip socket is bound.
    pub listen: SocketAddr,
    /// The address other nodes reach this one at (default: `listen`).
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    /// Relative paths are taken from the cluster file's directory.
    pub key_file: PathBuf,
    pub gossip_interval: Duration,
    /// Nodes only gossip with nodes of the same cluster id.
    pub cluster_id: String,
}

pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 200;
pub const DEFAULT_CLUSTER_ID: &str = "overlay";

/// Network names appear in gossip keys and table output: keep them plain.
pub fn check_network_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?} is not a network name (1-64 of A-Z a-z 0-9 - _ .)"
        ));
    }
    Ok(())
}

/// A cluster file that passed every check that needs only the file.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub path: PathBuf,
    pub node: String,
    pub underlay: String,
    pub vtep: Option<Ipv4Addr>,
    pub vxlan_port: u16,
    pub source_ports: [u16; 2],
    pub decap: DecapMode,
    pub networks: Vec<NetworkConfig>,
    pub endpoints: Vec<EndpointConfig>,
    pub remotes: Vec<RemoteConfig>,
    pub cluster: Option<ClusterSection>,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            field: String::new(),
            problem: format!("cannot read the file: {e}"),
        })?;
        ClusterConfig::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            field: String::new(),
            problem: e.to_string().trim_end().to_owned(),
        })?;
        Validator { file: path }.validate(raw)
    }
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn ipv4(&self, field: String, text: &str) -> Result<Ipv4Addr, ConfigError> {
        text.parse()
            .map_err(|_| self.err(field, format!("{text:?} is not an IPv4 address")))
    }

    fn validate(&self, raw: RawConfig) -> Result<ClusterConfig, ConfigError> {
        if raw.node.is_empty()
            || raw.node.len() > 64
            || !raw
                .node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || raw.node.starts_with('.')
        {
            return Err(self.err(
                "node",
                format!("{:?} is not a node name (1-64 of A-Z a-z 0-9 - _ .; it names the pin directory)", raw.node),
            ));
        }
        if raw.underlay.is_empty() || raw.underlay.len() > 15 || raw.underlay.contains('/') {
            return Err(self.err(
                "underlay",
                format!("{:?} is not an interface name", raw.underlay),
            ));
        }
        let vtep = raw
            .vtep
            .as_deref()
            .map(|v| self.ipv4("vtep".into(), v))
            .transpose()?;
        if let Some(v) = vtep
            && (v.is_unspecified() || v.is_multicast() || v.is_broadcast() || v.is_loopback())
        {
            return Err(self.err("vtep", format!("{v} is not a unicast address")));
        }
        let vxlan_port = raw.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT);
        if vxlan_port == 0 {
            return Err(self.err("vxlan_port", "0 is not a UDP port"));
        }
        let source_ports = raw.source_ports.unwrap_or(DEFAULT_SOURCE_PORTS);
        if source_ports[0] == 0 || source_ports[0] > source_ports[1] {
            return Err(self.err(
                "source_ports",
                format!("{source_ports:?} is not a range [low, high] with 0 < low <= high"),
            ));
        }

        let mut networks: Vec<NetworkConfig> = Vec::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, n) in raw.networks.iter().enumerate() {
            let field = |f: &str| format!("network[{i}].{f}");
            check_network_name(&n.name).map_err(|p| self.err(field("name"), p))?;
            if by_name.insert(&n.name, i).is_some() {
                return Err(self.err(field("name"), format!("{:?} is defined twice", n.name)));
            }
            if !(1..=i64::from(VNI_MAX)).contains(&n.vni) {
                return Err(self.err(field("vni"), format!("{} is outside 1..={VNI_MAX}", n.vni)));
            }
            let vni = n.vni as u32;
            if let Some(other) = networks.iter().find(|o| o.vni == vni) {
                return Err(self.err(
                    field("vni"),
                    format!(
                        "{vni} is already the VNI of network {:?}; each network needs its own",
                        other.name
                    ),
                ));
            }
            let subnet: Subnet = n.subnet.parse().map_err(|e| self.err(field("subnet"), e))?;
            if let Some(mtu) = n.mtu
                && !(68..=65535).contains(&mtu)
            {
                return Err(self.err(field("mtu"), format!("{mtu} is outside 68..=65535")));
            }
            networks.push(NetworkConfig {
                name: n.name.clone(),
                vni,
                subnet,
                mtu: n.mtu,
            });
        }

        // IPs and MACs are unique per network, across local and remote endpoints.
        let mut ips: BTreeMap<(usize, Ipv4Addr), String> = BTreeMap::new();
        let mut macs: BTreeMap<(usize, Mac), String> = BTreeMap::new();
        let mut claim = |network: usize, ip: Ipv4Addr, mac: Mac, who: String| {
            if let Some(first) = ips.get(&(network, ip)) {
                return Err((format!("{ip} is already used by {first}"), true));
            }
            if let Some(first) = macs.get(&(network, mac)) {
                return Err((format!("{mac} is already used by {first}"), false));
            }
            ips.insert((network, ip), who.clone());
            macs.insert((network, mac), who);
            Ok(())
        };

        let mut endpoints = Vec::new();
        let mut netns_networks: BTreeMap<(String, usize), usize> = BTreeMap::new();
        for (i, e) in raw.endpoints.iter().enumerate() {
            let field = |f: &str| format!("endpoint[{i}].{f}");
            let network = *by_name.get(e.network.as_str()).ok_or_else(|| {
                self.err(
                    field("network"),
                    format!("no network named {:?} is defined", e.network),
                )
            })?;
            if e.netns.is_empty() || e.netns.contains('/') || e.netns.starts_with('.') {
                return Err(self.err(
                    field("netns"),
                    format!("{:?} is not a namespace name", e.netns),
                ));
            }
            if let Some(first) = netns_networks.insert((e.netns.clone(), network), i) {
                return Err(self.err(
                    field("netns"),
                    format!("namespace {:?} already has an endpoint in this network (endpoint[{first}])", e.netns),
                ));
            }
            let ip = self.ipv4(field("ip"), &e.ip)?;
            self.check_in_subnet(field("ip"), ip, &networks[network])?;
            let mac = match &e.mac {
                Some(m) => m.parse().map_err(|p| self.err(field("mac"), p))?,
                None => Mac::from_ipv4(ip),
            };
            claim(network, ip, mac, format!("endpoint[{i}]")).map_err(|(problem, is_ip)| {
                self.err(field(if is_ip { "ip" } else { "mac" }), problem)
            })?;
            endpoints.push(EndpointConfig {
                network,
                netns: e.netns.clone(),
                ip,
                mac,
            });
        }

        let mut remotes = Vec::new();
        for (i, r) in raw.remotes.iter().enumerate() {
            let field = |f: &str| format!("remote[{i}].{f}");
            let network = *by_name.get(r.network.as_str()).ok_or_else(|| {
                self.err(
                    field("network"),
                    format!("no network named {:?} is defined", r.network),
                )
            })?;
            let ip = self.ipv4(field("ip"), &r.ip)?;
            self.check_in_subnet(field("ip"), ip, &networks[network])?;
            let mac: Mac = r.mac.parse().map_err(|p| self.err(field("mac"), p))?;
            let remote_vtep = self.ipv4(field("vtep"), &r.vtep)?;
            if remote_vtep.is_unspecified()
                || remote_vtep.is_multicast()
                || remote_vtep.is_broadcast()
            {
                return Err(self.err(
                    field("vtep"),
                    format!("{remote_vtep} is not a unicast address"),
                ));
            }
            if Some(remote_vtep) == vtep {
                return Err(self.err(
                    field("vtep"),
                    format!("{remote_vtep} is this node's own VTEP"),
                ));
            }
            claim(network, ip, mac, format!("remote[{i}]")).map_err(|(problem, is_ip)| {
                self.err(field(if is_ip { "ip" } else { "mac" }), problem)
            })?;
            remotes.push(RemoteConfig {
                network,
                ip,
                mac,
                vtep: remote_vtep,
            });
        }

        let cluster = raw.cluster.map(|c| self.cluster(c)).transpose()?;

        Ok(ClusterConfig {
            path: self.file.to_owned(),
            node: raw.node,
            underlay: raw.underlay,
            vtep,
            vxlan_port,
            source_ports,
            decap: raw.decap.unwrap_or_default(),
            networks,
            endpoints,
            remotes,
            cluster,
        })
    }

    fn cluster(&self, raw: RawCluster) -> Result<ClusterSection, ConfigError> {
        let addr = |field: &str, text: &str| -> Result<SocketAddr, ConfigError> {
            let addr: SocketAddr = text.parse().map_err(|_| {
                self.err(
                    format!("cluster.{field}"),
                    format!("{text:?} is not an IPv4 address and port such as \"172.31.1.5:7946\""),
                )
            })?;
            if !addr.is_ipv4() || addr.port() == 0 {
                return Err(self.err(
                    format!("cluster.{field}"),
                    format!("{text:?} needs an IPv4 address and a non-zero port"),
                ));
            }
            Ok(addr)
        };
        let listen = addr("listen", &raw.listen)?;
        let advertise = match raw.advertise.as_deref() {
            Some(a) => addr("advertise", a)?,
            None if listen.ip().is_unspecified() => {
                return Err(self.err(
                    "cluster.advertise",
                    format!("listen is {listen}, so other nodes need an address to reach this one: set advertise"),
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
            .map(|(i, s)| addr(&format!("seeds[{i}]"), s))
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
        Ok(ClusterSection {
            listen,
            advertise,
            seeds,
            key_file,
            gossip_interval: Duration::from_millis(interval),
            cluster_id,
        })
    }

    fn check_in_subnet(
        &self,
        field: String,
        ip: Ipv4Addr,
        n: &NetworkConfig,
    ) -> Result<(), ConfigError> {
        if !n.subnet.contains(ip) {
            return Err(self.err(
                field,
                format!("{ip} is outside network {:?}'s subnet {}", n.name, n.subnet),
            ));
        }
        if n.subnet.is_reserved(ip) {
            return Err(self.err(
                field,
                format!("{ip} is the network or broadcast address of {}", n.subnet),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node = "node1"
underlay = "eth0"
[[network]]
name = "uber-net"
vni = 4097
subnet = "10.0.0.0/24"
[[endpoint]]
network = "uber-net"
netns = "c1"
ip = "10.0.0.3"
[[remote]]
network = "uber-net"
ip = "10.0.0.4"
mac = "02:42:0a:00:00:04"
vtep = "192.168.1.5"
"#;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        ClusterConfig::parse(Path::new("node.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_the_documented_example_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.vxlan_port, 4789);
        assert_eq!(c.decap, DecapMode::Tc);
        assert_eq!(c.endpoints[0].mac, Mac([0x02, 0x42, 10, 0, 0, 3]));
        assert_eq!(c.networks[0].subnet.to_string(), "10.0.0.0/24");
    }

    #[test]
    fn cluster_section_defaults_and_relative_key_file() {
        let text = format!(
            "{GOOD}\n[cluster]\nlisten = \"172.31.1.5:7946\"\nseeds = [\"192.168.1.5:7946\"]\nkey_file = \"cluster.key\"\n"
        );
        let c = ClusterConfig::parse(Path::new("/etc/overlay/node.toml"), &text)
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.advertise, c.listen);
        assert_eq!(c.key_file, Path::new("/etc/overlay/cluster.key"));
        assert_eq!(
            c.gossip_interval,
            Duration::from_millis(DEFAULT_GOSSIP_INTERVAL_MS)
        );
        assert_eq!(
            c.seeds,
            vec!["192.168.1.5:7946".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let cases = [
            (
                GOOD.replace("vni = 4097", "vni = 16777216"),
                "node.toml: network[0].vni: 16777216 is outside 1..=16777215",
            ),
            (
                GOOD.replace("vni = 4097", "vni = 0"),
                "network[0].vni: 0 is outside",
            ),
            (
                GOOD.replace("ip = \"10.0.0.3\"", "ip = \"10.0.1.3\""),
                "endpoint[0].ip: 10.0.1.3 is outside network \"uber-net\"'s subnet 10.0.0.0/24",
            ),
            (
                GOOD.replace("ip = \"10.0.0.4\"", "ip = \"10.0.0.3\""),
                "remote[0].ip: 10.0.0.3 is already used by endpoint[0]",
            ),
            (
                GOOD.replace("02:42:0a:00:00:04", "02:42:0a:00:00:03"),
                "remote[0].mac: 02:42:0a:00:00:03 is already used by endpoint[0]",
            ),
            (
                GOOD.replace("netns = \"c1\"", "netns = \"c1\"\nbogus = 1"),
                "unknown field `bogus`",
            ),
            (
                GOOD.replace("network = \"uber-net\"\nnetns", "network = \"nope\"\nnetns"),
                "endpoint[0].network: no network named \"nope\"",
            ),
            (
                format!(
                    "{GOOD}\n[[network]]\nname = \"b\"\nvni = 4097\nsubnet = \"10.1.0.0/24\"\n"
                ),
                "network[1].vni: 4097 is already the VNI of network \"uber-net\"",
            ),
            (
                GOOD.replace("10.0.0.0/24", "10.0.0.1/24"),
                "network[0].subnet: \"10.0.0.1/24\" has host bits set",
            ),
            (
                GOOD.replace("ip = \"10.0.0.3\"", "ip = \"10.0.0.255\""),
                "broadcast address",
            ),
            (
                format!("{GOOD}\n[cluster]\nlisten = \"0.0.0.0:7946\"\nkey_file = \"k\"\n"),
                "cluster.advertise: listen is 0.0.0.0:7946",
            ),
            (
                format!("{GOOD}\n[cluster]\nlisten = \"1.2.3.4\"\nkey_file = \"k\"\n"),
                "cluster.listen: \"1.2.3.4\" is not an IPv4 address and port",
            ),
            (
                format!(
                    "{GOOD}\n[cluster]\nlisten = \"1.2.3.4:7946\"\nseeds = [\"x\"]\nkey_file = \"k\"\n"
                ),
                "cluster.seeds[0]: \"x\"",
            ),
            (
                GOOD.replace("name = \"uber-net\"", "name = \"uber:net\""),
                "network[0].name: \"uber:net\" is not a network name",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).expect_err(expected);
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(err.starts_with("node.toml: "), "{err}");
        }
    }
}
