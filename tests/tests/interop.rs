//! Interop with the kernel's VXLAN device: node1 runs this dataplane; node2 is
//! built by hand the way the seed article (002, "Deep dive into Docker overlay
//! networks, part 3") builds a Docker overlay host: a bridge, a VXLAN device with
//! `proxy learning`, a veth with MTU 1450, and static neighbour and FDB entries.

use anyhow::{Result, ensure};
use overlay_tests::{
    Decap, KernelVxlanNode, Overlay,
    scenario::{C1, C2},
};

fn interop(decap: Decap) -> Result<()> {
    // node1's file has c1 as its endpoint and c2 as a remote; node2 is Docker's
    // kernel datapath with c2 behind it.
    let mut o = Overlay::build_with(decap, &[C1, C2])?;
    let _node2 = KernelVxlanNode::seed_node(&o.topology, 2, &[C1, C2])?;
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
    interop(Decap::Tc)
}

#[test]
fn kernel_vxlan_peer_interoperates_with_xdp_decap() -> Result<()> {
    interop(Decap::Xdp)
}
