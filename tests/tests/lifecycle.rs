//! Lifecycle: an agent removes everything it made when it exits, and a setup
//! that fails half-way leaves nothing behind.

mod common;

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Result, ensure};
use overlay_tests::{
    Agent, ClusterFile, Decap, EndpointSection, NetworkSection, Overlay, ping,
    scenario::{C1, C2, C3, UNDERLAY, pin_dir_of},
    sh,
};

/// What an agent can leave behind: interfaces on its node, and attachments of
/// its programs: BPF links (TCX or XDP) anywhere on the machine, or netlink TC
/// filters on the node.
#[derive(Debug, PartialEq)]
struct NodeFootprint {
    links: Vec<String>,
    attached_programs: usize,
}

/// The ids of the BPF programs the agents hold open.
fn programs_of(agents: &[&Agent]) -> Result<BTreeSet<u64>> {
    let mut ids = BTreeSet::new();
    for agent in agents {
        ids.extend(agent.programs()?);
    }
    Ok(ids)
}

fn footprint(o: &Overlay, node: u8, programs: &BTreeSet<u64>) -> Result<NodeFootprint> {
    let links: serde_json::Value =
        serde_json::from_str(&sh(&format!("ip -n {} -j link show", o.node_ns(node)))?)?;
    let mut links: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    links.sort();
    let ours = |id: Option<u64>| id.is_some_and(|id| programs.contains(&id));
    let bpf_links: serde_json::Value = serde_json::from_str(&sh("bpftool -j link show")?)?;
    let mut attached_programs = bpf_links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| ours(l["prog_id"].as_u64()))
        .count();
    // Before 6.6 TC programs attach as netlink filters, not links (see
    // overlay_userspace::dataplane::kernel); they are listed per namespace.
    attached_programs += common::netlink_tc_filters(&o.node_ns(node))?
        .iter()
        .filter(|f| ours(f["id"].as_u64()))
        .count();
    Ok(NodeFootprint {
        links,
        attached_programs,
    })
}

fn container_links(o: &Overlay, ns: &str) -> Result<String> {
    let _ = o;
    sh(&format!("ip -n {ns} -br link show"))
}

fn exit_removes_everything(decap: Decap, signal: i32) -> Result<()> {
    let mut o = Overlay::build(decap)?;
    let no_programs = BTreeSet::new();
    let before = footprint(&o, 1, &no_programs)?;
    o.start_agent(1)?;
    let programs = programs_of(&[&o.agents[0]])?;
    let running = footprint(&o, 1, &programs)?;
    // Three endpoints on node1 (c1, c3, c4): three veths, three TC attachments plus
    // decap, and in XDP mode an XDP_PASS program on each container-side veth; in
    // TC mode the tunnel GRO device (overlay_userspace::host::tunnel_gro) as well.
    let devices = if decap == Decap::Tc { 4 } else { 3 };
    ensure!(
        running.links.len() == before.links.len() + devices,
        "while running: {running:?}"
    );
    let expected = if decap == Decap::Xdp { 7 } else { 4 };
    ensure!(
        running.attached_programs == before.attached_programs + expected,
        "while running, expected {expected} attachments: {running:?}"
    );
    ensure!(
        o.pin_dir(1).join("FDB").exists(),
        "maps are pinned while running"
    );
    ensure!(
        container_links(&o, &o.ns(C1))?.contains("eth0"),
        "c1 has its eth0 while running"
    );

    let status = o.agents.pop().expect("started above").stop_with(signal)?;
    ensure!(
        status.success(),
        "the agent must exit cleanly on signal {signal}: {status:?}"
    );
    // The programs it loaded may be gone; links to them must be.
    ensure!(
        footprint(&o, 1, &programs)? == before,
        "after exit the node must be as before"
    );
    ensure!(
        !o.pin_dir(1).exists(),
        "pins must be gone: {}",
        o.pin_dir(1).display()
    );
    ensure!(
        !container_links(&o, &o.ns(C1))?.contains("eth0"),
        "c1's eth0 must be gone"
    );
    Ok(())
}

#[test]
fn sigterm_removes_everything_tc() -> Result<()> {
    exit_removes_everything(Decap::Tc, libc::SIGTERM)
}

#[test]
fn sigint_removes_everything_xdp() -> Result<()> {
    exit_removes_everything(Decap::Xdp, libc::SIGINT)
}

/// A second agent on the same underlay fails to attach XDP decap after it has
/// created its endpoint: it must undo that, say why, and disturb nothing else.
#[test]
fn setup_failing_half_way_is_rolled_back() -> Result<()> {
    let mut o = Overlay::build(Decap::Xdp)?;
    o.start_agent(1)?;
    o.start_agent(2)?;
    let programs = programs_of(&o.agents.iter().collect::<Vec<_>>())?;
    let before = footprint(&o, 1, &programs)?;
    // Its own node name, network and container: nothing but the underlay is shared.
    let c9 = o.topology.container("c9")?.name.clone();
    let intruder = ClusterFile {
        decap: Some(Decap::Xdp),
        networks: vec![NetworkSection::new("n", 77, "10.7.0.0/24")],
        endpoints: vec![EndpointSection::new("n", &c9, Ipv4Addr::new(10, 7, 0, 9))],
        ..ClusterFile::new(format!("{}-intruder", o.prefix()), UNDERLAY)
    };
    let path = intruder.write(o.dir.path(), "intruder.toml")?;
    let pin_dir = pin_dir_of(&intruder.node);
    let (status, stderr) =
        Agent::run_to_completion(&o.node_ns(1), &o.binary, &path, &pin_dir, &[])?;
    ensure!(!status.success(), "the intruder must fail");
    ensure!(
        stderr.contains("setup failed; everything it had done was undone"),
        "stderr: {stderr}"
    );
    ensure!(
        stderr.contains("XDP decap"),
        "the reason must be given: {stderr}"
    );
    // The intruder's own links went with its process (or its pins, checked
    // below); the first agents' attachments must all still be there.
    let after = footprint(&o, 1, &programs)?;
    ensure!(
        after == before,
        "the node must be as before the intruder: {before:?} -> {after:?}"
    );
    ensure!(
        !container_links(&o, &c9)?.contains("eth0"),
        "c9's veth must be gone"
    );
    ensure!(!pin_dir.exists(), "the intruder's pins must be gone");
    // The running overlay is undisturbed.
    ensure!(
        ping(&o.ns(C1), &C2.ip.to_string(), 2, &[])?.received == 2,
        "the first agents still forward"
    );
    Ok(())
}

/// A container whose namespace is deleted under a running agent is withdrawn from
/// the tables at the next reconcile, and the agent still exits cleanly.
#[test]
fn a_vanished_container_is_withdrawn() -> Result<()> {
    let mut o = Overlay::build(Decap::Tc)?;
    o.start_agent_with(1, &["--reconcile-interval", "1"])?;
    let fdb_has = |o: &Overlay, mac: &str| -> Result<bool> {
        Ok(o.table(1, "fdb")?
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["mac"] == mac))
    };
    ensure!(fdb_has(&o, &C3.mac())?, "c3 is in the FDB while it exists");
    o.topology.remove_container(C3.name)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while fdb_has(&o, &C3.mac())? {
        ensure!(
            std::time::Instant::now() < deadline,
            "c3 was not withdrawn within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let neigh = o.table(1, "neigh")?;
    ensure!(
        !neigh.to_string().contains(&C3.ip.to_string()),
        "c3 must leave NEIGH too: {neigh}"
    );
    ensure!(fdb_has(&o, &C1.mac())?, "the other endpoints stay");
    let status = o.agents.pop().expect("started above").stop()?;
    ensure!(status.success(), "{status:?}");
    Ok(())
}
