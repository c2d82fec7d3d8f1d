//! The cluster file: its types, parsing, and the checks that need nothing but
//! the file ([`validate`], with the rules in [`rules`] that the API shares).
//!
//! Every error names the file, the field and what is wrong with it. Checks against
//! the running system (interfaces, namespaces) are in [`crate::host::plan`], and
//! run before anything is changed.

mod raw;
pub mod rules;
mod validate;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::model::{Mac, Subnet};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub name: String,
    /// Given, or allocated from the name ([`rules::allocate_vni`]).
    pub vni: u32,
    pub subnet: Subnet,
    /// `None`: the underlay MTU minus the VXLAN overhead.
    pub mtu: Option<u32>,
    /// Given, or the subnet's first host address; never given to an endpoint.
    pub gateway: Ipv4Addr,
    /// Addresses no endpoint is given (Docker's `--aux-address`).
    pub aux: Vec<Ipv4Addr>,
    /// No way out: no gateway route, no ARP answer for the gateway.
    pub internal: bool,
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
    /// The underlay's MTU: every gossip datagram, with its IP and UDP headers,
    /// fits in it.
    pub mtu: u32,
}

/// The Docker network and IPAM drivers: the `[docker]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerSection {
    /// Where the agent serves the drivers. dockerd finds a plugin by name as
    /// `/run/docker/plugins/<name>.sock`, or through a spec file.
    pub plugin_socket: PathBuf,
    /// This node's dockerd (`unix://PATH`): the agent creates the cluster's
    /// networks in it and reads the names of the networks made there.
    pub engine: PathBuf,
}

/// The name of both drivers: `docker network create -d overlay-ebpf
/// --ipam-driver overlay-ebpf`.
pub const DOCKER_PLUGIN: &str = "overlay-ebpf";
pub const DEFAULT_PLUGIN_SOCKET: &str = "/run/docker/plugins/overlay-ebpf.sock";
pub const DEFAULT_DOCKER_ENGINE: &str = "unix:///var/run/docker.sock";

/// Every round sends a digest of every node to three peers (and answers as
/// many), so its cost grows with the cluster: at 50 nodes, 200 ms rounds cost
/// 150 KB/s per node, 1 s rounds 30. Changes do not wait for rounds: they are
/// pushed and relayed at once (see `gossip::relay`).
pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 1000;
/// Ethernet's.
pub const DEFAULT_GOSSIP_MTU: u32 = 1500;
pub const DEFAULT_CLUSTER_ID: &str = "overlay";

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
    /// Where the Prometheus endpoint listens; none by default.
    pub metrics_listen: Option<SocketAddr>,
    pub networks: Vec<NetworkConfig>,
    pub endpoints: Vec<EndpointConfig>,
    pub remotes: Vec<RemoteConfig>,
    pub cluster: Option<ClusterSection>,
    pub docker: Option<DockerSection>,
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
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            field: String::new(),
            problem: e.to_string().trim_end().to_owned(),
        })?;
        validate::validate(path, raw)
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
        assert_eq!(c.networks[0].gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert!(!c.networks[0].internal && c.networks[0].aux.is_empty());
    }

    #[test]
    fn a_network_without_a_vni_gets_one_that_no_other_has() {
        let text = format!(
            "{GOOD}\n[[network]]\nname = \"b\"\nsubnet = \"10.1.0.0/24\"\ninternal = true\n"
        );
        let c = parse(&text).unwrap();
        let b = &c.networks[1];
        assert!(rules::ALLOCATED_VNIS.contains(&b.vni));
        assert_eq!(b.vni, rules::allocate_vni("b", |v| v == 4097).unwrap());
        assert!(b.internal);
        // A given VNI later in the file is avoided too.
        let clash = rules::allocate_vni("a", |_| false).unwrap();
        let text = format!(
            "node = \"n\"\nunderlay = \"eth0\"\n[[network]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\n\
             [[network]]\nname = \"z\"\nvni = {clash}\nsubnet = \"10.2.0.0/24\"\n"
        );
        let c = parse(&text).unwrap();
        assert_ne!(c.networks[0].vni, clash);
        assert_eq!(c.networks[1].vni, clash);
    }

    #[test]
    fn metrics_are_off_unless_asked_for() {
        assert_eq!(parse(GOOD).unwrap().metrics_listen, None);
        let c = parse(&format!("metrics_listen = \"127.0.0.1:9464\"\n{GOOD}")).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let c = parse(&format!("metrics_listen = \"[::1]:9464\"\n{GOOD}")).unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:9464".parse().unwrap()));
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
        assert_eq!(c.mtu, DEFAULT_GOSSIP_MTU);
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
    fn docker_section_defaults() {
        assert_eq!(parse(GOOD).unwrap().docker, None);
        let c = parse(&format!("{GOOD}\n[docker]\n")).unwrap();
        assert_eq!(
            c.docker,
            Some(DockerSection {
                plugin_socket: DEFAULT_PLUGIN_SOCKET.into(),
                engine: "/var/run/docker.sock".into(),
            })
        );
        let c = parse(&format!(
            "{GOOD}\n[docker]\nplugin_socket = \"/tmp/p/overlay-ebpf.sock\"\nengine = \"unix:///tmp/d.sock\"\n"
        ))
        .unwrap();
        let docker = c.docker.unwrap();
        assert_eq!(docker.plugin_socket, Path::new("/tmp/p/overlay-ebpf.sock"));
        assert_eq!(docker.engine, Path::new("/tmp/d.sock"));
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
                format!(
                    "{GOOD}\n[cluster]\nlisten = \"1.2.3.4:7946\"\nkey_file = \"k\"\nmtu = 500\n"
                ),
                "cluster.mtu: 500 is outside 576..=65535",
            ),
            (
                GOOD.replace("name = \"uber-net\"", "name = \"uber:net\""),
                "network[0].name: \"uber:net\" is not a network name",
            ),
            (
                format!("metrics_listen = \"9464\"\n{GOOD}"),
                "metrics_listen: \"9464\" is not an address and port",
            ),
            (
                format!("metrics_listen = \"127.0.0.1:0\"\n{GOOD}"),
                "metrics_listen: \"127.0.0.1:0\" needs a port",
            ),
            (
                format!("{GOOD}\n[[network]]\nname = \"b\"\nvni = 9\nsubnet = \"10.0.0.128/25\"\n"),
                "network[1].subnet: 10.0.0.128/25 overlaps network \"uber-net\"'s subnet 10.0.0.0/24",
            ),
            (
                GOOD.replace(
                    "subnet = \"10.0.0.0/24\"",
                    "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.1.1\"",
                ),
                "network[0].gateway: 10.0.1.1 is outside",
            ),
            (
                GOOD.replace(
                    "subnet = \"10.0.0.0/24\"",
                    "subnet = \"10.0.0.0/24\"\naux_addresses = [\"10.0.0.3\"]",
                ),
                "endpoint[0].ip: 10.0.0.3 is an auxiliary address of network \"uber-net\"",
            ),
            (
                GOOD.replace("ip = \"10.0.0.3\"", "ip = \"10.0.0.1\""),
                "endpoint[0].ip: 10.0.0.1 is network \"uber-net\"'s gateway",
            ),
            (
                format!("{GOOD}\n[docker]\nengine = \"tcp://1.2.3.4:2375\"\n"),
                "docker.engine: \"tcp://1.2.3.4:2375\" is not a unix socket address",
            ),
            (
                format!("{GOOD}\n[docker]\nplugin_socket = \"p.sock\"\n"),
                "docker.plugin_socket: \"p.sock\" is not an absolute path",
            ),
            (
                format!("{GOOD}\n[docker]\nsocket = \"/x.sock\"\n"),
                "unknown field `socket`",
            ),
            (
                GOOD.replace("02:42:0a:00:00:04", "02:42:0a:00:00:01"),
                "remote[0].mac: 02:42:0a:00:00:01 is already used by network[0].gateway",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).expect_err(expected);
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(err.starts_with("node.toml: "), "{err}");
        }
    }
}
