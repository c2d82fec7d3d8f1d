//! VXLAN decapsulation on the underlay: the acceptance checks, shared by the TC and
//! XDP variants, and each variant's way of stripping and delivering.
//!
//! A datagram is ours when it is IPv4 UDP to our VTEP address and VXLAN port with a
//! VNI we serve. Anything else passes untouched, so other VXLAN users on the host
//! keep working. A datagram that is ours but fails a check is dropped and counted.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_CSUM_LEVEL_DEC, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action,
    },
    helpers::{bpf_csum_level, bpf_redirect, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use overlay_common::{Config, Counter, VXLAN_OVERHEAD};

use crate::{
    arp::{OP_REQUEST, is_ethernet_ipv4},
    counters::{count, drop},
    deliver,
    lookup::{Location, is_known_vtep, locate, neighbour_mac, serves_vni},
    maps::ENDPOINT_DEVS,
    parse::{
        Arp, ETH_P_ARP, ETH_P_IP, Eth, INNER_ETH_OFF, INNER_L3_OFF, IPPROTO_UDP,
        IPV4_VIHL_NO_OPTIONS, Ipv4, OUTER_IP_OFF, OUTER_UDP_OFF, Packet, Udp, VXLAN_FLAG_I,
        VXLAN_OFF, Vxlan, tc_pull,
    },
};

/// MF flag and fragment offset: fragments are left to the kernel.
const IP_MF_AND_OFFSET: [u8; 2] = [0x3f, 0xff];

/// The shortest network header an inner frame may carry (IPv4's).
const INNER_MIN_L3: usize = 20;

/// The bytes the checks read: outer headers, inner Ethernet and an inner ARP body.
pub const CLASSIFY_LEN: usize = INNER_L3_OFF + Arp::LEN;

pub enum Verdict {
    /// Not VXLAN for us, or for a VNI we do not serve: leave it to the stack.
    NotOurs,
    Drop(Counter),
    /// Strip the outer headers and hand the inner frame to this host-side veth.
    Deliver {
        ifindex: u32,
        inner_is_arp: bool,
    },
}

#[inline(always)]
pub fn classify<P: Packet>(pkt: &P, cfg: &Config) -> Verdict {
    let (Some(eth), Some(ip), Some(udp), Some(vxlan)) = (
        pkt.ptr_at::<Eth>(0),
        pkt.ptr_at::<Ipv4>(OUTER_IP_OFF),
        pkt.ptr_at::<Udp>(OUTER_UDP_OFF),
        pkt.ptr_at::<Vxlan>(VXLAN_OFF),
    ) else {
        return Verdict::NotOurs;
    };
    // SAFETY: all four were bounds-checked above.
    let (eth, ip, udp, vxlan) = unsafe { (&*eth, &*ip, &*udp, &*vxlan) };
    if eth.ether_type != ETH_P_IP
        || ip.vihl != IPV4_VIHL_NO_OPTIONS
        || ip.proto != IPPROTO_UDP
        || ip.dst_addr != cfg.vtep_ip
        || ip.frags[0] & IP_MF_AND_OFFSET[0] != 0
        || ip.frags[1] & IP_MF_AND_OFFSET[1] != 0
        || udp.dst != cfg.vxlan_port.to_be_bytes()
    {
        return Verdict::NotOurs;
    }
    let vni = u32::from_be_bytes([0, vxlan.vni[0], vxlan.vni[1], vxlan.vni[2]]);
    if !serves_vni(vni) {
        count(Counter::PassUnknownVni, 0);
        return Verdict::NotOurs;
    }
    if vxlan.flags & VXLAN_FLAG_I == 0 {
        return Verdict::Drop(Counter::DropVxlanFlags);
    }
    // The injection guard (CVE-2023-28840): only peers we know may speak for a VNI.
    if !is_known_vtep(ip.src_addr) {
        return Verdict::Drop(Counter::DropUnknownVtep);
    }
    let Some(inner) = pkt.ptr_at::<Eth>(INNER_ETH_OFF) else {
        return Verdict::Drop(Counter::DropMalformed);
    };
    // Every frame a container takes carries a network header after its
    // Ethernet one (IPv4's 20 bytes, ARP's 28). Shorter is malformed, and TC
    // decap could not strip the outer headers from it (bpf_skb_adjust_room
    // keeps at least an IPv4 header's length): found by the property tests.
    if pkt.ptr_at::<[u8; INNER_MIN_L3]>(INNER_L3_OFF).is_none() {
        return Verdict::Drop(Counter::DropMalformed);
    }
    // SAFETY: bounds-checked above.
    let inner = unsafe { &*inner };
    if inner.ether_type == ETH_P_ARP && inner.dst_addr == [0xff; 6] {
        return classify_tunnel_arp(pkt, vni);
    }
    match locate(vni, inner.dst_addr) {
        Some(Location::Local { ifindex }) => Verdict::Deliver {
            ifindex,
            inner_is_arp: inner.ether_type == ETH_P_ARP,
        },
        _ => Verdict::Drop(Counter::DropNotLocal),
    }
}

/// A broadcast ARP request from a peer without proxy ARP (a kernel VXLAN device):
/// deliver it to the one local endpoint that owns the target address, or drop it.
#[inline(always)]
fn classify_tunnel_arp<P: Packet>(pkt: &P, vni: u32) -> Verdict {
    let Some(arp) = pkt.ptr_at::<Arp>(INNER_L3_OFF) else {
        return Verdict::Drop(Counter::DropMalformed);
    };
    // SAFETY: bounds-checked above.
    let arp = unsafe { &*arp };
    if !is_ethernet_ipv4(arp) || arp.oper != OP_REQUEST {
        return Verdict::Drop(Counter::DropNotLocal);
    }
    let Some(mac) = neighbour_mac(vni, arp.tpa) else {
        return Verdict::Drop(Counter::DropNotLocal);
    };
    match locate(vni, mac) {
        Some(Location::Local { ifindex }) => Verdict::Deliver {
            ifindex,
            inner_is_arp: true,
        },
        _ => Verdict::Drop(Counter::DropNotLocal),
    }
}

#[inline(always)]
fn delivered_counter(inner_is_arp: bool) -> Counter {
    if inner_is_arp {
        Counter::TunnelArpDelivered
    } else {
        Counter::Decap
    }
}

/// TC variant: shrink the skb, restore the inner Ethernet header, and move the
/// packet straight into the container's namespace.
#[inline(always)]
pub fn tc(ctx: &TcContext, cfg: &Config) -> i32 {
    let len = ctx.len();
    tc_pull(
        ctx,
        if (len as usize) < CLASSIFY_LEN {
            len as usize
        } else {
            CLASSIFY_LEN
        },
    );
    let (ifindex, inner_is_arp) = match classify(ctx, cfg) {
        Verdict::NotOurs => return aya_ebpf::bindings::TC_ACT_OK,
        Verdict::Drop(reason) => return drop(ctx, cfg, reason, len),
        Verdict::Deliver {
            ifindex,
            inner_is_arp,
        } => (ifindex, inner_is_arp),
    };
    let Some(inner_eth) = ctx.ptr_at::<Eth>(INNER_ETH_OFF) else {
        return drop(ctx, cfg, Counter::DropMalformed, len);
    };
    // SAFETY: bounds-checked above.
    let inner_eth = unsafe { core::ptr::read_unaligned(inner_eth) };
    // Removes outer IP/UDP/VXLAN and the inner Ethernet header from behind the
    // outer Ethernet header, which is then overwritten with the inner one. FIXED_GSO:
    // a GRO/GSO packet's gso_size is the inner TCP MSS and must not grow by 50.
    // NO_CSUM_RESET, then one level less: what GRO (or the NIC) verified stays
    // verified except the outer UDP checksum, which is gone, as the kernel's own
    // tunnels do when they pull a header. Without it the container's stack
    // would check every inner checksum a second time.
    if ctx
        .adjust_room(
            -(VXLAN_OVERHEAD as i32),
            BPF_ADJ_ROOM_MAC,
            u64::from(BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET),
        )
        .is_err()
        || ctx.store(0, &inner_eth, 0).is_err()
    {
        return drop(ctx, cfg, Counter::DropError, len);
    }
    // SAFETY: ctx is a valid skb. Only CHECKSUM_UNNECESSARY has levels; for any
    // other state this changes nothing.
    unsafe { bpf_csum_level(ctx.as_ptr().cast(), u64::from(BPF_CSUM_LEVEL_DEC)) };
    let inner_len = len - VXLAN_OVERHEAD;
    count(delivered_counter(inner_is_arp), inner_len);
    if inner_is_arp {
        // skb->protocol still says IPv4 (the outer header); going out through the
        // host-side veth lets the peer's eth_type_trans classify the ARP frame.
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(ifindex, 0) as i32 };
    }
    deliver::into_container(ctx, ifindex)
}

/// XDP variant: drop the outer 50 bytes from the front and redirect through the
/// DEVMAP into the host-side veth (whose peer runs `endpoint_peer_xdp`).
#[inline(always)]
pub fn xdp(ctx: &XdpContext, cfg: &Config) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let (ifindex, inner_is_arp) = match classify(ctx, cfg) {
        Verdict::NotOurs => return xdp_action::XDP_PASS,
        Verdict::Drop(reason) => return drop(ctx, cfg, reason, len),
        Verdict::Deliver {
            ifindex,
            inner_is_arp,
        } => (ifindex, inner_is_arp),
    };
    // SAFETY: valid xdp_md; the helper checks the delta against the packet.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), VXLAN_OVERHEAD as i32) } != 0 {
        return drop(ctx, cfg, Counter::DropError, len);
    }
    match ENDPOINT_DEVS.redirect(ifindex, 0) {
        Ok(action) => {
            count(delivered_counter(inner_is_arp), len - VXLAN_OVERHEAD);
            action
        }
        Err(_) => drop(ctx, cfg, Counter::DropError, len),
    }
}
