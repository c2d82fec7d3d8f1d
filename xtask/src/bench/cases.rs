//! The cases the bench compares, each built on the test bed's seed topology: two
//! hosts on separate L2 segments joined by a router, one container behind each
//! host (plus a second one on node1 for the eBPF cases, for local delivery), on
//! one of the wires and topologies in [`Net`].

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use overlay_tests::{
    Agent, BUSYBOX_IMAGE, ClusterFile, Decap, DockerSwarm, KernelVxlanNode, NODE1_VTEP, NODE2_VTEP,
    RemoteSection, SeedTopology, TempDir, TopologyOptions, ip,
    scenario::{C1, C2, C3, Container, Names, Scenario, UBER_NET, docker_mac, node_vtep},
    unique_prefix,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No overlay: the containers' subnets are routed by the hosts and the router.
    Routed,
    /// Docker's datapath: kernel VXLAN device, bridge, static neighbour/FDB entries.
    KernelVxlan,
    EbpfTc,
    EbpfXdp,
    /// What users would pick instead: Docker's own overlay, two dockerds in a
    /// swarm formed on the underlay addresses, `docker network create -d
    /// overlay --attachable`, a container on each node (the machine's iperf3
    /// in their namespaces, as in the other cases).
    DockerSwarm,
}

impl Kind {
    /// Every case, in table order. A new case is a variant here, its name, its
    /// colour in the chart, and its arm in [`Case::build`].
    pub const ALL: [Kind; 5] = [
        Kind::Routed,
        Kind::KernelVxlan,
        Kind::EbpfTc,
        Kind::EbpfXdp,
        Kind::DockerSwarm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Routed => "routed",
            Kind::KernelVxlan => "kernel-vxlan",
            Kind::EbpfTc => "ebpf-tc",
            Kind::EbpfXdp => "ebpf-xdp",
            Kind::DockerSwarm => "docker-swarm",
        }
    }

    pub fn is_ebpf(self) -> bool {
        matches!(self, Kind::EbpfTc | Kind::EbpfXdp)
    }

    /// XDP_REDIRECT cannot carry a veth's CHECKSUM_PARTIAL state (README,
    /// Troubleshooting), so XDP decap runs only where the frames reaching the
    /// node carry complete checksums: a wire that computes them, or a bridge,
    /// which computes the checksums of tunnelled packets it segments.
    pub fn runs_on(self, net: Net) -> bool {
        self != Kind::EbpfXdp || net.wire != Wire::Veth || net.switched
    }
}

/// What the underlay veths between the hosts and the router do, and so which
/// hardware they stand for (README, *Benchmark*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// veths as created: GSO packets and CHECKSUM_PARTIAL cross them whole, as
    /// between containers or VMs on one host with offloads end to end.
    Veth,
    /// Checksums computed on transmit, so every frame is segmented at the sender
    /// (as by TSO), and received one by one: a NIC with GRO off.
    Csum,
    /// As `Csum`, and the receiver merges through NAPI GRO: a physical NIC.
    Nic,
}

/// A wire and a topology: the hosts on point-to-point links to the router, or
/// each on a switched segment (a bridge in the router's namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub wire: Wire,
    pub switched: bool,
}

impl Net {
    pub const VETH: Net = Net::on(Wire::Veth, false);
    pub const CSUM: Net = Net::on(Wire::Csum, false);
    pub const NIC: Net = Net::on(Wire::Nic, false);
    /// The second finding: the default veth wire with a switch in the path.
    pub const SWITCHED: Net = Net::on(Wire::Veth, true);
    /// Hosts with NICs on switched segments: the seed's topology as deployed.
    pub const NIC_SWITCHED: Net = Net::on(Wire::Nic, true);

    const fn on(wire: Wire, switched: bool) -> Net {
        Net { wire, switched }
    }

    /// Its name in tables and on the command line (`--net`).
    pub fn name(self) -> &'static str {
        match (self.wire, self.switched) {
            (Wire::Veth, false) => "veth",
            (Wire::Csum, false) => "csum",
            (Wire::Nic, false) => "nic",
            (Wire::Veth, true) => "switched",
            (Wire::Csum, true) => "csum-switched",
            (Wire::Nic, true) => "nic-switched",
        }
    }

    /// What the chart's panel says about it.
    pub fn caption(self) -> String {
        let wire = match self.wire {
            Wire::Veth => "veth wire: offloads pass through",
            Wire::Csum => "csum wire: segmented, no receive GRO",
            Wire::Nic => "NIC-like wire: segmented, receive GRO",
        };
        if self.switched {
            format!("{wire}; switched segments")
        } else {
            wire.to_owned()
        }
    }

    pub fn topology(self) -> TopologyOptions {
        TopologyOptions {
            wire_checksums: self.wire != Wire::Veth,
            receive_gro: self.wire == Wire::Nic,
            switched: self.switched,
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub kind: Kind,
    pub net: Net,
    /// For the eBPF cases: FDB entries per node, padded with remote endpoints that
    /// never send (`None`: just the containers of the topology).
    pub fdb_entries: Option<u32>,
    /// Runs the `--baseline` agent binary: a before/after comparison in one run.
    pub baseline: bool,
}

impl Spec {
    pub fn label(&self) -> String {
        let mut s = format!("{} [{}]", self.kind.name(), self.net.name());
        if let Some(n) = self.fdb_entries {
            s += &format!(" fdb={n}");
        }
        if self.baseline {
            s += " baseline";
        }
        s
    }
}

pub const IPERF_PORT: u16 = 5201;
pub const RR_PORT: u16 = 7101;
pub const UDP_PORT: u16 = 7102;
const SWARM_NET: &str = "swarm-net";
const SWARM_SUBNET: &str = "10.0.9.0/24";

/// One case, built and ready to measure; everything goes on drop.
pub struct Case {
    pub spec: Spec,
    // Field order is drop order: the iperf3 server, the dockerds and the
    // agents go before the namespaces they run in.
    iperf: ServerGuard,
    _swarm: Option<DockerSwarm>,
    _agents: Vec<Agent>,
    pub topology: SeedTopology,
    _dir: TempDir,
    pub server_ip: Ipv4Addr,
    pub pin_dirs: Vec<PathBuf>,
    client_ns: String,
    server_ns: String,
}

impl Case {
    pub fn build(spec: Spec, binary: &Path) -> Result<Case> {
        let prefix = unique_prefix("b");
        let mut topology = SeedTopology::create(&prefix, spec.net.topology())?;
        let dir = TempDir::new(&prefix)?;
        if spec.kind != Kind::DockerSwarm {
            for c in ["c1", "c2"] {
                topology.container(c)?;
            }
        }
        let (mut c1, mut c2) = (format!("{prefix}c1"), format!("{prefix}c2"));
        let mut swarm = None;
        let mut agents = Vec::new();
        let mut pin_dirs = Vec::new();
        let server_ip = match spec.kind {
            Kind::Routed => {
                routed(&topology, &c1, &c2)?;
                Ipv4Addr::new(10, 1, 2, 2)
            }
            Kind::KernelVxlan => {
                for node in [1, 2] {
                    KernelVxlanNode::seed_node(&topology, node, &[C1, C2])?;
                }
                C2.ip
            }
            Kind::EbpfTc | Kind::EbpfXdp => {
                // Local delivery is measured by BPF_PROG_TEST_RUN only; c3 exists
                // for that, in the plain cases.
                let with_c3 = spec.fdb_entries.is_none();
                if with_c3 {
                    topology.container("c3")?;
                }
                for node in [1u8, 2] {
                    let path = ebpf_config(&spec, &prefix, node, with_c3)
                        .write(dir.path(), &format!("node{node}.toml"))?;
                    let pin_dir = Names::new(&prefix).pin_dir(node.into());
                    let started = Instant::now();
                    agents.push(
                        Agent::start(topology.node(node), binary, &path, &pin_dir, &[])
                            .with_context(|| format!("{}: agent of node{node}", spec.label()))?,
                    );
                    if spec.fdb_entries.is_some_and(|n| n >= 10_000) {
                        eprintln!(
                            "bench: {}: node{node}'s agent ready in {:.1} s",
                            spec.label(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    pin_dirs.push(pin_dir);
                }
                C2.ip
            }
            Kind::DockerSwarm => {
                let mut s = DockerSwarm::start(&topology)?;
                s.create_network(SWARM_NET, SWARM_SUBNET)?;
                let sleeper = [BUSYBOX_IMAGE, "sleep", "1d"];
                let server = s.run(2, "c2", SWARM_NET, &sleeper)?;
                let client = s.run(1, "c1", SWARM_NET, &sleeper)?;
                (c1, c2) = (client.netns, server.netns);
                swarm = Some(s);
                server.ip
            }
        };
        let iperf = ServerGuard::spawn(&c2, &["iperf3", "-s", "-p", &IPERF_PORT.to_string()])?;
        let case = Case {
            spec,
            iperf,
            _swarm: swarm,
            _agents: agents,
            topology,
            _dir: dir,
            server_ip,
            pin_dirs,
            client_ns: c1,
            server_ns: c2,
        };
        case.wait_reachable()?;
        Ok(case)
    }

    pub fn client_ns(&self) -> String {
        self.client_ns.clone()
    }

    pub fn server_ns(&self) -> String {
        self.server_ns.clone()
    }

    /// Until c1 reaches c2 (ARP, first packets through the tunnel, the
    /// swarm's gossip), up to 20 s.
    fn wait_reachable(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats =
                overlay_tests::ping(&self.client_ns(), &self.server_ip.to_string(), 1, &[])?;
            if stats.received == 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: c1 cannot reach c2 at {}",
                    self.spec.label(),
                    self.server_ip
                );
            }
        }
    }

    /// The iperf3 server must still be running: a dead one explains an empty result.
    pub fn check_server(&mut self) -> Result<()> {
        if let Some(status) = self.iperf.child.try_wait()? {
            bail!("{}: the iperf3 server exited ({status})", self.spec.label());
        }
        Ok(())
    }
}

/// No overlay: c1 on 10.1.1.0/24 behind node1, c2 on 10.1.2.0/24 behind node2,
/// the hosts forward and the router knows both subnets. MTU 1500 end to end: the
/// limit an overlay (inner MTU 1450) is measured against.
fn routed(topology: &SeedTopology, c1: &str, c2: &str) -> Result<()> {
    let rt = topology.router();
    for (node, c, vtep) in [(1u8, c1, NODE1_VTEP), (2, c2, NODE2_VTEP)] {
        let n = topology.node(node);
        let (host, ctr) = (format!("10.1.{node}.1"), format!("10.1.{node}.2"));
        ip(&format!(
            "-n {n} link add vr{node} type veth peer name eth0 netns {c}"
        ))?;
        ip(&format!("-n {n} addr add {host}/24 dev vr{node}"))?;
        ip(&format!("-n {n} link set vr{node} up"))?;
        ip(&format!("-n {c} addr add {ctr}/24 dev eth0"))?;
        ip(&format!("-n {c} link set eth0 up"))?;
        ip(&format!("-n {c} route add default via {host}"))?;
        ip(&format!("-n {rt} route add 10.1.{node}.0/24 via {vtep}"))?;
    }
    Ok(())
}

/// A node's cluster file: the scenario's c1 and c2, and c3 on node1 for local
/// delivery, its own as endpoints and the other node's as remotes; for the FDB
/// scale cases, enough remote endpoints behind other VTEPs to fill the FDB to
/// `fdb_entries`.
fn ebpf_config(spec: &Spec, prefix: &str, node: u8, with_c3: bool) -> ClusterFile {
    let decap = if spec.kind == Kind::EbpfXdp {
        Decap::Xdp
    } else {
        Decap::Tc
    };
    let containers: &[Container] = if with_c3 { &[C1, C2, C3] } else { &[C1, C2] };
    let mut file = Scenario::new(prefix, decap)
        .with_containers(containers)
        .node_file(node);
    // A /8 leaves room for 100 000 endpoints; the containers keep their
    // addresses from the other cases.
    file.network_mut(UBER_NET.name).subnet = "10.0.0.0/8".into();
    // Behind 240 other hosts on the far segment; no packet is ever sent to them.
    let [a, b, c, _] = node_vtep(3 - node).octets();
    let base = u32::from(Ipv4Addr::new(10, 1, 0, 0));
    let fdb = u32::try_from(containers.len()).expect("a handful");
    for i in 0..spec.fdb_entries.unwrap_or(0).saturating_sub(fdb) {
        let ip = Ipv4Addr::from(base + 1 + i);
        let host = u8::try_from(10 + i % 240).expect("below 250");
        file.remotes.push(RemoteSection {
            network: UBER_NET.name.to_owned(),
            ip,
            mac: docker_mac(ip),
            vtep: Ipv4Addr::new(a, b, c, host),
        });
    }
    file
}

/// A server process in a namespace, killed on drop.
pub struct ServerGuard {
    child: Child,
}

impl ServerGuard {
    pub fn spawn(ns: &str, args: &[&str]) -> Result<ServerGuard> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {args:?} in {ns}"))?;
        Ok(ServerGuard { child })
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        // `ip netns exec` execs the server, so the pid is the server's own.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_configs_fill_the_fdb_to_the_requested_size() {
        for (n, node) in [(10u32, 1u8), (10_000, 2)] {
            let spec = Spec {
                kind: Kind::EbpfTc,
                net: Net::VETH,
                fdb_entries: Some(n),
                baseline: false,
            };
            let file = ebpf_config(&spec, "x", node, false);
            let text = file.render().unwrap();
            let entries = text.matches("[[endpoint]]").count() + text.matches("[[remote]]").count();
            assert_eq!(entries, n as usize);
            let mut ips: Vec<Ipv4Addr> = file.endpoints.iter().map(|e| e.ip).collect();
            ips.extend(file.remotes.iter().map(|r| r.ip));
            ips.sort_unstable();
            ips.dedup();
            assert_eq!(ips.len(), n as usize, "every entry has its own address");
            assert!(
                ips.iter().all(|ip| ip.octets()[0] == 10),
                "inside 10.0.0.0/8"
            );
            let own = if node == 1 { C1 } else { C2 };
            assert_eq!(file.endpoints, vec![own.endpoint(&Names::new("x"))]);
        }
    }

    #[test]
    fn plain_configs_hold_the_scenario_containers() {
        let spec = Spec {
            kind: Kind::EbpfXdp,
            net: Net::NIC,
            fdb_entries: None,
            baseline: false,
        };
        let node1 = ebpf_config(&spec, "x", 1, true);
        assert_eq!(node1.decap, Some(Decap::Xdp));
        let endpoints: Vec<Ipv4Addr> = node1.endpoints.iter().map(|e| e.ip).collect();
        assert_eq!(endpoints, vec![C1.ip, C3.ip]);
        assert_eq!(node1.remotes, vec![C2.remote()]);
        let node2 = ebpf_config(&spec, "x", 2, true);
        assert_eq!(node2.remotes, vec![C1.remote(), C3.remote()]);
    }
}
