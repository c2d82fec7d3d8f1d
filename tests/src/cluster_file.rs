//! The cluster file an agent reads, as typed sections rendered to TOML. Every key
//! the agent accepts has a field here; a test that needs a bad file changes a
//! field, and [`ClusterFile::raw`] adds keys the agent does not know.
//!
//! Addresses are typed; names, subnets and MACs are strings, so that a test can
//! write the malformed ones the agent must refuse.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::cmd::write_config;

/// Where the agent decapsulates: `decap = "tc"` or `"xdp"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decap {
    Tc,
    Xdp,
}

impl Decap {
    pub fn as_str(self) -> &'static str {
        match self {
            Decap::Tc => "tc",
            Decap::Xdp => "xdp",
        }
    }
}

impl std::fmt::Display for Decap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's cluster file. Optional keys left `None` (or empty) are not written,
/// so the agent applies its defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub node: String,
    pub underlay: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ports: Option<[u16; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decap: Option<Decap>,
    /// Where the agent serves its Prometheus metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default, rename = "network", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkSection>,
    #[serde(default, rename = "endpoint", skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSection>,
    #[serde(default, rename = "remote", skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<RemoteSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSection>,
    /// Top-level keys written as given, after the typed ones: for a file with a
    /// key the agent does not know. Reading a file back puts every key that has
    /// no field here.
    #[serde(flatten)]
    pub raw: toml::Table,
}

/// `[[network]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkSection {
    pub name: String,
    /// Signed, as the agent reads it, so that a test can write any integer;
    /// without it the agent allocates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<i64>,
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Without it the agent takes the subnet's first host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aux_addresses: Vec<String>,
    /// No way out of the overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
}

/// `[[endpoint]]`: a container on this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointSection {
    pub network: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Without it the agent derives 02:42 + the IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `[[remote]]`: a container on another node, behind its VTEP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteSection {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub vtep: Ipv4Addr,
}

/// `[cluster]`: gossip membership.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterSection {
    pub listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<SocketAddr>,
    pub key_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The underlay MTU gossip datagrams fit in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// `[docker]`: the Docker network and IPAM drivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DockerSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_socket: Option<PathBuf>,
    /// `unix://PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

impl DockerSection {
    /// Drivers served on `plugin_socket` for the dockerd behind `engine`.
    pub fn new(plugin_socket: &Path, engine: &Path) -> DockerSection {
        DockerSection {
            plugin_socket: Some(plugin_socket.to_owned()),
            engine: Some(format!("unix://{}", engine.display())),
        }
    }
}

impl ClusterFile {
    /// A file with only the two keys every node needs.
    pub fn new(node: impl Into<String>, underlay: impl Into<String>) -> ClusterFile {
        ClusterFile {
            node: node.into(),
            underlay: underlay.into(),
            ..ClusterFile::default()
        }
    }

    /// A file with every key the agent reads set, none to the agent's default:
    /// to check that the builder and the agent agree on every key.
    pub fn with_every_key() -> ClusterFile {
        let addr = |text: &str| text.parse().expect("a literal address");
        ClusterFile {
            vtep: Some(Ipv4Addr::new(172, 31, 1, 5)),
            vxlan_port: Some(4790),
            source_ports: Some([40000, 50000]),
            decap: Some(Decap::Xdp),
            metrics_listen: Some(addr("127.0.0.1:9464")),
            networks: vec![NetworkSection {
                mtu: Some(1400),
                gateway: Some("10.0.0.254".into()),
                aux_addresses: vec!["10.0.0.2".into()],
                internal: Some(true),
                ..NetworkSection::new("uber-net", 4097, "10.0.0.0/24")
            }],
            endpoints: vec![EndpointSection {
                mac: Some("02:00:00:00:00:03".into()),
                ..EndpointSection::new("uber-net", "c1", Ipv4Addr::new(10, 0, 0, 3))
            }],
            remotes: vec![RemoteSection {
                network: "uber-net".into(),
                ip: Ipv4Addr::new(10, 0, 0, 4),
                mac: "02:42:0a:00:00:04".into(),
                vtep: Ipv4Addr::new(192, 168, 1, 5),
            }],
            cluster: Some(ClusterSection {
                advertise: Some(addr("203.0.113.5:7947")),
                gossip_interval_ms: Some(100),
                cluster_id: Some("blue".into()),
                mtu: Some(9000),
                ..ClusterSection::new(
                    addr("172.31.1.5:7947"),
                    vec![addr("192.168.1.5:7947")],
                    Path::new("/etc/overlay/cluster.key"),
                )
            }),
            docker: Some(DockerSection::new(
                Path::new("/run/p/overlay-ebpf.sock"),
                Path::new("/run/d/docker.sock"),
            )),
            ..ClusterFile::new("n1", "eth1")
        }
    }

    /// Adds a top-level key written as given (it replaces a typed key of the same
    /// name): the way to write a key the agent does not know.
    pub fn raw(mut self, key: &str, value: impl Into<toml::Value>) -> ClusterFile {
        self.raw.insert(key.to_owned(), value.into());
        self
    }

    /// The network named `name`.
    pub fn network_mut(&mut self, name: &str) -> &mut NetworkSection {
        self.networks
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("the file has no network {name}"))
    }

    /// The endpoint with address `ip`.
    pub fn endpoint_mut(&mut self, ip: Ipv4Addr) -> &mut EndpointSection {
        self.endpoints
            .iter_mut()
            .find(|e| e.ip == ip)
            .unwrap_or_else(|| panic!("the file has no endpoint {ip}"))
    }

    /// The remote with address `ip`.
    pub fn remote_mut(&mut self, ip: Ipv4Addr) -> &mut RemoteSection {
        self.remotes
            .iter_mut()
            .find(|r| r.ip == ip)
            .unwrap_or_else(|| panic!("the file has no remote {ip}"))
    }

    /// The file as TOML.
    pub fn render(&self) -> Result<String> {
        toml::to_string(self)
            .with_context(|| format!("rendering the cluster file of {}", self.node))
    }

    /// Writes the file as `dir/name`; its path.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        write_config(dir, name, &self.render()?)
    }
}

impl NetworkSection {
    pub fn new(name: impl Into<String>, vni: u32, subnet: impl Into<String>) -> NetworkSection {
        NetworkSection {
            name: name.into(),
            vni: Some(i64::from(vni)),
            subnet: subnet.into(),
            mtu: None,
            gateway: None,
            aux_addresses: Vec::new(),
            internal: None,
        }
    }
}

impl EndpointSection {
    /// An endpoint whose MAC the agent derives from `ip`.
    pub fn new(
        network: impl Into<String>,
        netns: impl Into<String>,
        ip: Ipv4Addr,
    ) -> EndpointSection {
        EndpointSection {
            network: network.into(),
            netns: netns.into(),
            ip,
            mac: None,
        }
    }
}

impl ClusterSection {
    /// Gossip on `listen`, joining through `seeds`, under the key in `key_file`;
    /// the agent's defaults for the rest.
    pub fn new(listen: SocketAddr, seeds: Vec<SocketAddr>, key_file: &Path) -> ClusterSection {
        ClusterSection {
            listen,
            advertise: None,
            seeds,
            key_file: key_file.to_owned(),
            gossip_interval_ms: None,
            cluster_id: None,
            mtu: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_file_reads_back_as_it_was_set() {
        let file = ClusterFile::with_every_key().raw("colour", "blue");
        let text = file.render().unwrap();
        let back: ClusterFile = toml::from_str(&text).unwrap();
        assert_eq!(back, file, "{text}");
    }

    #[test]
    fn keys_left_unset_are_not_written() {
        let file = ClusterFile::new("n1", "eth0");
        assert_eq!(
            file.render().unwrap(),
            "node = \"n1\"\nunderlay = \"eth0\"\n"
        );
    }

    #[test]
    fn sections_are_written_as_the_agent_reads_them() {
        let text = ClusterFile::with_every_key()
            .raw("colour", "blue")
            .render()
            .unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["colour"].as_str(), Some("blue"), "{text}");
        assert_eq!(table["decap"].as_str(), Some("xdp"), "{text}");
        assert_eq!(table["network"][0]["vni"].as_integer(), Some(4097));
        assert_eq!(
            table["cluster"]["seeds"][0].as_str(),
            Some("192.168.1.5:7947")
        );
        assert_eq!(
            table["docker"]["engine"].as_str(),
            Some("unix:///run/d/docker.sock")
        );
        for header in [
            "[[network]]",
            "[[endpoint]]",
            "[[remote]]",
            "[cluster]",
            "[docker]",
        ] {
            assert_eq!(text.matches(header).count(), 1, "{header} in {text}");
        }
    }

    #[test]
    fn a_raw_key_replaces_a_typed_one() {
        let text = ClusterFile::new("n1", "eth0")
            .raw("underlay", 7)
            .render()
            .unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["underlay"].as_integer(), Some(7), "{text}");
    }

    #[test]
    fn sections_are_found_by_what_names_them() {
        let mut file = ClusterFile::with_every_key();
        file.network_mut("uber-net").vni = Some(16_777_216);
        file.endpoint_mut(Ipv4Addr::new(10, 0, 0, 3)).netns = "elsewhere".into();
        file.remote_mut(Ipv4Addr::new(10, 0, 0, 4)).mac = "02:42:0a:00:00:03".into();
        let text = file.render().unwrap();
        assert!(text.contains("vni = 16777216"), "{text}");
        assert!(text.contains("netns = \"elsewhere\""), "{text}");
        assert!(text.contains("mac = \"02:42:0a:00:00:03\""), "{text}");
    }
}
