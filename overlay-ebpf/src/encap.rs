//! VXLAN encapsulation (RFC 7348) towards a remote VTEP, as the kernel's VXLAN
//! device writes it: outer IPv4 with TTL 64, DF set, UDP checksum 0, source port
//! from the inner flow hash.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_hash_recalc, bpf_ktime_get_coarse_ns, bpf_redirect,
        bpf_redirect_neigh,
    },
    programs::TcContext,
};
use overlay_common::{Config, Counter, VXLAN_OVERHEAD};

use crate::{
    counters::{count, drop},
    maps::{NEXT_HOPS, NextHop},
    parse::{
        ETH_LEN, ETH_P_IP, Eth, IPPROTO_UDP, IPV4_VIHL_NO_OPTIONS, Ipv4, Packet, Udp, VXLAN_FLAG_I,
        Vxlan,
    },
};

const AF_INET: u8 = 2;
const OUTER_TTL: u8 = 64;
/// Don't Fragment, fragment offset 0. Inner MTUs are sized so outer packets fit the
/// underlay; DF makes a misconfigured path fail loudly instead of fragmenting.
const IP_FLAG_DF: [u8; 2] = [0x40, 0x00];

/// Everything written in front of the inner frame's payload: the 50 bytes of
/// outer headers, then the inner Ethernet header moved back into place.
#[repr(C)]
struct VxlanFrameHead {
    outer_eth: Eth,
    outer_ip: Ipv4,
    outer_udp: Udp,
    vxlan: Vxlan,
    inner_eth: Eth,
}

/// `bpf_skb_adjust_room` flags for growing an skb by the VXLAN overhead.
///
/// The ENCAP flags record the new inner headers so GSO can segment the tunnelled
/// packet later (SKB_GSO_UDP_TUNNEL). FIXED_GSO keeps `gso_size` as the container's
/// TCP stack chose it: the inner MTU already leaves room for the outer headers,
/// and shrinking it would make each segment carry less than it may.
const ENCAP_ROOM_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | ((ETH_LEN as u64) << 56);

/// Encapsulates the frame at `ctx` for `vni` and sends it towards `remote_vtep`.
/// Returns the TC action.
#[inline(always)]
pub fn to_remote(ctx: &TcContext, cfg: &Config, vni: u32, remote_vtep: [u8; 4]) -> i32 {
    let frame_len = ctx.len();
    let Some(inner_eth) = ctx.ptr_at::<Eth>(0) else {
        return drop(ctx, cfg, Counter::DropUnsupported, frame_len);
    };
    // SAFETY: bounds-checked above.
    let inner_eth = unsafe { core::ptr::read_unaligned(inner_eth) };
    // The flow hash must come from the inner headers, before they are hidden.
    // SAFETY: ctx is a valid skb.
    let flow_hash = unsafe { bpf_get_hash_recalc(ctx.as_ptr().cast()) };

    // Route first, so a failure leaves the packet untouched.
    let via = match cached_next_hop(remote_vtep) {
        Some(hop) => Via::Hop(hop),
        None => route(ctx, cfg, remote_vtep),
    };
    let (dmac, smac) = match via {
        Via::Hop(hop) => (hop.dmac, hop.smac),
        // Filled in by the neighbour subsystem.
        _ => ([0; 6], [0; 6]),
    };
    let head = VxlanFrameHead {
        outer_eth: Eth {
            dst_addr: dmac,
            src_addr: smac,
            ether_type: ETH_P_IP,
        },
        outer_ip: outer_ipv4(cfg.vtep_ip, remote_vtep, frame_len),
        outer_udp: Udp {
            src: source_port(flow_hash, cfg).to_be_bytes(),
            dst: cfg.vxlan_port.to_be_bytes(),
            len: ((frame_len + VXLAN_OVERHEAD - ETH_LEN as u32 - Ipv4::LEN as u32) as u16)
                .to_be_bytes(),
            check: [0; 2],
        },
        vxlan: Vxlan {
            flags: VXLAN_FLAG_I,
            _reserved1: [0; 3],
            vni: [(vni >> 16) as u8, (vni >> 8) as u8, vni as u8],
            _reserved2: 0,
        },
        inner_eth,
    };

    if ctx
        .adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP_ROOM_FLAGS)
        .is_err()
    {
        return drop(ctx, cfg, Counter::DropError, frame_len);
    }
    if ctx.store(0, &head, 0).is_err() {
        return drop(ctx, cfg, Counter::DropError, frame_len);
    }
    count(Counter::Encap, frame_len);

    // SAFETY: plain helper calls; the neighbour parameters live on our stack.
    unsafe {
        match via {
            Via::Hop(hop) => bpf_redirect(hop.ifindex, 0) as i32,
            Via::Neigh { ifindex, gateway } => {
                // The next hop is known but not yet resolved: let the kernel's
                // neighbour subsystem resolve it and fill in the MACs.
                count(Counter::EncapNeighResolve, frame_len);
                let mut nh: bpf_redir_neigh = core::mem::zeroed();
                nh.nh_family = u32::from(AF_INET);
                nh.__bindgen_anon_1.ipv4_nh = gateway;
                bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) as i32
            }
            Via::Kernel => {
                // No usable FIB answer (e.g. forwarding disabled on the underlay):
                // let the kernel route and resolve from the outer header.
                count(Counter::EncapRouteFallback, frame_len);
                bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) as i32
            }
        }
    }
}

/// Where an encapsulated packet goes.
#[derive(Clone, Copy)]
enum Via {
    /// A resolved next hop: the outer MACs are known.
    Hop(NextHop),
    /// The FIB knows the next hop but not its MAC yet.
    Neigh { ifindex: u32, gateway: u32 },
    /// The FIB could not answer; the kernel routes.
    Kernel,
}

/// How long a next hop from the FIB is used without asking again. Routes and
/// neighbours of the underlay change rarely; a second bounds how long a change
/// goes unnoticed, while the FIB lookup per packet it saves was the largest
/// single cost of the encapsulation path.
const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

#[inline(always)]
fn cached_next_hop(vtep: [u8; 4]) -> Option<NextHop> {
    // SAFETY: copied out at once; the map is not preallocated, so an element is
    // freed only after an RCU grace period, never reused under a reader.
    let hop = unsafe { *NEXT_HOPS.get(vtep)? };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    (now.wrapping_sub(hop.looked_up_ns) < NEXT_HOP_TTL_NS).then_some(hop)
}

/// The next hop towards `remote_vtep` from the FIB; remembered when resolved.
#[inline(always)]
fn route(ctx: &TcContext, cfg: &Config, remote_vtep: [u8; 4]) -> Via {
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = cfg.underlay_ifindex;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(cfg.vtep_ip);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(remote_vtep);
    // SAFETY: fib is a properly sized bpf_fib_lookup on our stack.
    let fib_rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    } as u32;
    match fib_rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let hop = NextHop {
                dmac: fib.dmac,
                smac: fib.smac,
                ifindex: fib.ifindex,
                // SAFETY: plain helper call.
                looked_up_ns: unsafe { bpf_ktime_get_coarse_ns() },
            };
            let _ = NEXT_HOPS.insert(remote_vtep, hop, 0);
            Via::Hop(hop)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Via::Neigh {
            ifindex: fib.ifindex,
            // SAFETY: for IPv4 the FIB writes the gateway into ipv4_dst.
            gateway: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        },
        _ => Via::Kernel,
    }
}

#[inline(always)]
fn outer_ipv4(src: [u8; 4], dst: [u8; 4], inner_frame_len: u32) -> Ipv4 {
    let tot_len = (inner_frame_len + VXLAN_OVERHEAD - ETH_LEN as u32) as u16;
    let mut ip = Ipv4 {
        vihl: IPV4_VIHL_NO_OPTIONS,
        tos: 0,
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        frags: IP_FLAG_DF,
        ttl: OUTER_TTL,
        proto: IPPROTO_UDP,
        check: [0; 2],
        src_addr: src,
        dst_addr: dst,
    };
    ip.check = ipv4_header_checksum(&ip);
    ip
}

/// RFC 791 header checksum over a 20-byte header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header_checksum(ip: &Ipv4) -> [u8; 2] {
    // SAFETY: Ipv4 is 20 bytes of plain data.
    let bytes: &[u8; 20] = unsafe { &*(ip as *const Ipv4 as *const [u8; 20]) };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Maps the flow hash onto the configured port range the way the kernel's
/// `udp_flow_src_port` does (multiply-shift, no modulo bias).
#[inline(always)]
fn source_port(flow_hash: u32, cfg: &Config) -> u16 {
    let span = u64::from(cfg.src_port_max - cfg.src_port_min) + 1;
    ((u64::from(flow_hash) * span) >> 32) as u16 + cfg.src_port_min
}
