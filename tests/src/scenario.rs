//! The one scenario the suites, the demo and the bench share: which containers
//! there are, on which node and network, and what every namespace, agent, pin
//! directory and socket is called. A name means the same thing everywhere: C3 is
//! always node1's second uber-net container, 10.0.0.5.
//!
//! Two overlay networks, uber-net (10.0.0.0/24) and other-net (10.0.1.0/24):
//! overlay subnets may not overlap, since the host routes to its containers
//! for their way out. Each has its gateway, the subnet's first address.
//!
//! Everything is named under a prefix (see [`crate::unique_prefix`]), so that
//! runs side by side never meet: node `n` is `<p>n<n>` and its agent
//! `<p>-node<n>`, container `c1` is `<p>c1`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::{
    cluster_file::{
        ClusterFile, ClusterSection, Decap, EndpointSection, NetworkSection, RemoteSection,
    },
    topology::SeedTopology,
};

/// Where agents pin, one directory per node.
pub const PIN_ROOT: &str = "/sys/fs/bpf/overlay";
/// Where the test bed's agents keep their API socket and state, one directory
/// per node.
pub const RUN_ROOT: &str = "/run/overlay-tests";
/// The gossip port of every node.
pub const GOSSIP_PORT: u16 = 7946;
/// Every host's underlay interface.
pub const UNDERLAY: &str = "eth0";

/// An overlay network of the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: &'static str,
    pub vni: u32,
    pub subnet: &'static str,
}

/// The seed article's network.
pub const UBER_NET: Network = Network {
    name: "uber-net",
    vni: 4097,
    subnet: "10.0.0.0/24",
};

/// A second network, next to uber-net.
pub const OTHER_NET: Network = Network {
    name: "other-net",
    vni: 4098,
    subnet: "10.0.1.0/24",
};

impl Network {
    /// Its `[[network]]` section.
    pub fn section(&self) -> NetworkSection {
        NetworkSection::new(self.name, self.vni, self.subnet)
    }

    /// Its gateway: the subnet's first host address, the agent's default.
    pub fn gateway(&self) -> Ipv4Addr {
        let network: Ipv4Addr = self
            .subnet
            .split_once('/')
            .and_then(|(ip, _)| ip.parse().ok())
            .expect("the scenario's subnets are written as address/length");
        Ipv4Addr::from(u32::from(network) + 1)
    }

    /// The subnet's prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.subnet
            .split_once('/')
            .and_then(|(_, len)| len.parse().ok())
            .expect("the scenario's subnets are written as address/length")
    }
}

/// A container of the seed scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Container {
    /// Short name; its namespace is `<prefix><name>`.
    pub name: &'static str,
    /// 1 or 2.
    pub node: u8,
    pub network: Network,
    pub ip: Ipv4Addr,
}

/// uber-net: c1 and c3 on node1, c2 on node2.
pub const C1: Container = Container::new("c1", 1, UBER_NET, [10, 0, 0, 3]);
pub const C2: Container = Container::new("c2", 2, UBER_NET, [10, 0, 0, 4]);
pub const C3: Container = Container::new("c3", 1, UBER_NET, [10, 0, 0, 5]);
/// other-net: c4 on node1, c5 on node2.
pub const C4: Container = Container::new("c4", 1, OTHER_NET, [10, 0, 1, 13]);
pub const C5: Container = Container::new("c5", 2, OTHER_NET, [10, 0, 1, 14]);
pub const ALL: [Container; 5] = [C1, C2, C3, C4, C5];

/// The container that joins at run time, through `overlay endpoint add`: the
/// agent gives it its address, so it has only a name.
pub const JOINER: &str = "c6";

/// Docker's addressing: 02:42 followed by the four bytes of the IPv4 address.
pub fn docker_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

impl Container {
    const fn new(name: &'static str, node: u8, network: Network, ip: [u8; 4]) -> Container {
        Container {
            name,
            node,
            network,
            ip: Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
        }
    }

    pub fn mac(&self) -> String {
        docker_mac(self.ip)
    }

    /// Its address with the network's prefix length, as `ip addr add` takes it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.network.prefix_len())
    }

    /// The underlay address of its node.
    pub fn vtep(&self) -> Ipv4Addr {
        node_vtep(self.node)
    }

    /// Its `[[endpoint]]` section, on its own node.
    pub fn endpoint(&self, names: &Names) -> EndpointSection {
        EndpointSection::new(self.network.name, names.container_ns(self.name), self.ip)
    }

    /// Its `[[remote]]` section, on the other node.
    pub fn remote(&self) -> RemoteSection {
        RemoteSection {
            network: self.network.name.to_owned(),
            ip: self.ip,
            mac: self.mac(),
            vtep: self.vtep(),
        }
    }
}

/// The names of everything a run creates, under its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host `node`'s namespace.
    pub fn node_ns(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    /// The seed topology's router.
    pub fn router_ns(&self) -> String {
        format!("{}rt", self.prefix)
    }

    /// The host outside the overlay, behind the seed topology's router.
    pub fn outside_ns(&self) -> String {
        format!("{}ex", self.prefix)
    }

    /// The switch of a gossip cluster.
    pub fn switch_ns(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// The namespace of the container `name`.
    pub fn container_ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The `node` key of host `node`'s agent.
    pub fn node_name(&self, node: usize) -> String {
        format!("{}-node{node}", self.prefix)
    }

    pub fn pin_dir(&self, node: usize) -> PathBuf {
        pin_dir_of(&self.node_name(node))
    }

    pub fn run_dir(&self, node: usize) -> PathBuf {
        run_dir_for(&self.pin_dir(node))
    }

    /// Host `node`'s agent's API socket.
    pub fn socket(&self, node: usize) -> PathBuf {
        socket_for(&self.pin_dir(node))
    }
}

/// Where the agent of the node named `node_name` pins.
pub fn pin_dir_of(node_name: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(node_name)
}

/// Where an agent keeps its API socket and state, next to its pins:
/// `/run/overlay-tests/<pin dir name>/`.
pub fn run_dir_for(pin_dir: &Path) -> PathBuf {
    Path::new(RUN_ROOT).join(pin_dir.file_name().unwrap_or_default())
}

/// The API socket of the agent pinning in `pin_dir`.
pub fn socket_for(pin_dir: &Path) -> PathBuf {
    run_dir_for(pin_dir).join("api.sock")
}

/// The state directory of the agent pinning in `pin_dir`.
pub fn state_dir_for(pin_dir: &Path) -> PathBuf {
    run_dir_for(pin_dir).join("state")
}

/// The underlay (VTEP) address of node 1 or 2 of the seed topology.
pub fn node_vtep(node: u8) -> Ipv4Addr {
    SeedTopology::vtep(node)
        .parse()
        .expect("the topology's addresses are literals")
}

/// The gossip address of a host.
pub fn gossip_addr(host: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((host, GOSSIP_PORT))
}

/// How each node learns the containers of the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// From its file: the other node's containers as `[[remote]]` entries.
    Static,
    /// From gossip: a `[cluster]` section, each node seeding the other, under the
    /// key in `key_file`.
    Gossip { key_file: PathBuf },
}

/// The seed scenario as one run sets it up: its names, which containers take
/// part, the decap mode and how the nodes learn each other's containers.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub names: Names,
    pub decap: Decap,
    pub containers: Vec<Container>,
    pub peers: Peers,
}

impl Scenario {
    /// Every container, static remotes.
    pub fn new(prefix: &str, decap: Decap) -> Scenario {
        Scenario {
            names: Names::new(prefix),
            decap,
            containers: ALL.to_vec(),
            peers: Peers::Static,
        }
    }

    /// Only `containers` take part.
    pub fn with_containers(mut self, containers: &[Container]) -> Scenario {
        self.containers = containers.to_vec();
        self
    }

    /// The nodes learn each other's containers by gossip under this key.
    pub fn with_gossip(mut self, key_file: &Path) -> Scenario {
        self.peers = Peers::Gossip {
            key_file: key_file.to_owned(),
        };
        self
    }

    /// The networks the containers are on, each once, in order of appearance.
    pub fn networks(&self) -> Vec<Network> {
        let mut networks: Vec<Network> = Vec::new();
        for c in &self.containers {
            if !networks.contains(&c.network) {
                networks.push(c.network);
            }
        }
        networks
    }

    /// The cluster file of node 1 or 2: every network, its own containers as
    /// endpoints, and the other node's as remotes or through gossip.
    pub fn node_file(&self, node: u8) -> ClusterFile {
        let mut file = ClusterFile::new(self.names.node_name(node.into()), UNDERLAY);
        file.decap = Some(self.decap);
        file.networks = self.networks().iter().map(Network::section).collect();
        for c in &self.containers {
            if c.node == node {
                file.endpoints.push(c.endpoint(&self.names));
            } else if self.peers == Peers::Static {
                file.remotes.push(c.remote());
            }
        }
        if let Peers::Gossip { key_file } = &self.peers {
            file.cluster = Some(ClusterSection::new(
                gossip_addr(node_vtep(node)),
                vec![gossip_addr(node_vtep(3 - node))],
                key_file,
            ));
        }
        file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_scheme() {
        let names = Names::new("t1");
        assert_eq!(names.node_ns(2), "t1n2");
        assert_eq!(names.node_name(2), "t1-node2");
        assert_eq!(names.container_ns(C3.name), "t1c3");
        assert_eq!(names.pin_dir(2), Path::new("/sys/fs/bpf/overlay/t1-node2"));
        assert_eq!(
            names.socket(2),
            Path::new("/run/overlay-tests/t1-node2/api.sock")
        );
        assert_eq!(
            state_dir_for(&names.pin_dir(2)),
            Path::new("/run/overlay-tests/t1-node2/state")
        );
    }

    #[test]
    fn the_networks_have_their_own_vni_subnet_and_gateway() {
        assert_ne!(UBER_NET.subnet, OTHER_NET.subnet);
        assert_ne!(UBER_NET.vni, OTHER_NET.vni);
        assert_eq!(UBER_NET.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(OTHER_NET.gateway(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(C1.mac(), "02:42:0a:00:00:03");
        assert_eq!(C4.cidr(), "10.0.1.13/24");
        let mut names: Vec<&str> = ALL.iter().map(|c| c.name).collect();
        names.push(JOINER);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len() + 1, "container names are unique");
    }

    #[test]
    fn a_node_file_has_its_containers_as_endpoints_and_the_others_as_remotes() {
        let scenario = Scenario::new("t1", Decap::Xdp);
        let file = scenario.node_file(1);
        assert_eq!(file.node, "t1-node1");
        assert_eq!(file.decap, Some(Decap::Xdp));
        assert_eq!(file.networks, vec![UBER_NET.section(), OTHER_NET.section()]);
        assert_eq!(
            file.endpoints,
            [C1, C3, C4].map(|c| c.endpoint(&scenario.names))
        );
        assert_eq!(file.endpoints[0].netns, "t1c1");
        assert_eq!(file.remotes, [C2, C5].map(|c| c.remote()));
        assert_eq!(file.remotes[0].vtep, Ipv4Addr::new(192, 168, 1, 5));
        assert_eq!(file.cluster, None);
    }

    #[test]
    fn with_gossip_the_nodes_seed_each_other_and_list_no_remotes() {
        let key = Path::new("/tmp/cluster.key");
        let scenario = Scenario::new("t1", Decap::Tc)
            .with_containers(&[C1, C2])
            .with_gossip(key);
        let file = scenario.node_file(2);
        assert_eq!(file.networks, vec![UBER_NET.section()]);
        assert_eq!(file.endpoints, vec![C2.endpoint(&scenario.names)]);
        assert!(file.remotes.is_empty());
        let cluster = file.cluster.expect("a [cluster] section");
        assert_eq!(cluster.listen, "192.168.1.5:7946".parse().unwrap());
        assert_eq!(cluster.seeds, vec!["172.31.1.5:7946".parse().unwrap()]);
        assert_eq!(cluster.key_file, key);
    }
}
