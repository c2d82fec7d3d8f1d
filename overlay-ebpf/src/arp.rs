//! Proxy ARP: requests are answered from NEIGH and never flooded.

use aya_ebpf::programs::TcContext;
use overlay_common::{Counter, Endpoint};

use crate::{
    lookup::neighbour_mac,
    parse::{Arp, ETH_LEN, Eth, Packet},
};

const HTYPE_ETHERNET: [u8; 2] = [0, 1];
const PTYPE_IPV4: [u8; 2] = [0x08, 0x00];
pub const OP_REQUEST: [u8; 2] = [0, 1];
pub const OP_REPLY: [u8; 2] = [0, 2];

/// What to do with an ARP frame a container sent.
pub enum FromEndpoint {
    /// The frame was rewritten in place into the answer; send it back to the container.
    Answered,
    /// A unicast reply (to a request that came through the tunnel): switch it like any frame.
    Forward {
        dst: [u8; 6],
    },
    Drop(Counter),
}

/// Ethernet/IPv4 ARP with the expected address lengths.
#[inline(always)]
pub fn is_ethernet_ipv4(arp: &Arp) -> bool {
    arp.htype == HTYPE_ETHERNET && arp.ptype == PTYPE_IPV4 && arp.hlen == 6 && arp.plen == 4
}

#[inline(always)]
pub fn from_endpoint(ctx: &TcContext, ep: &Endpoint) -> FromEndpoint {
    let (Some(eth), Some(arp)) = (ctx.ptr_at::<Eth>(0), ctx.ptr_at::<Arp>(ETH_LEN)) else {
        return FromEndpoint::Drop(Counter::DropUnsupported);
    };
    // SAFETY: both pointers were bounds-checked against data_end above.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if !is_ethernet_ipv4(arp) {
        return FromEndpoint::Drop(Counter::DropUnsupported);
    }
    if arp.sha != ep.mac {
        return FromEndpoint::Drop(Counter::DropSpoofedMac);
    }
    let sender_ip = arp.spa;
    // 0.0.0.0 is an address probe (RFC 5227), which a container may always send.
    if sender_ip != ep.ip && sender_ip != [0; 4] {
        return FromEndpoint::Drop(Counter::DropSpoofedIp);
    }
    match arp.oper {
        OP_REQUEST => {
            let target_ip = arp.tpa;
            // Probes and announcements for the container's own address: answering
            // would fake an address conflict, and we never flood.
            if target_ip == ep.ip {
                return FromEndpoint::Drop(Counter::DropFlood);
            }
            let Some(target_mac) = neighbour_mac(ep.vni, target_ip) else {
                return FromEndpoint::Drop(Counter::DropArpMiss);
            };
            eth.dst_addr = eth.src_addr;
            eth.src_addr = target_mac;
            arp.oper = OP_REPLY;
            arp.tha = arp.sha;
            arp.tpa = sender_ip;
            arp.sha = target_mac;
            arp.spa = target_ip;
            FromEndpoint::Answered
        }
        OP_REPLY => FromEndpoint::Forward { dst: eth.dst_addr },
        _ => FromEndpoint::Drop(Counter::DropUnsupported),
    }
}
