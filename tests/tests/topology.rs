//! Topology tests on the seed's shape: two hosts on separate L2 segments joined by
//! a router, containers behind each, two networks with different VNIs on one
//! subnet. Each test runs once per decap variant.

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Capture, Decap, NODE1_VTEP, NODE2_VTEP, Overlay, TopologyOptions, VXLAN_PORT, in_netns, inject,
    is_arp, is_vxlan, ping,
    prog_run::{eth, ipv4_udp, with_udp_checksum},
    scenario::{C1, C2, C3, C4, C5},
    sh, vxlan_inner,
};
use overlay_userspace::{
    host::{ethtool, tunnel_gro},
    model::Mac,
};

fn ping_both_ways(decap: Decap) -> Result<()> {
    Overlay::start(decap)?.ping_both_ways(C1, C2, 5)
}

fn tcp_transfer_of_50_mb_arrives_intact(decap: Decap) -> Result<()> {
    Overlay::start(decap)?.transfer_both_ways(C1, C2, 50 * 1024 * 1024)
}

fn local_switching_never_reaches_the_underlay(decap: Decap) -> Result<()> {
    let o = Overlay::start(decap)?;
    let capture = Capture::start(&o.node_ns(1), "eth0")?;
    let stats = ping(&o.ns(C1), &C3.ip.to_string(), 20, &["-i", "0.05"])?;
    let frames = capture.stop()?;
    ensure!(stats.received == 20, "c1 -> c3: {stats:?}");
    let vxlan = frames.iter().filter(|f| is_vxlan(f, VXLAN_PORT)).count();
    ensure!(
        vxlan == 0,
        "{vxlan} VXLAN frames on node1's underlay during local traffic"
    );
    // 20 requests c1 -> c3 and 20 replies c3 -> c1, all switched in place.
    let local = o.counter(1, "local_delivery")?;
    ensure!(
        local >= 40,
        "local_delivery is {local}, expected at least 40"
    );
    ensure!(o.counter(1, "encap")? == 0, "nothing may be encapsulated");
    Ok(())
}

fn no_overlay_arp_crosses_the_underlay(decap: Decap) -> Result<()> {
    let o = Overlay::start(decap)?;
    let captures = [
        Capture::start(&o.node_ns(1), "eth0")?,
        Capture::start(&o.node_ns(2), "eth0")?,
    ];
    for (from, to) in [(C1, C2), (C2, C1)] {
        let stats = ping(&o.ns(from), &to.ip.to_string(), 3, &[])?;
        ensure!(
            stats.received == 3,
            "{} -> {}: {stats:?}",
            from.name,
            to.name
        );
    }
    for capture in captures {
        let frames = capture.stop()?;
        let tunnelled = frames.iter().filter(|f| is_vxlan(f, VXLAN_PORT)).count();
        ensure!(
            tunnelled > 0,
            "the capture saw no VXLAN at all: it proves nothing"
        );
        let tunnelled_arp = frames
            .iter()
            .filter_map(|f| vxlan_inner(f))
            .filter(|inner| is_arp(inner))
            .count();
        ensure!(
            tunnelled_arp == 0,
            "{tunnelled_arp} ARP frames crossed the underlay inside VXLAN"
        );
        // The hosts resolve their gateway on the underlay; that is not overlay ARP.
        let overlay_arp = frames
            .iter()
            .filter(|f| is_arp(f) && f.len() >= 42 && (f[28] == 10 || f[38] == 10))
            .count();
        ensure!(
            overlay_arp == 0,
            "{overlay_arp} ARP frames for overlay addresses on the underlay"
        );
    }
    ensure!(
        o.counter(1, "arp_reply")? >= 1 && o.counter(2, "arp_reply")? >= 1,
        "ARP was answered locally"
    );
    Ok(())
}

fn vnis_are_isolated(decap: Decap) -> Result<()> {
    let o = Overlay::start(decap)?;
    // c4 (on the same node) and c5 are in other-net: c1 (uber-net) sends to
    // them through its gateway, and the host must not route between overlay
    // networks, though it has a route to c4.
    for other in [C4, C5] {
        let stats = ping(&o.ns(C1), &other.ip.to_string(), 2, &[])?;
        ensure!(
            stats.received == 0,
            "c1 reached {} in another network through the host: {stats:?}",
            other.name
        );
    }
    ensure!(
        o.counter(1, "to_gateway")? >= 4,
        "the pings must have gone to uber-net's gateway"
    );
    // Even on-link and knowing c5's MAC, c1 cannot send to it: uber-net's FDB
    // has no such MAC.
    sh(&format!(
        "ip -n {ns} route add {ip}/32 dev eth0 && ip -n {ns} neigh replace {ip} lladdr {mac} dev eth0",
        ns = o.ns(C1),
        ip = C5.ip,
        mac = C5.mac()
    ))?;
    let stats = ping(&o.ns(C1), &C5.ip.to_string(), 2, &[])?;
    ensure!(
        stats.received == 0,
        "c1 reached c5 across VNIs with a static neighbour: {stats:?}"
    );
    ensure!(
        o.counter(1, "drop_no_fdb")? >= 2,
        "frames to another VNI's MAC must be dropped"
    );
    ensure!(
        o.counter(2, "decap")? == 0,
        "nothing may have reached node2"
    );
    // And within each network traffic still flows.
    ensure!(
        ping(&o.ns(C1), &C2.ip.to_string(), 2, &[])?.received == 2,
        "uber-net is broken"
    );
    Ok(())
}

fn full_size_inner_packet_with_df_passes(decap: Decap) -> Result<()> {
    let o = Overlay::start(decap)?;
    // 1450 (container MTU) - 20 (IPv4) - 8 (ICMP) = 1422 bytes of payload, DF set.
    let capture = Capture::start(&o.node_ns(1), "eth0")?;
    let stats = ping(
        &o.ns(C1),
        &C2.ip.to_string(),
        3,
        &["-M", "do", "-s", "1422"],
    )?;
    let frames = capture.stop()?;
    ensure!(stats.received == 3, "full-size DF ping failed: {stats:?}");
    let largest = frames
        .iter()
        .filter(|f| is_vxlan(f, VXLAN_PORT))
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    ensure!(
        largest == 1514,
        "the largest outer frame is {largest} bytes; 1514 fills a 1500 MTU underlay exactly"
    );
    // One byte more cannot leave the container: the MTU is right, not a black hole.
    ensure!(
        ping(
            &o.ns(C1),
            &C2.ip.to_string(),
            1,
            &["-M", "do", "-s", "1423"]
        )?
        .received
            == 0,
        "oversize passed"
    );
    Ok(())
}

fn counters_match_the_traffic(decap: Decap) -> Result<()> {
    const N: u64 = 10;
    let o = Overlay::start(decap)?;
    let stats = ping(&o.ns(C1), &C2.ip.to_string(), N as u32, &["-i", "0.05"])?;
    ensure!(stats.received == N, "{stats:?}");
    // Each side: N echo frames out (encap) and N in (decap), and one ARP answered
    // locally (c1 asks for c2 before the first request; c2 for c1 before the
    // first reply). Nothing else.
    for node in [1, 2] {
        let mut counters = o.nonzero_counters(node)?;
        counters.retain(|(name, _)| name != "encap_neigh_resolve");
        counters.sort();
        let expected = vec![
            ("arp_reply".to_owned(), 1),
            ("decap".to_owned(), N),
            ("encap".to_owned(), N),
        ];
        ensure!(
            counters == expected,
            "node{node} counters {counters:?}, expected {expected:?}"
        );
    }
    Ok(())
}

macro_rules! per_decap_mode {
    ($($name:ident),* $(,)?) => {
        mod tc {
            $( #[test] fn $name() -> anyhow::Result<()> { super::$name(overlay_tests::Decap::Tc) } )*
        }
        mod xdp {
            $( #[test] fn $name() -> anyhow::Result<()> { super::$name(overlay_tests::Decap::Xdp) } )*
        }
    };
}

per_decap_mode!(
    ping_both_ways,
    tcp_transfer_of_50_mb_arrives_intact,
    local_switching_never_reaches_the_underlay,
    no_overlay_arp_crosses_the_underlay,
    vnis_are_isolated,
    full_size_inner_packet_with_df_passes,
    counters_match_the_traffic,
);

/// The NIC-like wire: segmented at the sender, merged by NAPI GRO at the receiver.
fn nic_like_wire() -> TopologyOptions {
    TopologyOptions {
        wire_checksums: true,
        receive_gro: true,
        ..Default::default()
    }
}

/// On a wire whose receiver merges with GRO, the agent's tunnel socket lets GRO
/// merge VXLAN frames too, so TC decap handles one packet per burst instead of
/// one per segment, and the merged stream still arrives byte for byte. The
/// socket's device goes with the agent.
#[test]
fn tunnelled_tcp_is_merged_before_tc_decap_on_a_nic_like_wire() -> Result<()> {
    let mut o = Overlay::start_on(Decap::Tc, nic_like_wire())?;
    // What the agent reads to warn of an underlay that merges nothing.
    let gro = |ns: String, dev: &'static str| {
        in_netns(&ns, move || ethtool::gro_enabled(dev))
            .join()
            .expect("the thread ran")
    };
    ensure!(
        gro(o.node_ns(2), "eth0")?,
        "node2's eth0 merges on this wire"
    );
    ensure!(
        !gro(o.topology.router().to_owned(), "r2")?,
        "the router's r2 does not"
    );
    let device = tunnel_gro::device_name(VXLAN_PORT);
    for node in [1, 2] {
        ensure!(
            sh(&format!(
                "ip -n {} -d link show dev {device}",
                o.node_ns(node)
            ))?
            .contains("vnifilter"),
            "node{node} has no {device}"
        );
    }
    let before = o.counter_with_bytes(2, "decap")?;
    o.transfer_both_ways(C1, C2, 50 * 1024 * 1024)?;
    let after = o.counter_with_bytes(2, "decap")?;
    let per_packet = (after.1 - before.1) as f64 / (after.0 - before.0).max(1) as f64;
    ensure!(
        per_packet > 3000.0,
        "node2 decapsulated {per_packet:.0} bytes per packet: nothing was merged"
    );
    let drops: Vec<_> = [1, 2]
        .into_iter()
        .flat_map(|n| o.nonzero_counters(n).unwrap_or_default())
        .filter(|(name, _)| name.starts_with("drop_"))
        .collect();
    ensure!(drops.is_empty(), "drops: {drops:?}");
    o.agents.clear();
    ensure!(
        !sh(&format!("ip -n {} link show", o.node_ns(2)))?.contains(&device),
        "{device} outlived the agent"
    );
    Ok(())
}

/// Decap keeps what GRO verified, less the outer UDP checksum it removes. A
/// tunnelled datagram whose inner UDP checksum is wrong must still be caught by
/// the container's stack, and a correct one delivered.
#[test]
fn a_tunnelled_datagram_with_a_bad_inner_checksum_is_dropped_on_a_nic_like_wire() -> Result<()> {
    const PORT: u16 = 7300;
    let o = Overlay::start_on(Decap::Tc, nic_like_wire())?;
    o.ping_both_ways(C1, C2, 1)?;
    let mac = |ns: &str, dev: &str| -> Result<[u8; 6]> {
        let link: serde_json::Value =
            serde_json::from_str(&sh(&format!("ip -n {ns} -j link show dev {dev}"))?)?;
        let text = link[0]["address"].as_str().context("no address")?;
        Ok(text.parse::<Mac>().map_err(anyhow::Error::msg)?.0)
    };
    let (node2_mac, r2_mac) = (mac(&o.node_ns(2), "eth0")?, mac(o.topology.router(), "r2")?);
    let datagram = |payload: &[u8], corrupt: bool| {
        let mut inner = with_udp_checksum(ipv4_udp(C1.ip, C2.ip, 40000, PORT, payload));
        if corrupt {
            inner[27] ^= 0x01;
        }
        let mut vxlan = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0];
        vxlan.extend(eth(
            Mac::from_ipv4(C2.ip).0,
            Mac::from_ipv4(C1.ip).0,
            0x0800,
            &inner,
        ));
        eth(
            node2_mac,
            r2_mac,
            0x0800,
            &ipv4_udp(
                NODE1_VTEP.parse().expect("an address"),
                NODE2_VTEP.parse().expect("an address"),
                50000,
                VXLAN_PORT,
                &vxlan,
            ),
        )
    };
    let addr = std::net::SocketAddr::from((C2.ip, PORT));
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let receiver = in_netns(&o.ns(C2), move || -> Result<Vec<Vec<u8>>> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        bound_tx.send(()).ok();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        Ok(got)
    });
    bound_rx.recv_timeout(std::time::Duration::from_secs(5))?;
    let errors_before = udp_in_csum_errors(&o.ns(C2))?;
    inject(
        o.topology.router(),
        "r2",
        vec![datagram(b"bad", true), datagram(b"good", false)],
    )?;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(
        got == vec![b"good".to_vec()],
        "the container received {got:?}: only the good datagram may arrive"
    );
    ensure!(
        udp_in_csum_errors(&o.ns(C2))? == errors_before + 1,
        "the bad datagram must count as a checksum error in the container"
    );
    ensure!(o.counter(2, "decap")? >= 2, "both went through decap");
    Ok(())
}

/// `Udp: InCsumErrors` of a namespace.
fn udp_in_csum_errors(ns: &str) -> Result<u64> {
    let snmp = sh(&format!("ip netns exec {ns} cat /proc/net/snmp"))?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().context("no Udp:")?,
        udp.next().context("no Udp:")?,
    );
    let at = names
        .split_whitespace()
        .position(|n| n == "InCsumErrors")
        .context("no InCsumErrors")?;
    values
        .split_whitespace()
        .nth(at)
        .context("short Udp: line")?
        .parse()
        .context("InCsumErrors")
}
