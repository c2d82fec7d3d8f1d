//! The test bed tested on its own, without the overlay: namespaces, the seed
//! topology, traffic, capture, the kernel-VXLAN reference hosts, and the agent
//! guard driven with a stand-in agent. Needs root, like every test here.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use crate::{
    scenario::{C1, C2},
    *,
};

/// No namespace whose name starts with `prefix` is left.
fn assert_gone(prefix: &str) -> Result<()> {
    let left: Vec<String> = ip("netns list")?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    Ok(())
}

/// Two namespaces joined by a veth: `x` 10.9.0.1/24 in the first, `y` 10.9.0.2/24
/// in the second.
fn veth_pair(prefix: &str) -> Result<(Netns, Netns)> {
    let (a, b) = (
        Netns::create(&format!("{prefix}a"))?,
        Netns::create(&format!("{prefix}b"))?,
    );
    ip(&format!(
        "-n {} link add x type veth peer name y netns {}",
        a.name, b.name
    ))?;
    for (ns, dev, addr) in [(&a, "x", "10.9.0.1/24"), (&b, "y", "10.9.0.2/24")] {
        ip(&format!("-n {} addr add {addr} dev {dev}", ns.name))?;
        ip(&format!("-n {} link set {dev} up", ns.name))?;
    }
    Ok((a, b))
}

#[test]
fn netns_runs_commands_inside_and_is_deleted_on_drop() -> Result<()> {
    let prefix = unique_prefix("tn");
    let ns = Netns::create(&format!("{prefix}a"))?;
    ensure!(
        ns.run_ok(&["ip", "-br", "link", "show", "lo"])?
            .contains("UP"),
        "lo is up"
    );
    let failed = ns.exec(&["ip", "link", "show", "nosuchdev"])?;
    ensure!(
        !failed.status.success(),
        "exec reports failure as an Output"
    );
    let err = ns.run_ok(&["ip", "link", "show", "nosuchdev"]).unwrap_err();
    ensure!(
        format!("{err:#}").contains("nosuchdev"),
        "run_ok's error carries stderr: {err:#}"
    );
    // A namespace deleted behind the guard's back is fine too.
    let gone = Netns::create(&format!("{prefix}b"))?;
    ip(&format!("netns del {}", gone.name))?;
    drop(gone);
    drop(ns);
    assert_gone(&prefix)
}

#[test]
fn seed_topology_routes_between_segments_and_leaves_nothing() -> Result<()> {
    let prefix = unique_prefix("tt");
    let root_links = ip("-br link")?;
    {
        let mut t = SeedTopology::create(&prefix, TopologyOptions::default())?;
        ensure!(t.router() == format!("{prefix}rt") && t.node(2) == format!("{prefix}n2"));
        let c = t.container("c1")?.name.clone();
        ensure!(c == format!("{prefix}c1"), "container namespace {c}");
        let before = link_stats(t.node(1), "eth0")?;
        for (from, to) in [
            (t.node(1), "172.31.1.1"),
            (t.node(1), SeedTopology::vtep(2)),
            (t.node(2), NODE1_VTEP),
        ] {
            let stats = ping(from, to, 2, &[])?;
            ensure!(stats.received == 2, "{from} -> {to}: {stats:?}");
        }
        let after = link_stats(t.node(1), "eth0")?;
        ensure!(
            after.0 >= before.0 + 4 && after.1 >= before.1 + 4,
            "link_stats counted the pings: {before:?} -> {after:?}"
        );
        t.remove_container("c1")?;
        ensure!(!netns_path(&c).exists(), "remove_container deletes it");
    }
    assert_gone(&prefix)?;
    ensure!(
        ip("-br link")? == root_links,
        "the root namespace's links changed"
    );
    Ok(())
}

#[test]
fn the_underlay_mtu_is_an_option() -> Result<()> {
    let prefix = unique_prefix("tm");
    let t = SeedTopology::create(
        &prefix,
        TopologyOptions {
            underlay_mtu: 1400,
            ..Default::default()
        },
    )?;
    // 1372 bytes of ICMP payload + 28 of headers = 1400, unfragmented.
    let fits = ping(t.node(1), NODE2_VTEP, 1, &["-M", "do", "-s", "1372"])?;
    let too_big = ping(t.node(1), NODE2_VTEP, 1, &["-M", "do", "-s", "1373"])?;
    ensure!(
        fits.received == 1 && too_big.received == 0,
        "{fits:?} {too_big:?}"
    );
    drop(t);
    assert_gone(&prefix)
}

/// The wires' promises: with checksums, no frame on the wire exceeds the MTU (the
/// sender segments); with receive GRO as well, the receiving node's IP layer gets
/// those frames merged again, and without it one by one. Switched segments put
/// the router's links on bridges and still route.
#[test]
fn the_nic_like_wire_segments_at_the_sender_and_merges_at_the_receiver() -> Result<()> {
    for (receive_gro, switched) in [(false, false), (true, false), (true, true)] {
        let prefix = unique_prefix("tg");
        let t = SeedTopology::create(
            &prefix,
            TopologyOptions {
                wire_checksums: true,
                receive_gro,
                switched,
                ..Default::default()
            },
        )?;
        // What the router sends towards node2 is what the wire carries; a capture
        // on node2 itself would see the frames after GRO.
        let capture = Capture::start(t.router(), "r2")?;
        let before = ip_received(t.node(2))?;
        tcp_transfer(t.node(2), NODE2_VTEP, t.node(1), 20 << 20)?;
        let per_packet = ip_received(t.node(2))?.bytes_per_packet_since(&before);
        let largest = capture.stop()?.iter().map(Vec::len).max().unwrap_or(0);
        let label = format!("receive_gro {receive_gro}, switched {switched}");
        ensure!(
            (1000..=1514).contains(&largest),
            "{label}: the largest frame on the wire is {largest} bytes"
        );
        if receive_gro {
            ensure!(
                per_packet > 3000.0,
                "{label}: node2 received {per_packet:.0} bytes per packet: GRO merged nothing"
            );
        } else {
            ensure!(
                per_packet <= 1500.0,
                "{label}: node2 received {per_packet:.0} bytes per packet without GRO"
            );
        }
        let r1: serde_json::Value =
            serde_json::from_str(&ip(&format!("-n {} -j link show dev r1", t.router()))?)?;
        ensure!(
            (r1[0]["master"].as_str() == Some("brr1")) == switched,
            "{label}: r1 is {}",
            r1[0]
        );
        drop(t);
        assert_gone(&prefix)?;
    }
    Ok(())
}

#[test]
fn tcp_transfer_checks_every_byte() -> Result<()> {
    let prefix = unique_prefix("tx");
    let (a, b) = veth_pair(&prefix)?;
    let report = tcp_transfer(&b.name, "10.9.0.2", &a.name, 20 * 1024 * 1024 + 3)?;
    ensure!(report.bytes == 20 * 1024 * 1024 + 3, "{report:?}");
    eprintln!("{report:?}");
    // Nobody can listen on an address the server's namespace does not have.
    let started = Instant::now();
    let err = tcp_transfer(&b.name, "10.9.0.1", &a.name, 1).unwrap_err();
    ensure!(format!("{err:#}").contains("binding"), "{err:#}");
    ensure!(
        started.elapsed().as_secs() < 5,
        "a failed start returns at once"
    );
    drop((a, b));
    assert_gone(&prefix)
}

#[test]
fn capture_records_one_interface_both_ways() -> Result<()> {
    let prefix = unique_prefix("tc");
    let (a, b) = veth_pair(&prefix)?;
    let capture = Capture::start(&a.name, "x")?;
    let stats = ping(&a.name, "10.9.0.2", 3, &[])?;
    // Loopback traffic in the same namespace must not show up.
    ping(&a.name, "127.0.0.1", 1, &[])?;
    let frames = capture.stop()?;
    ensure!(stats.received == 3, "{stats:?}");
    let icmp_to = |dst: [u8; 4]| {
        frames
            .iter()
            .filter(|f| f.len() >= 34 && f[12..14] == [8, 0] && f[23] == 1 && f[30..34] == dst)
            .count()
    };
    ensure!(
        icmp_to([10, 9, 0, 2]) == 3 && icmp_to([10, 9, 0, 1]) == 3,
        "requests and replies, {} frames",
        frames.len()
    );
    ensure!(icmp_to([127, 0, 0, 1]) == 0, "no loopback frames");
    ensure!(frames.iter().any(|f| is_arp(f)), "the neighbour lookup");
    ensure!(
        Capture::start(&a.name, "nosuchdev").is_err(),
        "an unknown interface is an error"
    );
    drop((a, b));
    assert_gone(&prefix)
}

/// Two hosts built as in the seed article 002, with the kernel's VXLAN device:
/// their containers reach each other across the router, ARP is answered by the
/// proxy and never tunnelled, and the containers' MTU leaves room for the header.
#[test]
fn kernel_vxlan_nodes_join_their_containers() -> Result<()> {
    let prefix = unique_prefix("tk");
    let mut t = SeedTopology::create(&prefix, TopologyOptions::default())?;
    let (ip1, ip2) = (C1.ip, C2.ip);
    let c1 = t.container(C1.name)?.name.clone();
    let c2 = t.container(C2.name)?.name.clone();
    for node in [1, 2] {
        KernelVxlanNode::seed_node(&t, node, &[C1, C2])?;
    }

    let capture = Capture::start(t.node(1), "eth0")?;
    for (from, to) in [(&c1, ip2), (&c2, ip1)] {
        let stats = ping(from, &to.to_string(), 3, &[])?;
        ensure!(stats.received == 3, "{from} -> {to}: {stats:?}");
    }
    let frames = capture.stop()?;
    let inner: Vec<&[u8]> = frames.iter().filter_map(|f| vxlan_inner(f)).collect();
    ensure!(
        inner.len() >= 12,
        "{} VXLAN frames for 12 pings",
        inner.len()
    );
    ensure!(!inner.iter().any(|f| is_arp(f)), "ARP crossed the tunnel");
    ensure!(
        inner.iter().all(|f| f[12..14] == [8, 0] && f[23] == 1),
        "the tunnel carried only the pings"
    );

    let mtu = ip(&format!("-n {c1} -j link show eth0"))?;
    ensure!(mtu.contains("\"mtu\":1450"), "container MTU: {mtu}");
    let report = tcp_transfer(&c2, &ip2.to_string(), &c1, 10 * 1024 * 1024)?;
    eprintln!("kernel VXLAN: {report:?}");
    drop(t);
    assert_gone(&prefix)
}

/// A stand-in for `overlay agent --config FILE --pin-dir DIR --socket S
/// --state-dir D [MODE]`: it reports its network namespace on stderr, pins by
/// creating DIR, and behaves per MODE.
const STAND_IN: &str = r#"#!/bin/sh
pin="$5"
echo "netns inode $(stat -L -c %i /proc/self/ns/net)" >&2
case "${10}" in
fail) echo "config is bad: $3" >&2; exit 3 ;;
stubborn) trap '' TERM ;;
leaky) trap 'exit 0' TERM ;;
*) trap 'rmdir "$pin"; exit 0' TERM ;;
esac
mkdir "$pin"
echo ready
while :; do sleep 0.05; done
"#;

#[test]
fn agent_guard_starts_stops_and_cleans_up() -> Result<()> {
    let prefix = unique_prefix("ta");
    let node = Netns::create(&format!("{prefix}n"))?;
    let dir = TempDir::new(&prefix)?;
    let binary = write_config(dir.path(), "agent.sh", STAND_IN)?;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    let config = write_config(dir.path(), "node.toml", "")?;
    let pins = dir.path().join("pins");
    let start = |mode: &str| Agent::start(&node.name, &binary, &config, &pins, &[mode]);

    let agent = start("clean")?;
    let inode = format!(
        "netns inode {}",
        std::fs::metadata(netns_path(&node.name))?.ino()
    );
    // stderr is collected by a thread: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !agent.stderr().contains(&inode) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure!(
        agent.stderr().contains(&inode),
        "runs in the node's namespace: {}",
        agent.stderr()
    );
    ensure!(pins.exists(), "pinned while running");
    ensure!(agent.stop()?.success(), "a clean exit");
    ensure!(!pins.exists(), "the agent unpinned");

    let err = start("fail").err().expect("the stand-in fails");
    ensure!(
        format!("{err:#}").contains("config is bad"),
        "the error carries stderr: {err:#}"
    );
    let (status, stderr) =
        Agent::run_to_completion(&node.name, &binary, &config, &pins, &["fail"])?;
    ensure!(status.code() == Some(3) && stderr.contains("config is bad"));

    let err = start("leaky")?.stop().expect_err("a leak is an error");
    ensure!(format!("{err:#}").contains("left its pins"), "{err:#}");
    ensure!(!pins.exists(), "and the guard removed them");

    let stubborn = start("stubborn")?;
    let started = Instant::now();
    drop(stubborn);
    ensure!(
        started.elapsed().as_secs() >= 9 && !pins.exists(),
        "SIGTERM, then SIGKILL after 10 s, then the pins removed"
    );
    drop(node);
    assert_gone(&prefix)
}
