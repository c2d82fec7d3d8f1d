//! Program tests: the loaded eBPF programs run on crafted frames through
//! BPF_PROG_TEST_RUN, and every output byte, verdict and counter is checked.
//!
//! The programs run inside a scratch network namespace holding an "underlay" with a
//! permanent neighbour for its gateway (so the FIB lookup during encapsulation gives
//! a known next-hop MAC) and two endpoint veths.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result, ensure};
use aya::Ebpf;
use overlay_common::{CONFIG_F_READY, Config, Counter, program_names};
use overlay_tests::{
    Netns,
    prog_run::{eth, ipv4_checksum, ipv4_udp, skb_ctx, test_run},
    scenario::{C1, C2, C3, OTHER_NET, UBER_NET},
    sh, unique_prefix,
};
use overlay_userspace::{
    dataplane::{
        ebpf_object,
        maps::Maps,
        pins,
        programs::{self, Programs},
        reconcile::{Tables, reconcile},
    },
    desired::{DesiredState, EgressNets, Gateway, LocalEndpoint, RemoteEndpoint},
    host::netns::{NetnsGuard, netns_path},
    model::{Mac, gateway_mac},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

// The scenario's networks and containers: c1 and c3 local, c2 behind the
// remote VTEP.
const VNI: u32 = UBER_NET.vni;
const OTHER_VNI: u32 = OTHER_NET.vni;
const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(172, 31, 1, 5);
const REMOTE_VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 5);
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const C1_IP: Ipv4Addr = C1.ip;
const C2_IP: Ipv4Addr = C2.ip;
const C3_IP: Ipv4Addr = C3.ip;
const SOURCE_PORTS: [u16; 2] = [32768, 60999];

fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    Mac::from_ipv4(ip).0
}

// ---------------------------------------------------------------- the fixture

/// A scratch namespace with the devices the programs look up; deleted on drop.
struct Scratch {
    ns: Netns,
}

impl Scratch {
    fn create() -> Result<Scratch> {
        let ns = Netns::create(&unique_prefix("ovprog"))?;
        let n = ns.name.as_str();
        for cmd in [
            format!("ip -n {n} link add uplink type veth peer name uplinkp"),
            format!("ip -n {n} link add ep0 type veth peer name ep0p"),
            format!("ip -n {n} link add ep1 type veth peer name ep1p"),
            format!("ip -n {n} addr add {LOCAL_VTEP}/24 dev uplink"),
            format!("ip -n {n} link set uplink up"),
            format!("ip -n {n} link set uplinkp up"),
            format!("ip -n {n} link set ep0 up"),
            format!("ip -n {n} link set ep1 up"),
            format!("ip -n {n} route add 192.168.1.0/24 via 172.31.1.1 dev uplink"),
            format!(
                "ip -n {n} neigh add 172.31.1.1 lladdr 02:00:00:00:00:01 dev uplink nud permanent"
            ),
            format!("ip netns exec {n} sysctl -qw net.ipv4.conf.all.forwarding=1"),
        ] {
            sh(&cmd)?;
        }
        Ok(Scratch { ns })
    }

    fn link(&self, ifname: &str) -> Result<serde_json::Value> {
        let out = sh(&format!("ip -n {} -j link show dev {ifname}", self.ns.name))?;
        Ok(serde_json::from_str::<serde_json::Value>(&out)?[0].take())
    }

    fn ifindex(&self, ifname: &str) -> Result<u32> {
        Ok(self.link(ifname)?["ifindex"]
            .as_u64()
            .context("no ifindex")? as u32)
    }

    fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let link = self.link(ifname)?;
        let text = link["address"].as_str().context("no address")?;
        Ok(text.parse::<Mac>().map_err(anyhow::Error::msg)?.0)
    }
}

/// Removes the test's pins on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = pins::unpin(&self.0);
    }
}

/// Loaded programs and filled maps inside a scratch namespace.
struct Fixture {
    scratch: Scratch,
    programs: Programs,
    maps: Maps,
    _pins: PinDir,
    underlay_mac: [u8; 6],
    ep0: u32,
    uplink: u32,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "program tests need root (BPF_PROG_TEST_RUN, namespaces); run them through `cargo xtask test`"
        );
        let scratch = Scratch::create()?;
        let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/{}", scratch.ns.name)));
        let mut ebpf = Ebpf::load(ebpf_object()).context("loading the eBPF object")?;
        let mut maps = Maps::take_and_pin(&mut ebpf, &pins.0)?;
        let programs = Programs::load(ebpf, &pins.0)?;
        let (ep0, ep1, uplink) = (
            scratch.ifindex("ep0")?,
            scratch.ifindex("ep1")?,
            scratch.ifindex("uplink")?,
        );
        let state = DesiredState {
            config: Config {
                vtep_ip: LOCAL_VTEP.octets(),
                underlay_ifindex: uplink,
                vxlan_port: 4789,
                src_port_min: SOURCE_PORTS[0],
                src_port_max: SOURCE_PORTS[1],
                flags: CONFIG_F_READY,
                ..Config::default()
            },
            networks: BTreeMap::from([(VNI, 1450), (OTHER_VNI, 1450)]),
            local: vec![
                LocalEndpoint {
                    vni: VNI,
                    ip: C1_IP,
                    mac: Mac(mac_of(C1_IP)),
                    host_ifindex: ep0,
                },
                LocalEndpoint {
                    vni: VNI,
                    ip: C3_IP,
                    mac: Mac(mac_of(C3_IP)),
                    host_ifindex: ep1,
                },
            ],
            remote: vec![RemoteEndpoint {
                vni: VNI,
                ip: C2_IP,
                mac: Mac(mac_of(C2_IP)),
                vtep: REMOTE_VTEP,
            }],
            // uber-net has a way out; other-net is internal and has none.
            gateways: vec![Gateway {
                vni: VNI,
                ip: UBER_NET.gateway(),
                mac: gateway_mac(UBER_NET.gateway()),
            }],
            egress: EgressNets::default(),
        };
        let tables = Tables::from_desired(&state);
        // DEVMAP entries name interfaces of the updater's namespace.
        let _inside = NetnsGuard::enter(&netns_path(&scratch.ns.name))?;
        let first = reconcile(&mut maps, &tables)?;
        ensure!(first.added > 0, "first reconcile added nothing: {first}");
        let second = reconcile(&mut maps, &tables)?;
        ensure!(
            second.is_empty(),
            "reconcile is not idempotent: second pass did {second}"
        );
        drop(_inside);
        let underlay_mac = scratch.mac("uplink")?;
        Ok(Fixture {
            scratch,
            programs,
            maps,
            _pins: pins,
            underlay_mac,
            ep0,
            uplink,
        })
    }

    fn prog_fd(&mut self, name: &str) -> Result<i32> {
        let ebpf = self.programs.ebpf_mut();
        let fd = if name == program_names::UNDERLAY_XDP {
            programs::xdp(ebpf, name)?.fd()?.as_fd().as_raw_fd()
        } else {
            programs::classifier(ebpf, name)?.fd()?.as_fd().as_raw_fd()
        };
        Ok(fd)
    }

    fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out = BTreeMap::new();
        for &c in Counter::ALL {
            let per_cpu = self.maps.stats.get(&(c as u32), 0)?;
            out.insert(c.name(), per_cpu.iter().map(|v| v.packets).sum());
        }
        Ok(out)
    }

    /// Runs a program once on `frame` (as if received on `ifindex`, for TC) and
    /// returns its verdict, the output frame, and which counters moved.
    fn run(&mut self, prog: &str, frame: &[u8], ifindex: u32) -> Result<Outcome> {
        let fd = self.prog_fd(prog)?;
        let before = self.counters()?;
        let ctx = if prog == program_names::UNDERLAY_XDP {
            None
        } else {
            Some(skb_ctx(ifindex))
        };
        let path = netns_path(&self.scratch.ns.name);
        let (retval, out, _) = {
            let _inside = NetnsGuard::enter(&path)?;
            test_run(fd, frame, ctx.as_ref(), 1)?
        };
        let after = self.counters()?;
        let moved = after
            .iter()
            .filter(|(k, v)| before[*k] != **v)
            .map(|(k, v)| (*k, v - before[*k]))
            .collect();
        Ok(Outcome {
            retval,
            frame: out,
            moved,
        })
    }
}

#[derive(Debug)]
struct Outcome {
    retval: u32,
    frame: Vec<u8>,
    moved: BTreeMap<&'static str, u64>,
}

impl Outcome {
    fn expect(&self, retval: u32, counter: &str) {
        assert_eq!(
            self.retval, retval,
            "{counter}: verdict; counters moved: {:?}",
            self.moved
        );
        assert_eq!(
            self.moved,
            BTreeMap::from([(counter, 1)]),
            "exactly one counter, {counter}, must move by one"
        );
    }
}

// ------------------------------------------------------------ frame crafting

/// A container's UDP datagram as an Ethernet frame.
fn inner_frame(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    eth(
        dst_mac,
        mac_of(src_ip),
        0x0800,
        &ipv4_udp(src_ip, dst_ip, 40000, 7777, b"overlay test payload"),
    )
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    eth(
        [0xff; 6],
        mac_of(sender),
        0x0806,
        &arp(1, mac_of(sender), sender, [0; 6], target),
    )
}

/// A VXLAN datagram from `src_vtep` to us carrying `inner`, as the kernel sends it.
fn vxlan_frame(src_vtep: Ipv4Addr, vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![flags, 0, 0, 0];
    vx.extend_from_slice(&vni.to_be_bytes()[1..]);
    vx.push(0);
    vx.extend_from_slice(inner);
    eth(
        [0x02, 0, 0, 0, 0, 0x05],
        GATEWAY_MAC,
        0x0800,
        &ipv4_udp(src_vtep, LOCAL_VTEP, 50000, 4789, &vx),
    )
}

// ------------------------------------------------------------------- tests

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
