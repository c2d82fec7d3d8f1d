//! Per-program cost: the attached programs of a running eBPF case, found by id,
//! run on crafted frames through BPF_PROG_TEST_RUN inside node1's namespace (so
//! the FIB lookup of encapsulation sees node1's routes), and the verifier's
//! processed-instruction count from bpftool.
//!
//! A program that rewrites the packet (encap, decap, ARP reply) cannot use the
//! kernel's repeat loop: it would rerun on its own output. Those are timed as
//! single runs, each measured by the kernel's clock, and the median is reported
//! with the floor (a program that only returns) subtracted. Paths that leave the
//! packet as it was are also timed with repeat.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use overlay_tests::{
    NODE1_VTEP, NODE2_VTEP, in_netns, ip,
    prog_run::{eth, ipv4_udp, skb_ctx, test_run},
};

use super::cases::Case;

#[derive(Clone, Debug)]
pub struct Cost {
    pub path: &'static str,
    pub program: String,
    /// Median of single runs, as the kernel timed them.
    pub single_ns: u32,
    /// `single_ns` minus the floor of an empty program.
    pub net_ns: i64,
    /// Mean over a kernel repeat loop, for paths that leave the packet unchanged.
    pub repeat_ns: Option<u32>,
    pub verdict: u32,
}

#[derive(Clone, Debug)]
pub struct Insns {
    pub program: String,
    pub verified_insns: u64,
    pub xlated_bytes: u64,
    pub jited_bytes: u64,
    /// Time spent in the program and runs, while kernel.bpf_stats_enabled is on.
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// The id of the program `name` that the agent pinning in `pin_dir` loaded: the
/// one using that agent's CONFIG map. (bpftool 7.1's `net show` does not list TCX
/// attachments, and several agents may run at once.)
fn prog_id(pin_dir: &Path, name: &str) -> Result<u32> {
    let bpftool = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .context("running bpftool")?;
        ensure!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let config = pin_dir.join("CONFIG");
    let map = bpftool(&["map", "show", "pinned", &config.to_string_lossy()])?["id"]
        .as_u64()
        .context("CONFIG has no id")?;
    bpftool(&["prog", "show"])?
        .as_array()
        .context("bpftool prog show: not a list")?
        .iter()
        .find(|p| {
            p["name"].as_str() == Some(name)
                && p["map_ids"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|i| i.as_u64() == Some(map)))
        })
        .and_then(|p| p["id"].as_u64())
        .map(|id| id as u32)
        .with_context(|| format!("no program {name} using the maps in {}", pin_dir.display()))
}

/// The program's name, sizes and verifier figure from BPF_OBJ_GET_INFO_BY_FD
/// (bpftool 7.1 does not print `verified_insns`).
pub fn insns(id: u32) -> Result<Insns> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let fd = prog_fd(id)?;
    // struct bpf_prog_info up to attach_btf_id (228 bytes), 8-aligned.
    let mut info = [0u64; 29];
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: attr and info are valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut Attr,
            size_of::<Attr>(),
        )
    };
    if rc != 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: reinterpreting plain integers as bytes.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(info.as_ptr().cast(), size_of_val(&info)) };
    let u64_at = |off: usize| u64::from_ne_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
    let u32_at = |off: usize| u32::from_ne_bytes(bytes[off..off + 4].try_into().expect("4 bytes"));
    ensure!(
        attr.info_len >= 220,
        "the kernel's bpf_prog_info has no verified_insns"
    );
    let name = &bytes[64..80];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(16)])
        .into_owned();
    Ok(Insns {
        program: name,
        verified_insns: u64::from(u32_at(216)),
        xlated_bytes: u64::from(u32_at(20)),
        jited_bytes: u64::from(u32_at(16)),
        run_time_ns: u64_at(192),
        run_cnt: u64_at(200),
    })
}

fn prog_fd(id: u32) -> Result<OwnedFd> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = Attr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: attr is valid for the call; the result is a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const Attr,
            size_of::<Attr>(),
        )
    };
    if fd < 0 {
        bail!(
            "BPF_PROG_GET_FD_BY_ID {id}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A 64-byte-payload UDP datagram between two containers, as an Ethernet frame.
fn inner(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    eth(
        mac(dst),
        mac(src),
        0x0800,
        &ipv4_udp(src, dst, 40000, 7777, &[0x5a; 64]),
    )
}

fn ifindex(ns: &str, dev: &str) -> Result<u32> {
    let json: serde_json::Value =
        serde_json::from_str(&ip(&format!("-n {ns} -j link show dev {dev}"))?)?;
    json[0]["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .context("no ifindex")
}

/// The host side of c1's veth on node1: the agent names it `ov…` after the netns.
fn c1_host_veth(case: &Case) -> Result<u32> {
    let node1 = case.topology.node(1);
    // c1's eth0 names its peer's ifindex, which is in node1's namespace.
    let c1: serde_json::Value = serde_json::from_str(&ip(&format!(
        "-n {} -j link show dev eth0",
        case.client_ns()
    ))?)?;
    let peer = c1[0]["link_index"]
        .as_u64()
        .context("c1's eth0 has no peer index")?;
    let host: serde_json::Value = serde_json::from_str(&ip(&format!("-n {node1} -j link show"))?)?;
    host.as_array()
        .context("ip -j link")?
        .iter()
        .find(|l| {
            l["ifindex"].as_u64() == Some(peer)
                && l["ifname"].as_str().is_some_and(|n| n.starts_with("ov"))
        })
        .map(|_| peer as u32)
        .context("c1's host-side veth not found on node1")
}

/// (path, program id, frame, TC ifindex or None for XDP, expected verdict,
/// whether the program leaves the frame as it was).
type TestPath = (&'static str, u32, Vec<u8>, Option<u32>, u32, bool);
/// (path, program id, single-run median, repeat mean, verdict).
type Timed = (&'static str, u32, u32, Option<u32>, u32);

/// Times every path of the programs attached in `tc_case` (TC decap) and
/// `xdp_case` (XDP decap). `samples` single runs per path.
pub fn measure(tc_case: &Case, xdp_case: &Case, samples: u32) -> Result<(Vec<Cost>, Vec<Insns>)> {
    let mut costs = Vec::new();
    let mut insn = Vec::new();
    let c1 = Ipv4Addr::new(10, 0, 0, 3);
    let c2 = Ipv4Addr::new(10, 0, 0, 4);
    let c3 = Ipv4Addr::new(10, 0, 0, 5);
    let vxlan_from_c2 = {
        let mut vx = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0];
        vx.extend_from_slice(&inner(c2, c1));
        eth(
            [0x02, 0, 0, 0, 0, 0x05],
            [0x02, 0, 0, 0, 0, 0x01],
            0x0800,
            &ipv4_udp(NODE2_VTEP.parse()?, NODE1_VTEP.parse()?, 50000, 4789, &vx),
        )
    };
    let not_ours = eth(
        [0x02, 0, 0, 0, 0, 0x05],
        [0x02, 0, 0, 0, 0, 0x01],
        0x0800,
        &ipv4_udp(
            NODE2_VTEP.parse()?,
            NODE1_VTEP.parse()?,
            50000,
            53,
            &[0; 32],
        ),
    );
    let arp_request = {
        let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
        a.extend_from_slice(&mac(c1));
        a.extend_from_slice(&c1.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&c2.octets());
        eth([0xff; 6], mac(c1), 0x0806, &a)
    };

    for (case, decap_prog) in [(tc_case, "underlay_ingress"), (xdp_case, "underlay_xdp")] {
        let node1 = case.topology.node(1).to_owned();
        let veth = c1_host_veth(case)?;
        let eth0 = ifindex(&node1, "eth0")?;
        let pins = &case.pin_dirs[0];
        let ingress = prog_id(pins, "endpoint_ingress")?;
        let decap = prog_id(pins, decap_prog)?;
        let xdp = decap_prog == "underlay_xdp";
        // (path, program id, frame, TC ifindex or None for XDP, expected verdict, repeatable)
        let mut paths: Vec<TestPath> = vec![
            (
                if xdp { "decap (xdp)" } else { "decap (tc)" },
                decap,
                vxlan_from_c2.clone(),
                (!xdp).then_some(eth0),
                if xdp { XDP_REDIRECT } else { TC_ACT_REDIRECT },
                false,
            ),
            (
                if xdp {
                    "not ours (xdp)"
                } else {
                    "not ours (tc)"
                },
                decap,
                not_ours.clone(),
                (!xdp).then_some(eth0),
                if xdp { XDP_PASS } else { TC_ACT_OK },
                true,
            ),
        ];
        if xdp {
            // Returns XDP_PASS and nothing else: the floor of a test run.
            // It uses no map; it is the one attached to c1's eth0.
            let link: serde_json::Value = serde_json::from_str(&ip(&format!(
                "-n {} -d -j link show dev eth0",
                case.client_ns()
            ))?)?;
            let floor = link[0]["xdp"]["prog"]["id"]
                .as_u64()
                .with_context(|| format!("no XDP program on c1's eth0: {link}"))?
                as u32;
            paths.push((
                "floor (empty program)",
                floor,
                not_ours.clone(),
                None,
                XDP_PASS,
                true,
            ));
        } else {
            paths.extend([
                (
                    "encap",
                    ingress,
                    inner(c1, c2),
                    Some(veth),
                    TC_ACT_REDIRECT,
                    false,
                ),
                (
                    "local delivery",
                    ingress,
                    inner(c1, c3),
                    Some(veth),
                    TC_ACT_REDIRECT,
                    true,
                ),
                (
                    "arp reply",
                    ingress,
                    arp_request.clone(),
                    Some(veth),
                    TC_ACT_REDIRECT,
                    false,
                ),
            ]);
        }
        let ids: Vec<u32> = paths.iter().map(|p| p.1).collect();
        let measured = in_netns(&node1, move || -> Result<Vec<Timed>> {
            let mut out = Vec::new();
            for (path, id, frame, tc_ifindex, expect, repeatable) in paths {
                let fd = prog_fd(id)?;
                let ctx = tc_ifindex.map(skb_ctx);
                let mut times = Vec::with_capacity(samples as usize);
                let mut verdict = 0;
                for _ in 0..samples {
                    let (v, _, ns) = test_run(fd.as_raw_fd(), &frame, ctx.as_ref(), 1)?;
                    verdict = v;
                    times.push(ns);
                }
                ensure!(
                    verdict == expect,
                    "{path}: verdict {verdict}, expected {expect}"
                );
                times.sort_unstable();
                let repeat = if repeatable {
                    Some(test_run(fd.as_raw_fd(), &frame, ctx.as_ref(), 100_000)?.2)
                } else {
                    None
                };
                out.push((path, id, times[times.len() / 2], repeat, verdict));
            }
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("test-run thread panicked"))??;
        for (path, id, single, repeat, verdict) in measured {
            costs.push(Cost {
                path,
                program: insns(id)?.program,
                single_ns: single,
                net_ns: 0,
                repeat_ns: repeat,
                verdict,
            });
        }
        for id in ids {
            let i = insns(id)?;
            if !insn.iter().any(|x: &Insns| x.program == i.program) {
                insn.push(i);
            }
        }
    }
    let floor = costs
        .iter()
        .find(|c| c.path.starts_with("floor"))
        .map_or(0, |c| c.single_ns);
    for c in &mut costs {
        c.net_ns = i64::from(c.single_ns) - i64::from(floor);
        ensure!(c.single_ns > 0, "{}: the kernel measured no time", c.path);
    }
    Ok((costs, insn))
}

/// Turns kernel.bpf_stats_enabled on, and back to what it was on drop. It costs
/// every BPF program on the machine two clock reads per run, so it is on only
/// for the in-traffic profile, never during the comparison rounds.
pub struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let was = std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling bpf_stats")?;
        Ok(BpfStats(was.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// Average ns per run of each program of a case while `traffic` runs, as the
/// kernel's own run-time statistics count them: real packets, not crafted ones.
#[derive(Clone, Debug)]
pub struct Live {
    pub case: String,
    pub traffic: &'static str,
    pub node: u8,
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

pub fn live(
    case: &Case,
    traffic: &'static str,
    run: impl FnOnce() -> Result<()>,
) -> Result<Vec<Live>> {
    let mut ids = Vec::new();
    for (node, pins) in case.pin_dirs.iter().enumerate() {
        for name in ["endpoint_ingress", "underlay_ingress", "underlay_xdp"] {
            if let Ok(id) = prog_id(pins, name) {
                ids.push((node as u8 + 1, id));
            }
        }
    }
    let before: Vec<Insns> = ids
        .iter()
        .map(|(_, id)| insns(*id))
        .collect::<Result<_>>()?;
    run()?;
    let mut out = Vec::new();
    for ((node, id), b) in ids.iter().zip(before) {
        let a = insns(*id)?;
        let runs = a.run_cnt - b.run_cnt;
        if runs == 0 {
            continue;
        }
        out.push(Live {
            case: case.spec.label(),
            traffic,
            node: *node,
            program: a.program,
            runs,
            ns_per_run: (a.run_time_ns - b.run_time_ns) as f64 / runs as f64,
        });
    }
    Ok(out)
}
