//! The traced flow: while `CONFIG_F_TRACE` is set, each packet of the flow in
//! TRACE is logged at debug level as it arrives, then with every decision the
//! program took on it (each counter it moved: the counters name every outcome
//! of the checks) and its verdict. Every other packet pays one flag test at
//! entry and one at exit.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::bpf_ktime_get_ns,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use overlay_common::{CONFIG_F_TRACE, Config, Counter, HOOK_ENDPOINT, TraceFlow, VXLAN_OVERHEAD};

use crate::{
    lookup::endpoint,
    maps::{CONFIG, STATS, TRACE, TRACE_CPU},
    monitor::{Hooked, LOG_TARGET, may_log},
    parse::{ETH_LEN, ETH_P_ARP, ETH_P_IP, IPPROTO_UDP},
};

/// How many bytes of a frame the match reads: the outer headers and the inner
/// ARP body, the most any flow address sits behind.
const HEAD_LEN: usize = VXLAN_OVERHEAD as usize + ETH_LEN + 28;

/// Whether a flow is traced at all: the only test on the forwarding path.
#[inline(always)]
pub fn tracing(cfg: &Config) -> bool {
    cfg.flags & CONFIG_F_TRACE != 0
}

/// The counter names, padded to one length so that a record copies a fixed
/// number of bytes whatever the counter (the verifier allows no other copy).
const NAME_LEN: usize = 24;
const NAMES: [[u8; NAME_LEN]; Counter::COUNT as usize] = {
    let mut names = [[b' '; NAME_LEN]; Counter::COUNT as usize];
    let mut i = 0;
    while i < Counter::ALL.len() {
        let name = Counter::ALL[i].name().as_bytes();
        assert!(name.len() <= NAME_LEN);
        let mut j = 0;
        while j < name.len() {
            names[i][j] = name[j];
            j += 1;
        }
        i += 1;
    }
    names
};

/// The addresses and network a packet carries, as the flow match sees them.
struct Addresses {
    vni: u32,
    src: [u8; 4],
    dst: [u8; 4],
}

#[inline(always)]
fn ipv4_at(head: &[u8; HEAD_LEN], off: usize) -> [u8; 4] {
    [head[off], head[off + 1], head[off + 2], head[off + 3]]
}

/// The source and destination of an Ethernet frame starting at `off`: IPv4
/// addresses, or ARP sender and target.
#[inline(always)]
fn frame_addresses(head: &[u8; HEAD_LEN], off: usize) -> Option<([u8; 4], [u8; 4])> {
    let ethertype = u16::from_ne_bytes([head[off + 12], head[off + 13]]);
    let l3 = off + ETH_LEN;
    if ethertype == ETH_P_IP {
        Some((ipv4_at(head, l3 + 12), ipv4_at(head, l3 + 16)))
    } else if ethertype == ETH_P_ARP {
        Some((ipv4_at(head, l3 + 14), ipv4_at(head, l3 + 24)))
    } else {
        None
    }
}

#[inline(always)]
fn addresses<C: Hooked>(ctx: &C, hook: u8, vxlan_port: u16) -> Option<Addresses> {
    let mut head = [0u8; HEAD_LEN];
    let len = ctx.len();
    let copy = if (len as usize) < HEAD_LEN {
        len
    } else {
        HEAD_LEN as u32
    };
    if copy == 0 || !ctx.copy_start(head.as_mut_ptr(), copy) {
        return None;
    }
    if hook == HOOK_ENDPOINT {
        let (src, dst) = frame_addresses(&head, 0)?;
        let vni = endpoint(ctx.ifindex()).map_or(0, |e| e.vni);
        return Some(Addresses { vni, src, dst });
    }
    let udp = ETH_LEN + 20;
    let is_vxlan = u16::from_ne_bytes([head[12], head[13]]) == ETH_P_IP
        && head[ETH_LEN + 9] == IPPROTO_UDP
        && [head[udp + 2], head[udp + 3]] == vxlan_port.to_be_bytes();
    if !is_vxlan {
        return None;
    }
    let vni = u32::from_be_bytes([0, head[udp + 12], head[udp + 13], head[udp + 14]]);
    let (src, dst) = frame_addresses(&head, VXLAN_OVERHEAD as usize)?;
    Some(Addresses { vni, src, dst })
}

#[inline(always)]
fn matches(flow: &TraceFlow, a: &Addresses) -> bool {
    let any_peer = flow.b == [0; 4];
    (flow.vni == 0 || flow.vni == a.vni)
        && ((a.src == flow.a && (any_peer || a.dst == flow.b))
            || (a.dst == flow.a && (any_peer || a.src == flow.b)))
}

// The subprograms are global, verified once each (see `monitor::report_drop`).

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn begin_tc(skb: *mut __sk_buff) -> u32 {
    begin(&TcContext::new(skb))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn begin_xdp(ctx: *mut xdp_md) -> u32 {
    begin(&XdpContext::new(ctx))
}

/// At entry: if the packet belongs to the traced flow (and the log's rate
/// allows), logs it and remembers the counters as they are; 1 if it does.
#[inline(always)]
fn begin<C: Hooked>(ctx: &C) -> u32 {
    let Some(traced) = TRACE_CPU.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    let traced = unsafe { &mut *traced };
    traced.active = 0;
    let (Some(flow), Some(cfg)) = (TRACE.get(0), CONFIG.get(0)) else {
        return 0;
    };
    let hook = ctx.hook(cfg.underlay_ifindex);
    let Some(a) = addresses(ctx, hook, cfg.vxlan_port) else {
        return 0;
    };
    if !matches(flow, &a) || !may_log() {
        return 0;
    }
    let mut i = 0;
    while i < Counter::COUNT {
        // SAFETY: this CPU's slot.
        traced.before[i as usize] = STATS.get_ptr(i).map_or(0, |v| unsafe { (*v).packets });
        i += 1;
    }
    traced.active = 1;
    // SAFETY: plain helper call.
    traced.id = unsafe { bpf_ktime_get_ns() };
    debug!(
        ctx,
        target: LOG_TARGET,
        "trace {}: {} bytes, hook {}, ifindex {}, vni {}, {:i} -> {:i}",
        traced.id,
        ctx.len(),
        hook,
        ctx.ifindex(),
        a.vni,
        u32::from_be_bytes(a.src),
        u32::from_be_bytes(a.dst)
    );
    1
}

/// At exit: logs each counter the traced packet moved, then the verdict;
/// returns the verdict. Needs nothing of the packet: what it logs was taken
/// at entry, or is in the counters.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn end(verdict: u32) -> u32 {
    let Some(traced) = TRACE_CPU.get_ptr_mut(0) else {
        return verdict;
    };
    // SAFETY: this CPU's slot.
    let traced = unsafe { &mut *traced };
    if traced.active == 0 {
        return verdict;
    }
    traced.active = 0;
    let mut i = 0;
    while i < Counter::COUNT {
        // SAFETY: this CPU's slot.
        let now = STATS.get_ptr(i).map_or(0, |v| unsafe { (*v).packets });
        if now != traced.before[i as usize] {
            decision(traced.id, i);
        }
        i += 1;
    }
    debug!(&(), target: LOG_TARGET, "trace {}: verdict {}", traced.id, verdict);
    verdict
}

/// One decision of packet `id`: the counter it moved.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn decision(id: u64, counter: u32) -> u32 {
    let Some(name) = NAMES.get(counter as usize) else {
        return 0;
    };
    // SAFETY: every name is ASCII, padded with spaces.
    let name = unsafe { core::str::from_utf8_unchecked(name) };
    debug!(&(), target: LOG_TARGET, "trace {}: decision {}", id, name);
    1
}
