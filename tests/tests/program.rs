//! Program tests: the loaded eBPF programs run on crafted frames through
//! BPF_PROG_TEST_RUN, and every output byte, verdict and counter is checked.
//!
//! The programs run in the fixture's scratch namespace (see `fixture`).

mod fixture;

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result, ensure};
use overlay_common::{FDB_KIND_LOCAL, FDB_KIND_REMOTE, program_names};
use overlay_tests::{
    prog_run::{eth, ipv4_checksum, ipv4_udp, skb_ctx, test_run},
    scenario::UBER_NET,
    sh,
};
use overlay_userspace::{
    dataplane::{
        programs,
        reconcile::{Prune, reconcile_with},
    },
    host::netns::{NetnsGuard, netns_path},
    model::gateway_mac,
};

use fixture::*;

#[test]
fn encapsulation_writes_every_outer_field() -> Result<()> {
    let mut fx = Fixture::new()?;
    let inner = inner_frame(C1_IP, C2_IP, mac_of(C2_IP));
    let out = fx.run(program_names::ENDPOINT_INGRESS, &inner, fx.ep0)?;
    out.expect(TC_ACT_REDIRECT, "encap");
    let f = &out.frame;
    assert_eq!(f.len(), inner.len() + 50, "outer headers are 50 bytes");
    // Ethernet: next hop from the FIB, source the underlay's MAC.
    assert_eq!(
        f[0..6],
        GATEWAY_MAC,
        "outer destination MAC is the gateway's"
    );
    assert_eq!(
        f[6..12],
        fx.underlay_mac,
        "outer source MAC is the underlay's"
    );
    assert_eq!(f[12..14], [0x08, 0x00]);
    // IPv4.
    let ip = &f[14..34];
    assert_eq!(ip[0], 0x45, "version 4, no options");
    assert_eq!(ip[1], 0, "TOS");
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        inner.len() + 36,
        "total length"
    );
    assert_eq!(
        ip[4..6],
        [0, 0],
        "ID 0: DF is set, the datagram is atomic (RFC 6864)"
    );
    assert_eq!(ip[6..8], [0x40, 0x00], "DF, no fragment offset");
    assert_eq!(ip[8], 64, "TTL");
    assert_eq!(ip[9], 17, "UDP");
    assert_eq!(ipv4_checksum(ip), 0, "header checksum must verify");
    assert_eq!(ip[12..16], LOCAL_VTEP.octets());
    assert_eq!(ip[16..20], REMOTE_VTEP.octets());
    // UDP.
    let udp = &f[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!(
        (SOURCE_PORTS[0]..=SOURCE_PORTS[1]).contains(&sport),
        "source port {sport} outside the range"
    );
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        inner.len() + 16,
        "UDP length"
    );
    assert_eq!(udp[6..8], [0, 0], "UDP checksum 0 over IPv4 (RFC 7348)");
    // VXLAN: I flag, VNI 4097 = 0x001001.
    assert_eq!(f[42..50], [0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0]);
    assert_eq!(&f[50..], &inner[..], "inner frame unchanged");

    // The same flow always maps to the same source port (ECMP keeps flows on one path).
    let again = fx.run(program_names::ENDPOINT_INGRESS, &inner, fx.ep0)?;
    assert_eq!(again.frame[34..36], f[34..36]);
    Ok(())
}

#[test]
fn decapsulation_returns_the_inner_frame_unchanged() -> Result<()> {
    let mut fx = Fixture::new()?;
    let inner = inner_frame(C2_IP, C1_IP, mac_of(C1_IP));
    let frame = vxlan_frame(REMOTE_VTEP, VNI, 0x08, &inner);
    for prog in [
        program_names::UNDERLAY_INGRESS_TC,
        program_names::UNDERLAY_XDP,
    ] {
        let out = fx.run(prog, &frame, fx.uplink)?;
        let verdict = if prog == program_names::UNDERLAY_XDP {
            XDP_REDIRECT
        } else {
            TC_ACT_REDIRECT
        };
        out.expect(verdict, "decap");
        assert_eq!(
            out.frame, inner,
            "{prog}: output must be exactly the inner frame"
        );
    }
    Ok(())
}

#[test]
fn proxy_arp_answers_from_neigh() -> Result<()> {
    let mut fx = Fixture::new()?;
    // c1 asks for c2 (remote) and c3 (local): both answered, neither flooded.
    for target in [C2_IP, C3_IP] {
        let out = fx.run(
            program_names::ENDPOINT_INGRESS,
            &arp_request(C1_IP, target),
            fx.ep0,
        )?;
        out.expect(TC_ACT_REDIRECT, "arp_reply");
        let expected = eth(
            mac_of(C1_IP),
            mac_of(target),
            0x0806,
            &arp(2, mac_of(target), target, mac_of(C1_IP), C1_IP),
        );
        assert_eq!(out.frame, expected, "ARP reply for {target}");
    }
    Ok(())
}

#[test]
fn the_gateway_is_answered_from_the_maps_and_its_frames_go_to_the_host() -> Result<()> {
    let mut fx = Fixture::new()?;
    let (gw, gw_mac) = (UBER_NET.gateway(), gateway_mac(UBER_NET.gateway()).0);
    let out = fx.run(
        program_names::ENDPOINT_INGRESS,
        &arp_request(C1_IP, gw),
        fx.ep0,
    )?;
    out.expect(TC_ACT_REDIRECT, "arp_reply");
    let expected = eth(
        mac_of(C1_IP),
        gw_mac,
        0x0806,
        &arp(2, gw_mac, gw, mac_of(C1_IP), C1_IP),
    );
    assert_eq!(out.frame, expected, "ARP reply for the gateway");
    // A packet for the world outside, to the gateway's MAC: to the host stack,
    // untouched.
    let outside = Ipv4Addr::new(203, 0, 113, 10);
    let frame = inner_frame(C1_IP, outside, gw_mac);
    let out = fx.run(program_names::ENDPOINT_INGRESS, &frame, fx.ep0)?;
    out.expect(TC_ACT_OK, "to_gateway");
    assert_eq!(out.frame, frame);
    // From the tunnel, the gateway's MAC is nobody's to deliver to.
    let tunnelled = vxlan_frame(REMOTE_VTEP, VNI, 0x08, &inner_frame(C2_IP, outside, gw_mac));
    fx.run(program_names::UNDERLAY_INGRESS_TC, &tunnelled, fx.uplink)?
        .expect(TC_ACT_SHOT, "drop_not_local");
    fx.run(
        program_names::UNDERLAY_INGRESS_TC,
        &vxlan_frame(REMOTE_VTEP, VNI, 0x08, &arp_request(C2_IP, gw)),
        fx.uplink,
    )?
    .expect(TC_ACT_SHOT, "drop_not_local");
    Ok(())
}

#[test]
fn local_destinations_are_switched_without_encapsulation() -> Result<()> {
    let mut fx = Fixture::new()?;
    let frame = inner_frame(C1_IP, C3_IP, mac_of(C3_IP));
    let out = fx.run(program_names::ENDPOINT_INGRESS, &frame, fx.ep0)?;
    out.expect(TC_ACT_REDIRECT, "local_delivery");
    assert_eq!(out.frame, frame);
    Ok(())
}

#[test]
fn tunnel_arp_for_a_local_endpoint_is_delivered_not_flooded() -> Result<()> {
    let mut fx = Fixture::new()?;
    let request = arp_request(C2_IP, C1_IP);
    let frame = vxlan_frame(REMOTE_VTEP, VNI, 0x08, &request);
    let out = fx.run(program_names::UNDERLAY_INGRESS_TC, &frame, fx.uplink)?;
    out.expect(TC_ACT_REDIRECT, "tunnel_arp_delivered");
    assert_eq!(out.frame, request);
    // For an address nobody here owns: dropped.
    let stray = vxlan_frame(
        REMOTE_VTEP,
        VNI,
        0x08,
        &arp_request(C2_IP, Ipv4Addr::new(10, 0, 0, 99)),
    );
    fx.run(program_names::UNDERLAY_XDP, &stray, fx.uplink)?
        .expect(XDP_DROP, "drop_not_local");
    Ok(())
}

#[test]
fn endpoint_drop_reasons_each_count_once() -> Result<()> {
    let mut fx = Fixture::new()?;
    let c1 = mac_of(C1_IP);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "drop_spoofed_mac",
            eth(
                mac_of(C2_IP),
                [0x02, 0x42, 1, 2, 3, 4],
                0x0800,
                &ipv4_udp(C1_IP, C2_IP, 1, 2, b"x"),
            ),
            fx.ep0,
        ),
        (
            "drop_spoofed_ip",
            eth(
                mac_of(C2_IP),
                c1,
                0x0800,
                &ipv4_udp(Ipv4Addr::new(10, 0, 0, 66), C2_IP, 1, 2, b"x"),
            ),
            fx.ep0,
        ),
        (
            "drop_spoofed_ip",
            eth(
                [0xff; 6],
                c1,
                0x0806,
                &arp(1, c1, Ipv4Addr::new(10, 0, 0, 66), [0; 6], C2_IP),
            ),
            fx.ep0,
        ),
        (
            "drop_spoofed_mac",
            eth(
                [0xff; 6],
                c1,
                0x0806,
                &arp(1, [0x02, 0x42, 1, 2, 3, 4], C1_IP, [0; 6], C2_IP),
            ),
            fx.ep0,
        ),
        (
            "drop_arp_miss",
            arp_request(C1_IP, Ipv4Addr::new(10, 0, 0, 99)),
            fx.ep0,
        ),
        ("drop_flood", arp_request(C1_IP, C1_IP), fx.ep0),
        (
            "drop_flood",
            eth(
                [0xff; 6],
                c1,
                0x0800,
                &ipv4_udp(C1_IP, Ipv4Addr::new(10, 0, 0, 255), 1, 2, b"x"),
            ),
            fx.ep0,
        ),
        (
            "drop_unsupported",
            eth(mac_of(C2_IP), c1, 0x86dd, &[0u8; 40]),
            fx.ep0,
        ),
        (
            "drop_no_fdb",
            inner_frame(C1_IP, C2_IP, [0x02, 0x42, 10, 0, 0, 99]),
            fx.ep0,
        ),
        (
            "drop_unknown_endpoint",
            inner_frame(C1_IP, C2_IP, mac_of(C2_IP)),
            fx.uplink,
        ),
    ];
    for (counter, frame, ifindex) in cases {
        fx.run(program_names::ENDPOINT_INGRESS, &frame, ifindex)?
            .expect(TC_ACT_SHOT, counter);
    }
    Ok(())
}

#[test]
fn underlay_drop_reasons_each_count_once_in_both_variants() -> Result<()> {
    let mut fx = Fixture::new()?;
    let to_c1 = inner_frame(C2_IP, C1_IP, mac_of(C1_IP));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "drop_vxlan_flags",
            vxlan_frame(REMOTE_VTEP, VNI, 0x00, &to_c1),
        ),
        (
            "drop_unknown_vtep",
            vxlan_frame(Ipv4Addr::new(10, 9, 9, 9), VNI, 0x08, &to_c1),
        ),
        (
            "drop_not_local",
            vxlan_frame(
                REMOTE_VTEP,
                VNI,
                0x08,
                &inner_frame(C1_IP, C2_IP, mac_of(C2_IP)),
            ),
        ),
        (
            "drop_not_local",
            vxlan_frame(REMOTE_VTEP, OTHER_VNI, 0x08, &to_c1),
        ),
        (
            "drop_malformed",
            vxlan_frame(REMOTE_VTEP, VNI, 0x08, &[0x02, 0x42, 0, 0]),
        ),
        // An Ethernet header for c1 and fewer than 20 bytes after it: TC decap
        // once dropped it as drop_error, XDP delivered it (the property tests).
        (
            "drop_malformed",
            vxlan_frame(REMOTE_VTEP, VNI, 0x08, &to_c1[..14 + 19]),
        ),
    ];
    for (prog, drop) in [
        (program_names::UNDERLAY_INGRESS_TC, TC_ACT_SHOT),
        (program_names::UNDERLAY_XDP, XDP_DROP),
    ] {
        for (counter, frame) in &cases {
            fx.run(prog, frame, fx.uplink)?.expect(drop, counter);
        }
    }
    Ok(())
}

#[test]
fn traffic_that_is_not_ours_passes_untouched() -> Result<()> {
    let mut fx = Fixture::new()?;
    let to_c1 = inner_frame(C2_IP, C1_IP, mac_of(C1_IP));
    let unserved_vni = vxlan_frame(REMOTE_VTEP, 777, 0x08, &to_c1);
    let mut other_port = unserved_vni.clone();
    other_port[36..38].copy_from_slice(&4790u16.to_be_bytes());
    let plain_udp = eth(
        [0x02, 0, 0, 0, 0, 5],
        GATEWAY_MAC,
        0x0800,
        &ipv4_udp(REMOTE_VTEP, LOCAL_VTEP, 5, 53, b"dns?"),
    );
    let cases: [(&Vec<u8>, Option<&str>); 3] = [
        (&unserved_vni, Some("pass_unknown_vni")),
        (&other_port, None),
        (&plain_udp, None),
    ];
    for (prog, pass) in [
        (program_names::UNDERLAY_INGRESS_TC, TC_ACT_OK),
        (program_names::UNDERLAY_XDP, XDP_PASS),
    ] {
        for (frame, counter) in &cases {
            let out = fx.run(prog, frame, fx.uplink)?;
            assert_eq!(out.retval, pass, "{prog}: must pass");
            assert_eq!(&out.frame, *frame, "{prog}: must be untouched");
            let expected: BTreeMap<&str, u64> = counter.iter().map(|c| (*c, 1)).collect();
            assert_eq!(out.moved, expected, "{prog}: counters");
        }
    }
    Ok(())
}

/// Per-program cost and verifier figures. Paths that rewrite the packet are timed
/// as single runs (with repeat > 1 the kernel would rerun the program on its own
/// output); the kernel's own clock measures each run.
#[test]
fn program_costs_are_measured() -> Result<()> {
    let mut fx = Fixture::new()?;
    let mut report = String::from("program costs (BPF_PROG_TEST_RUN, this machine):\n");
    let to_c2 = inner_frame(C1_IP, C2_IP, mac_of(C2_IP));
    let from_c2 = vxlan_frame(
        REMOTE_VTEP,
        VNI,
        0x08,
        &inner_frame(C2_IP, C1_IP, mac_of(C1_IP)),
    );
    let local = inner_frame(C1_IP, C3_IP, mac_of(C3_IP));
    let cases: [(&str, &str, &Vec<u8>, u32); 5] = [
        ("encap", program_names::ENDPOINT_INGRESS, &to_c2, fx.ep0),
        (
            "local_delivery",
            program_names::ENDPOINT_INGRESS,
            &local,
            fx.ep0,
        ),
        (
            "decap (tc)",
            program_names::UNDERLAY_INGRESS_TC,
            &from_c2,
            fx.uplink,
        ),
        (
            "decap (xdp)",
            program_names::UNDERLAY_XDP,
            &from_c2,
            fx.uplink,
        ),
        (
            "arp_reply",
            program_names::ENDPOINT_INGRESS,
            &arp_request(C1_IP, C2_IP),
            fx.ep0,
        ),
    ];
    let path = netns_path(&fx.scratch.ns.name);
    for (label, prog, frame, ifindex) in cases {
        let fd = fx.prog_fd(prog)?;
        let ctx = (prog != program_names::UNDERLAY_XDP).then(|| skb_ctx(ifindex));
        let mut samples = Vec::new();
        {
            let _inside = NetnsGuard::enter(&path)?;
            for _ in 0..5000 {
                samples.push(test_run(fd, frame, ctx.as_ref(), 1)?.2);
            }
        }
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        ensure!(median > 0, "{label}: the kernel measured no time");
        report += &format!(
            "  {label:<15} median {median:>5} ns/packet over {} runs\n",
            samples.len()
        );
    }
    // Local delivery leaves the packet as it was, so the kernel's repeat loop applies.
    let fd = fx.prog_fd(program_names::ENDPOINT_INGRESS)?;
    let (_, _, mean) = {
        let _inside = NetnsGuard::enter(&path)?;
        test_run(fd, &local, Some(&skb_ctx(fx.ep0)), 100_000)?
    };
    report += &format!("  local_delivery  mean {mean:>5} ns/packet over repeat=100000\n");
    for name in [
        program_names::ENDPOINT_INGRESS,
        program_names::UNDERLAY_INGRESS_TC,
        program_names::UNDERLAY_XDP,
        program_names::ENDPOINT_PEER_XDP,
    ] {
        let ebpf = fx.programs.ebpf_mut();
        let info = if name.contains("xdp") {
            programs::xdp(ebpf, name)?.info()?
        } else {
            programs::classifier(ebpf, name)?.info()?
        };
        let insns = info
            .verified_instruction_count()
            .context("kernel did not report verified instructions")?;
        report += &format!("  {name:<18} verifier processed {insns} instructions\n");
    }
    eprintln!("{report}");
    Ok(())
}

/// Encapsulation remembers the next hop per VTEP for a second instead of asking
/// the FIB for every packet: a remembered hop writes the same frame, and a
/// neighbour change is picked up once the second is over.
#[test]
fn the_next_hop_is_remembered_for_a_second_only() -> Result<()> {
    let mut fx = Fixture::new()?;
    let inner = inner_frame(C1_IP, C2_IP, mac_of(C2_IP));
    let first = fx.run(program_names::ENDPOINT_INGRESS, &inner, fx.ep0)?;
    first.expect(TC_ACT_REDIRECT, "encap");
    let cached = fx.run(program_names::ENDPOINT_INGRESS, &inner, fx.ep0)?;
    cached.expect(TC_ACT_REDIRECT, "encap");
    assert_eq!(
        cached.frame, first.frame,
        "a remembered hop writes the same frame"
    );

    let new_gateway_mac = [0x02, 0, 0, 0, 0, 0x02];
    sh(&format!(
        "ip -n {} neigh replace 172.31.1.1 lladdr 02:00:00:00:00:02 dev uplink nud permanent",
        fx.scratch.ns.name
    ))?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let later = fx.run(program_names::ENDPOINT_INGRESS, &inner, fx.ep0)?;
    later.expect(TC_ACT_REDIRECT, "encap");
    assert_eq!(
        later.frame[0..6],
        new_gateway_mac,
        "the FIB is asked again after a second"
    );
    assert_eq!(later.frame[6..], first.frame[6..], "nothing else changes");
    Ok(())
}

/// With the next hop remembered, lengths and the IPv4 checksum still follow each
/// frame: frames of every size come out as the first, FIB-routed one did.
#[test]
fn a_remembered_next_hop_serves_frames_of_every_length() -> Result<()> {
    let mut fx = Fixture::new()?;
    let fresh = fx.run(
        program_names::ENDPOINT_INGRESS,
        &inner_frame(C1_IP, C2_IP, mac_of(C2_IP)),
        fx.ep0,
    )?;
    fresh.expect(TC_ACT_REDIRECT, "encap");
    for payload in [0usize, 1, 2, 255, 256, 1000, 1422] {
        let inner = eth(
            mac_of(C2_IP),
            mac_of(C1_IP),
            0x0800,
            &ipv4_udp(C1_IP, C2_IP, 40000, 7777, &vec![0xa5; payload]),
        );
        let out = fx.run(program_names::ENDPOINT_INGRESS, &inner, fx.ep0)?;
        out.expect(TC_ACT_REDIRECT, "encap");
        let f = &out.frame;
        assert_eq!(f.len(), inner.len() + 50, "payload {payload}");
        assert_eq!(
            usize::from(u16::from_be_bytes([f[16], f[17]])),
            inner.len() + 36,
            "payload {payload}: IPv4 total length"
        );
        assert_eq!(
            ipv4_checksum(&f[14..34]),
            0,
            "payload {payload}: IPv4 checksum"
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([f[38], f[39]])),
            inner.len() + 16,
            "payload {payload}: UDP length"
        );
        // Everything but lengths and checksum is the first packet's.
        let fixed = |f: &[u8]| [&f[0..16], &f[18..24], &f[26..38], &f[40..50]].concat();
        assert_eq!(fixed(f), fixed(&fresh.frame), "payload {payload}");
        assert_eq!(&f[50..], &inner[..], "payload {payload}: inner frame");
    }
    Ok(())
}

/// A pass that diffs against what the previous one wrote reads no map: an
/// entry removed behind the agent's back stays missing until a pass that reads
/// them (the agent's periodic one) puts it back, and removing an entry that is
/// already gone is no error.
#[test]
fn a_pass_from_what_was_written_reads_no_map_and_a_read_repairs() -> Result<()> {
    let mut fx = Fixture::new()?;
    let written = fx.tables.clone();
    let kind_of = |kind| {
        written
            .fdb
            .iter()
            .find(|(_, e)| e.kind == kind)
            .map(|(k, _)| *k)
            .with_context(|| format!("no FDB entry of kind {kind}"))
    };
    let (remote, local) = (kind_of(FDB_KIND_REMOTE)?, kind_of(FDB_KIND_LOCAL)?);

    // The remote entry is withdrawn, but someone removed it already; and a
    // network is new.
    fx.maps.fdb.remove(&remote)?;
    let mut want = written.clone();
    want.fdb.remove(&remote);
    want.networks.insert(
        NEW_VNI,
        overlay_common::Network {
            mtu: 1400,
            flags: 0,
        },
    );
    let pass = reconcile_with(&mut fx.maps, &want, Prune::All, Some(&written))?;
    ensure!(
        (pass.added, pass.updated, pass.removed) == (1, 0, 0),
        "from what was written: {pass}"
    );
    ensure!(
        fx.maps.networks.get(&NEW_VNI, 0).is_ok(),
        "the new network is missing"
    );

    // Removed behind the agent's back: unseen by a pass from what was written...
    fx.maps.fdb.remove(&local)?;
    let pass = reconcile_with(&mut fx.maps, &want, Prune::All, Some(&want))?;
    ensure!(pass.is_empty(), "a pass from what was written did {pass}");
    ensure!(
        fx.maps.fdb.get(&local, 0).is_err(),
        "the entry came back unread"
    );
    // ...and repaired by one that reads the maps.
    let pass = reconcile_with(&mut fx.maps, &want, Prune::All, None)?;
    ensure!(
        (pass.added, pass.updated, pass.removed) == (1, 0, 0),
        "the reading pass: {pass}"
    );
    ensure!(
        fx.maps.fdb.get(&local, 0)? == want.fdb[&local],
        "the local entry is not repaired"
    );
    Ok(())
}

/// A network the fixture does not define.
const NEW_VNI: u32 = 7777;
