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
    Agent, KernelVxlanNode, NODE1_VTEP, NODE2_VTEP, SeedTopology, TempDir, TopologyOptions,
    docker_mac, ip, unique_prefix, write_config,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No overlay: the containers' subnets are routed by the hosts and the router.
    Routed,
    /// Docker's datapath: kernel VXLAN device, bridge, static neighbour/FDB entries.
    KernelVxlan,
    EbpfTc,
    EbpfXdp,
}

impl Kind {
    /// Every case, in table order. A new case is a variant here, its name, its
    /// colour in the chart, and its arm in [`Case::build`].
    pub const ALL: [Kind; 4] = [Kind::Routed, Kind::KernelVxlan, Kind::EbpfTc, Kind::EbpfXdp];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Routed => "routed",
            Kind::KernelVxlan => "kernel-vxlan",
            Kind::EbpfTc => "ebpf-tc",
            Kind::EbpfXdp => "ebpf-xdp",
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

    fn topology(self) -> TopologyOptions {
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

const C1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const C2_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const C3_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const VNI: u32 = 4097;
pub const IPERF_PORT: u16 = 5201;
pub const RR_PORT: u16 = 7101;
pub const UDP_PORT: u16 = 7102;

/// One case, built and ready to measure; everything goes on drop.
pub struct Case {
    pub spec: Spec,
    pub prefix: String,
    // Field order is drop order: the iperf3 server and the agents go before the
    // namespaces they run in.
    iperf: ServerGuard,
    _agents: Vec<Agent>,
    pub topology: SeedTopology,
    _dir: TempDir,
    pub server_ip: Ipv4Addr,
    pub pin_dirs: Vec<PathBuf>,
}

impl Case {
    pub fn build(spec: Spec, binary: &Path) -> Result<Case> {
        let prefix = unique_prefix("b");
        let mut topology = SeedTopology::create(&prefix, spec.net.topology())?;
        let dir = TempDir::new(&prefix)?;
        for c in ["c1", "c2"] {
            topology.container(c)?;
        }
        let (c1, c2) = (format!("{prefix}c1"), format!("{prefix}c2"));
        let mut agents = Vec::new();
        let mut pin_dirs = Vec::new();
        let server_ip = match spec.kind {
            Kind::Routed => {
                routed(&topology, &c1, &c2)?;
                Ipv4Addr::new(10, 1, 2, 2)
            }
            Kind::KernelVxlan => {
                let cidr = |ip: Ipv4Addr| format!("{ip}/24");
                let mut n1 = KernelVxlanNode::create(topology.node(1), VNI, NODE1_VTEP)?;
                n1.add_container(&c1, &docker_mac(C1_IP), &cidr(C1_IP))?;
                n1.add_remote(&C2_IP.to_string(), &docker_mac(C2_IP), NODE2_VTEP)?;
                let mut n2 = KernelVxlanNode::create(topology.node(2), VNI, NODE2_VTEP)?;
                n2.add_container(&c2, &docker_mac(C2_IP), &cidr(C2_IP))?;
                n2.add_remote(&C1_IP.to_string(), &docker_mac(C1_IP), NODE1_VTEP)?;
                C2_IP
            }
            Kind::EbpfTc | Kind::EbpfXdp => {
                // Local delivery is measured by BPF_PROG_TEST_RUN only; c3 exists
                // for that, in the plain cases.
                let with_c3 = spec.fdb_entries.is_none();
                if with_c3 {
                    topology.container("c3")?;
                }
                for node in [1u8, 2] {
                    let config = ebpf_config(&spec, &prefix, node, with_c3);
                    let path = write_config(dir.path(), &format!("node{node}.toml"), &config)?;
                    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/overlay/{prefix}-node{node}"));
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
                C2_IP
            }
        };
        let iperf = ServerGuard::spawn(&c2, &["iperf3", "-s", "-p", &IPERF_PORT.to_string()])?;
        let case = Case {
            spec,
            prefix,
            iperf,
            _agents: agents,
            topology,
            _dir: dir,
            server_ip,
            pin_dirs,
        };
        case.wait_reachable()?;
        Ok(case)
    }

    pub fn client_ns(&self) -> String {
        format!("{}c1", self.prefix)
    }

    pub fn server_ns(&self) -> String {
        format!("{}c2", self.prefix)
    }

    /// Until c1 reaches c2 (ARP, first packets through the tunnel), up to 10 s.
    fn wait_reachable(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
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

/// A node's cluster file: its container(s) as endpoints, the other node's as a
/// remote, and for the FDB scale cases enough remote endpoints behind other
/// VTEPs to fill the FDB to `fdb_entries`.
fn ebpf_config(spec: &Spec, prefix: &str, node: u8, with_c3: bool) -> String {
    let decap = if spec.kind == Kind::EbpfXdp {
        "xdp"
    } else {
        "tc"
    };
    // A /8 leaves room for 100 000 endpoints; the two containers keep their
    // addresses from the other cases.
    let mut s = format!(
        "node = \"{prefix}-node{node}\"\nunderlay = \"eth0\"\ndecap = \"{decap}\"\n\
         [[network]]\nname = \"uber-net\"\nvni = {VNI}\nsubnet = \"10.0.0.0/8\"\n"
    );
    let endpoint = |s: &mut String, c: &str, ip: Ipv4Addr| {
        *s += &format!(
            "[[endpoint]]\nnetwork = \"uber-net\"\nnetns = \"{prefix}{c}\"\nip = \"{ip}\"\n"
        );
    };
    let remote = |s: &mut String, ip: Ipv4Addr, vtep: &str| {
        *s += &format!(
            "[[remote]]\nnetwork = \"uber-net\"\nip = \"{ip}\"\nmac = \"{}\"\nvtep = \"{vtep}\"\n",
            docker_mac(ip)
        );
    };
    let mut fdb = 0u32;
    if node == 1 {
        endpoint(&mut s, "c1", C1_IP);
        remote(&mut s, C2_IP, NODE2_VTEP);
        fdb += 2;
        if with_c3 {
            endpoint(&mut s, "c3", C3_IP);
            fdb += 1;
        }
    } else {
        endpoint(&mut s, "c2", C2_IP);
        remote(&mut s, C1_IP, NODE1_VTEP);
        fdb += 2;
        if with_c3 {
            remote(&mut s, C3_IP, NODE1_VTEP);
            fdb += 1;
        }
    }
    // Behind 240 other hosts on the far segment; no packet is ever sent to them.
    let far = if node == 1 { "192.168.1" } else { "172.31.1" };
    let base = u32::from(Ipv4Addr::new(10, 1, 0, 0));
    for i in 0..spec.fdb_entries.unwrap_or(0).saturating_sub(fdb) {
        let vtep = format!("{far}.{}", 10 + i % 240);
        remote(&mut s, Ipv4Addr::from(base + 1 + i), &vtep);
    }
    s
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
            let config = ebpf_config(&spec, "x", node, false);
            let entries =
                config.matches("[[endpoint]]").count() + config.matches("[[remote]]").count();
            assert_eq!(entries, n as usize);
        }
    }
}
