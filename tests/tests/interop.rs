//! Interop with the kernel's VXLAN device: node1 runs this dataplane; node2 is
//! built by hand the way the seed article (002, "Deep dive into Docker overlay
//! networks, part 3") builds a Docker overlay host: a bridge, a VXLAN device with
//! `proxy learning`, a veth with MTU 1450, and static neighbour and FDB entries.

mod common;

use anyhow::{Result, ensure};
use common::{C1, C2, NODE1_VTEP, NODE2_VTEP, Overlay};
use overlay_tests::{KernelVxlanNode, write_config};

/// node2 as Docker's kernel datapath, with c2 behind it.
fn build_kernel_vxlan_node2(o: &Overlay) -> Result<KernelVxlanNode> {
    let mut node2 = KernelVxlanNode::create(&o.node_ns(2), 4097, NODE2_VTEP)?;
    node2.add_container(&o.ns(C2), &C2.mac(), &format!("{}/24", C2.ip))?;
    node2.add_remote(&C1.ip.to_string(), &C1.mac(), NODE1_VTEP)?;
    Ok(node2)
}

fn interop(decap: &'static str) -> Result<()> {
    let mut o = Overlay::build(decap)?;
    let _node2 = build_kernel_vxlan_node2(&o)?;
    let config = format!(
        "node = \"{}\"\nunderlay = \"eth0\"\ndecap = \"{decap}\"\n\
         [[network]]\nname = \"uber-net\"\nvni = 4097\nsubnet = \"10.0.0.0/24\"\n\
         [[endpoint]]\nnetwork = \"uber-net\"\nnetns = \"{}\"\nip = \"{}\"\n\
         [[remote]]\nnetwork = \"uber-net\"\nip = \"{}\"\nmac = \"{}\"\nvtep = \"{NODE2_VTEP}\"\n",
        o.node_name(1),
        o.ns(C1),
        C1.ip,
        C2.ip,
        C2.mac()
    );
    write_config(o.dir.path(), "node1.toml", &config)?;
    o.start_agent(1)?;

    o.ping_both_ways(C1, C2, 5)?;
    o.transfer_both_ways(C1, C2, 20 * 1024 * 1024)?;
    ensure!(
        o.counter(1, "decap")? > 0 && o.counter(1, "encap")? > 0,
        "traffic went through the dataplane"
    );
    let drops: Vec<_> = o
        .nonzero_counters(1)?
        .into_iter()
        .filter(|(n, _)| n.starts_with("drop_"))
        .collect();
    ensure!(
        drops.is_empty(),
        "[{decap}] the kernel peer's traffic was dropped: {drops:?}"
    );
    Ok(())
}

#[test]
fn kernel_vxlan_peer_interoperates_with_tc_decap() -> Result<()> {
    interop("tc")
}

#[test]
fn kernel_vxlan_peer_interoperates_with_xdp_decap() -> Result<()> {
    interop("xdp")
}
