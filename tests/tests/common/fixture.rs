//! The program suites' fixture: the loaded programs and filled maps inside a
//! scratch network namespace holding an "underlay" with a permanent neighbour
//! for its gateway (so the FIB lookup during encapsulation gives a known
//! next-hop MAC) and two endpoint veths; and the frames to run them on.
//! Shared by the `program` and `drop_events` suites, each of which uses part.
#![allow(
    dead_code,
    reason = "each suite that includes this file uses part of it"
)]

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result, ensure};
use aya::{Ebpf, EbpfLoader};
use overlay_common::{
    CONFIG_F_MONITOR, CONFIG_F_READY, CONFIG_F_TRACE, Config, Counter, map_names, program_names,
};
use overlay_tests::{
    Netns,
    prog_run::{eth, ipv4_udp, skb_ctx, test_run},
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

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

// The scenario's networks and containers: c1 and c3 local, c2 behind the
// remote VTEP.
pub const VNI: u32 = UBER_NET.vni;
pub const OTHER_VNI: u32 = OTHER_NET.vni;
pub const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(172, 31, 1, 5);
pub const REMOTE_VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 5);
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const C1_IP: Ipv4Addr = C1.ip;
pub const C2_IP: Ipv4Addr = C2.ip;
pub const C3_IP: Ipv4Addr = C3.ip;
pub const SOURCE_PORTS: [u16; 2] = [32768, 60999];

pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    Mac::from_ipv4(ip).0
}

// ---------------------------------------------------------------- the fixture

/// A scratch namespace with the devices the programs look up; deleted on drop.
pub struct Scratch {
    pub ns: Netns,
}

impl Scratch {
    pub fn create() -> Result<Scratch> {
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

    pub fn link(&self, ifname: &str) -> Result<serde_json::Value> {
        let out = sh(&format!("ip -n {} -j link show dev {ifname}", self.ns.name))?;
        Ok(serde_json::from_str::<serde_json::Value>(&out)?[0].take())
    }

    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        Ok(self.link(ifname)?["ifindex"]
            .as_u64()
            .context("no ifindex")? as u32)
    }

    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let link = self.link(ifname)?;
        let text = link["address"].as_str().context("no address")?;
        Ok(text.parse::<Mac>().map_err(anyhow::Error::msg)?.0)
    }
}

/// Removes the test's pins on drop.
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = pins::unpin(&self.0);
    }
}

/// Loaded programs and filled maps inside a scratch namespace.
pub struct Fixture {
    pub scratch: Scratch,
    pub programs: Programs,
    pub maps: Maps,
    pub pins: PinDir,
    pub underlay_mac: [u8; 6],
    pub ep0: u32,
    pub uplink: u32,
}

impl Fixture {
    pub fn new() -> Result<Fixture> {
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
            pins,
            underlay_mac,
            ep0,
            uplink,
        })
    }

    pub fn prog_fd(&mut self, name: &str) -> Result<i32> {
        prog_fd(self.programs.ebpf_mut(), name)
    }

    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out = BTreeMap::new();
        for &c in Counter::ALL {
            let per_cpu = self.maps.stats.get(&(c as u32), 0)?;
            out.insert(c.name(), per_cpu.iter().map(|v| v.packets).sum());
        }
        Ok(out)
    }

    /// Runs a program once on `frame` (as if received on `ifindex`, for TC) and
    /// returns its verdict, the output frame, and which counters moved.
    pub fn run(&mut self, prog: &str, frame: &[u8], ifindex: u32) -> Result<Outcome> {
        let fd = self.prog_fd(prog)?;
        let before = self.counters()?;
        let ctx = (!prog.contains("xdp")).then(|| skb_ctx(ifindex));
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

    /// Runs a program `repeat` times in the kernel's loop, for a path that
    /// leaves the frame as it was: its verdict and mean ns per run.
    pub fn run_repeat(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(u32, u32)> {
        let fd = self.prog_fd(prog)?;
        let ctx = (!prog.contains("xdp")).then(|| skb_ctx(ifindex));
        let _inside = NetnsGuard::enter(&netns_path(&self.scratch.ns.name))?;
        let (retval, _, mean) = test_run(fd, frame, ctx.as_ref(), repeat)?;
        Ok((retval, mean))
    }

    /// Loads another build of the eBPF object on this fixture's maps (those
    /// it has: an older object lacks the newer ones), for a before/after
    /// comparison of the same paths on the same tables.
    pub fn load_other(&self, object: &[u8]) -> Result<Ebpf> {
        let paths: Vec<(&str, PathBuf)> = map_names::ALL
            .iter()
            .map(|name| (*name, self.pins.0.join(name)))
            .filter(|(_, path)| path.exists())
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the other object")?;
        for name in [
            program_names::ENDPOINT_INGRESS,
            program_names::UNDERLAY_INGRESS_TC,
        ] {
            programs::classifier(&mut ebpf, name)?.load()?;
        }
        for name in [
            program_names::UNDERLAY_XDP,
            program_names::ENDPOINT_PEER_XDP,
        ] {
            programs::xdp(&mut ebpf, name)?.load()?;
        }
        Ok(ebpf)
    }

    /// Sets CONFIG's `CONFIG_F_MONITOR` and `CONFIG_F_TRACE` bits to `flags`,
    /// as the agent does for its monitors and traces.
    pub fn set_observe_flags(&mut self, flags: u32) -> Result<()> {
        let mut config = self.maps.config.get(&0, 0)?;
        config.flags = (config.flags & !(CONFIG_F_MONITOR | CONFIG_F_TRACE)) | flags;
        self.maps.config.set(0, config, 0)?;
        Ok(())
    }
}

/// The fd of program `name` of `ebpf` (XDP if its name says so).
pub fn prog_fd(ebpf: &mut Ebpf, name: &str) -> Result<i32> {
    Ok(if name.contains("xdp") {
        programs::xdp(ebpf, name)?.fd()?.as_fd().as_raw_fd()
    } else {
        programs::classifier(ebpf, name)?.fd()?.as_fd().as_raw_fd()
    })
}

#[derive(Debug)]
pub struct Outcome {
    pub retval: u32,
    pub frame: Vec<u8>,
    pub moved: BTreeMap<&'static str, u64>,
}

impl Outcome {
    pub fn expect(&self, retval: u32, counter: &str) {
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
pub fn inner_frame(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    eth(
        dst_mac,
        mac_of(src_ip),
        0x0800,
        &ipv4_udp(src_ip, dst_ip, 40000, 7777, b"overlay test payload"),
    )
}

pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    eth(
        [0xff; 6],
        mac_of(sender),
        0x0806,
        &arp(1, mac_of(sender), sender, [0; 6], target),
    )
}

/// A VXLAN datagram from `src_vtep` to us carrying `inner`, as the kernel sends it.
pub fn vxlan_frame(src_vtep: Ipv4Addr, vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
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
