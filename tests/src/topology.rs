//! The seed article's topology: two hosts on separate L2 segments joined by a router,
//! each host a network namespace, containers as further namespaces.

use anyhow::{Context as _, Result};

use crate::{cmd::ip, netns::Netns, scenario::Names};

/// node1's underlay address, on 172.31.1.0/24.
pub const NODE1_VTEP: &str = "172.31.1.5";
/// node2's underlay address, on 192.168.1.0/24.
pub const NODE2_VTEP: &str = "192.168.1.5";

/// A host outside the overlay, behind the router on a segment of its own
/// (TEST-NET-3): where the containers' way out leads.
pub const OUTSIDE_IP: &str = "203.0.113.10";
const OUTSIDE_ROUTER_IP: &str = "203.0.113.1";

/// Per node: its address, the router's address on that segment, and the router's
/// interface name.
const SEGMENTS: [(&str, &str, &str); 2] = [
    (NODE1_VTEP, "172.31.1.1", "r1"),
    (NODE2_VTEP, "192.168.1.1", "r2"),
];

#[derive(Clone, Copy, Debug)]
pub struct TopologyOptions {
    /// Make the underlay veths compute checksums on transmit, as a physical NIC
    /// does, instead of passing CHECKSUM_PARTIAL along (which costs their TSO).
    pub wire_checksums: bool,
    pub underlay_mtu: u32,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            wire_checksums: false,
            underlay_mtu: 1500,
        }
    }
}

/// node1 (`<p>n1`, 172.31.1.5/24) and node2 (`<p>n2`, 192.168.1.5/24), each with
/// its underlay as `eth0` and a default route via the router `<p>rt` (.1 on both
/// segments), named as [`Names`] says. Nothing is created in the root namespace; dropping the topology
/// deletes every namespace, containers first.
pub struct SeedTopology {
    pub names: Names,
    // Field order is drop order: containers go before the hosts.
    containers: Vec<Netns>,
    outside: Option<Netns>,
    router: Netns,
    nodes: [Netns; 2],
}

impl SeedTopology {
    pub fn create(prefix: &str, opts: TopologyOptions) -> Result<SeedTopology> {
        let names = Names::new(prefix);
        let topology = SeedTopology {
            containers: Vec::new(),
            outside: None,
            router: Netns::create(&names.router_ns())?,
            nodes: [
                Netns::create(&names.node_ns(1))?,
                Netns::create(&names.node_ns(2))?,
            ],
            names,
        };
        topology
            .wire(opts)
            .with_context(|| format!("building the seed topology {prefix}*"))?;
        Ok(topology)
    }

    fn wire(&self, opts: TopologyOptions) -> Result<()> {
        let rt = self.router.name.as_str();
        let mtu = opts.underlay_mtu;
        for (node, (node_ip, router_ip, router_if)) in self.nodes.iter().zip(SEGMENTS) {
            let n = node.name.as_str();
            // Both ends are born in their namespaces, so a failure half-way leaves
            // nothing in the root namespace.
            ip(&format!(
                "-n {n} link add eth0 mtu {mtu} type veth peer name {router_if} mtu {mtu} netns {rt}"
            ))?;
            ip(&format!("-n {rt} addr add {router_ip}/24 dev {router_if}"))?;
            ip(&format!("-n {rt} link set {router_if} up"))?;
            ip(&format!("-n {n} addr add {node_ip}/24 dev eth0"))?;
            ip(&format!("-n {n} link set eth0 up"))?;
            ip(&format!("-n {n} route add default via {router_ip}"))?;
            // Overlay hosts forward (Docker turns it on), and bpf_fib_lookup
            // refuses to route for a host that does not.
            node.run_ok(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
            if opts.wire_checksums {
                node.run_ok(&["ethtool", "-K", "eth0", "tx", "off"])?;
                self.router
                    .run_ok(&["ethtool", "-K", router_if, "tx", "off"])?;
            }
        }
        self.router
            .run_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }

    /// The router's namespace.
    pub fn router(&self) -> &str {
        &self.router.name
    }

    /// A host outside the overlay (`<prefix>ex`, [`OUTSIDE_IP`]), behind the
    /// router on its own segment, made on first use; its namespace. Deleted
    /// with the topology.
    pub fn outside_host(&mut self) -> Result<&str> {
        if self.outside.is_none() {
            let ns = Netns::create(&self.names.outside_ns())?;
            let (n, rt) = (ns.name.as_str(), self.router.name.as_str());
            ip(&format!(
                "-n {n} link add eth0 type veth peer name r3 netns {rt}"
            ))?;
            ip(&format!("-n {rt} addr add {OUTSIDE_ROUTER_IP}/24 dev r3"))?;
            ip(&format!("-n {rt} link set r3 up"))?;
            ip(&format!("-n {n} addr add {OUTSIDE_IP}/24 dev eth0"))?;
            ip(&format!("-n {n} link set eth0 up"))?;
            ip(&format!("-n {n} route add default via {OUTSIDE_ROUTER_IP}"))?;
            self.outside = Some(ns);
        }
        Ok(&self.outside.as_ref().expect("made above").name)
    }

    /// The namespace of node 1 or 2.
    pub fn node(&self, node: u8) -> &str {
        &self.nodes[usize::from(node) - 1].name
    }

    /// The underlay (VTEP) address of node 1 or 2.
    pub fn vtep(node: u8) -> &'static str {
        SEGMENTS[usize::from(node) - 1].0
    }

    /// An empty namespace `<prefix><name>` with `lo` up, for a container; whoever
    /// plumbs it (the agent, or [`crate::KernelVxlanNode`]) creates its `eth0`.
    /// Deleted with the topology.
    pub fn container(&mut self, name: &str) -> Result<&Netns> {
        let ns = Netns::create(&self.names.container_ns(name))?;
        self.containers.push(ns);
        Ok(self.containers.last().expect("just pushed"))
    }

    /// Deletes a container's namespace now, as when a container goes away.
    pub fn remove_container(&mut self, name: &str) -> Result<()> {
        let full = self.names.container_ns(name);
        let at = self
            .containers
            .iter()
            .position(|ns| ns.name == full)
            .with_context(|| format!("no container {name}"))?;
        self.containers.remove(at);
        Ok(())
    }
}
