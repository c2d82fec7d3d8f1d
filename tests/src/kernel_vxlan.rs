//! The reference the dataplane must interoperate with: a host configured by hand
//! the way the seed article 002 ("Deep dive into Docker overlay networks, part 3")
//! builds a Docker overlay host, with the kernel's VXLAN device and a bridge.

use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use crate::{
    cmd::{ip, output_ok},
    scenario::Container,
    topology::SeedTopology,
};

/// One overlay network (one VNI) on a host namespace whose underlay is `eth0`: a
/// bridge `br<vni>` and a VXLAN device `vxlan<vni>` (`proxy learning`, UDP 4789)
/// enslaved to it, containers on veths, and static neighbour and FDB entries for
/// the remote endpoints, as Docker's gossip would install them.
///
/// Everything lives inside the host and container namespaces, so it goes when
/// they go; there is nothing to drop.
pub struct KernelVxlanNode {
    ns: String,
    vni: u32,
    bridge: String,
    vxlan: String,
    /// The containers' MTU: what the kernel chose for the VXLAN device, the
    /// underlay's minus 50 (1450 on a 1500 underlay, as in the article).
    mtu: u64,
    veths: u32,
}

pub const VXLAN_PORT: u16 = 4789;

impl KernelVxlanNode {
    pub fn create(node_ns: &str, vni: u32, vtep: &str) -> Result<KernelVxlanNode> {
        let (bridge, vxlan) = (format!("br{vni}"), format!("vxlan{vni}"));
        let n = node_ns;
        let setup = || -> Result<u64> {
            ip(&format!("-n {n} link add dev {bridge} type bridge"))?;
            ip(&format!("-n {n} link set {bridge} up"))?;
            // The article keeps the bridge in a namespace of its own, and creates
            // the VXLAN device outside it so that its UDP socket stays with the
            // underlay. Here the bridge is in the host namespace, which is the same.
            ip(&format!(
                "-n {n} link add dev {vxlan} type vxlan id {vni} proxy learning \
                 dstport {VXLAN_PORT} local {vtep} dev eth0"
            ))?;
            ip(&format!("-n {n} link set {vxlan} master {bridge}"))?;
            ip(&format!("-n {n} link set {vxlan} up"))?;
            let link: serde_json::Value =
                serde_json::from_str(&ip(&format!("-n {n} -j link show dev {vxlan}"))?)?;
            link[0]["mtu"]
                .as_u64()
                .context("no MTU in `ip -j link show`")
        };
        let mtu = setup().with_context(|| format!("VXLAN {vni} on {node_ns}"))?;
        Ok(KernelVxlanNode {
            ns: node_ns.to_owned(),
            vni,
            bridge,
            vxlan,
            mtu,
            veths: 0,
        })
    }

    /// Node `node` of `topology` as Docker would build it for `containers`, all
    /// on one network: those of this node plugged in, the others as remotes
    /// behind their node's VTEP.
    pub fn seed_node(
        topology: &SeedTopology,
        node: u8,
        containers: &[Container],
    ) -> Result<KernelVxlanNode> {
        let network = containers.first().context("no containers")?.network;
        ensure!(
            containers.iter().all(|c| c.network == network),
            "one kernel VXLAN device carries one network: {containers:?}"
        );
        let mut host =
            KernelVxlanNode::create(topology.node(node), network.vni, SeedTopology::vtep(node))?;
        for c in containers {
            if c.node == node {
                host.add_container(&topology.names.container_ns(c.name), &c.mac(), &c.cidr())?;
            } else {
                host.add_remote(&c.ip.to_string(), &c.mac(), SeedTopology::vtep(c.node))?;
            }
        }
        Ok(host)
    }

    /// Plugs the empty namespace `container_ns` into the bridge: its `eth0` gets
    /// `mac` and `ip_cidr` (e.g. "10.0.0.3/24").
    pub fn add_container(&mut self, container_ns: &str, mac: &str, ip_cidr: &str) -> Result<()> {
        let (n, c, mtu) = (self.ns.as_str(), container_ns, self.mtu);
        let host_end = format!("vk{}-{}", self.vni, self.veths);
        self.veths += 1;
        (|| -> Result<()> {
            ip(&format!(
                "-n {n} link add dev {host_end} mtu {mtu} type veth \
                 peer name eth0 mtu {mtu} netns {c}"
            ))?;
            ip(&format!(
                "-n {n} link set dev {host_end} master {}",
                self.bridge
            ))?;
            ip(&format!("-n {n} link set dev {host_end} up"))?;
            ip(&format!("-n {c} link set dev eth0 address {mac}"))?;
            ip(&format!("-n {c} addr add dev eth0 {ip_cidr}"))?;
            ip(&format!("-n {c} link set dev eth0 up"))?;
            Ok(())
        })()
        .with_context(|| format!("attaching {c} to VXLAN {} on {n}", self.vni))
    }

    /// What Docker's gossip installs for an endpoint on another host: its MAC for
    /// proxy ARP, and the VTEP behind that MAC.
    pub fn add_remote(&self, ip_addr: &str, mac: &str, vtep: &str) -> Result<()> {
        let n = self.ns.as_str();
        (|| -> Result<()> {
            let (vxlan, vni) = (&self.vxlan, self.vni);
            ip(&format!(
                "-n {n} neigh add {ip_addr} lladdr {mac} dev {vxlan}"
            ))?;
            output_ok(Command::new("bridge").args(
                format!(
                    "-n {n} fdb add {mac} dev {vxlan} self dst {vtep} vni {vni} port {VXLAN_PORT}"
                )
                .split_whitespace(),
            ))?;
            Ok(())
        })()
        .with_context(|| format!("remote {ip_addr} behind {vtep} on {n}"))
    }
}
