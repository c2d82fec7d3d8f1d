//! The endpoint side: everything a container sends enters here, is checked against
//! the endpoint's identity, and is answered (ARP), switched locally, encapsulated,
//! or, addressed to the network's gateway, handed to the host stack.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_redirect, programs::TcContext};
use overlay_common::{Config, Counter, Endpoint};

use crate::{
    arp::{self, FromEndpoint},
    counters::{count, drop},
    deliver, encap,
    lookup::{Location, endpoint, locate},
    parse::{ETH_LEN, ETH_P_ARP, ETH_P_IP, Eth, Ipv4, Packet, is_multicast, tc_pull},
};

/// Ethernet + ARP body: the most any check below reads.
const CHECK_LEN: usize = ETH_LEN + 28;

#[inline(always)]
pub fn from_endpoint(ctx: &TcContext, cfg: &Config) -> i32 {
    let len = ctx.len();
    // SAFETY: ctx is a valid skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(ep) = endpoint(ifindex) else {
        return drop(ctx, cfg, Counter::DropUnknownEndpoint, len);
    };
    tc_pull(
        ctx,
        if (len as usize) < CHECK_LEN {
            len as usize
        } else {
            CHECK_LEN
        },
    );
    let Some(eth) = ctx.ptr_at::<Eth>(0) else {
        return drop(ctx, cfg, Counter::DropUnsupported, len);
    };
    // SAFETY: bounds-checked above.
    let eth = unsafe { core::ptr::read_unaligned(eth) };
    if eth.src_addr != ep.mac {
        return drop(ctx, cfg, Counter::DropSpoofedMac, len);
    }
    match eth.ether_type {
        ETH_P_IP => {
            let Some(ip) = ctx.ptr_at::<Ipv4>(ETH_LEN) else {
                return drop(ctx, cfg, Counter::DropUnsupported, len);
            };
            // SAFETY: bounds-checked above.
            if unsafe { (*ip).src_addr } != ep.ip {
                return drop(ctx, cfg, Counter::DropSpoofedIp, len);
            }
            forward(ctx, cfg, &ep, eth.dst_addr, len)
        }
        ETH_P_ARP => match arp::from_endpoint(ctx, &ep) {
            FromEndpoint::Answered => {
                count(Counter::ArpReply, len);
                // Back out of the host-side veth, into the container.
                // SAFETY: plain helper call.
                unsafe { bpf_redirect(ifindex, 0) as i32 }
            }
            FromEndpoint::Forward { dst } => forward(ctx, cfg, &ep, dst, len),
            FromEndpoint::Drop(reason) => drop(ctx, cfg, reason, len),
        },
        _ => drop(ctx, cfg, Counter::DropUnsupported, len),
    }
}

/// Switches a checked frame by its destination MAC within the endpoint's network.
#[inline(always)]
fn forward(ctx: &TcContext, cfg: &Config, ep: &Endpoint, dst: [u8; 6], len: u32) -> i32 {
    if is_multicast(&dst) {
        return drop(ctx, cfg, Counter::DropFlood, len);
    }
    match locate(ep.vni, dst) {
        Some(Location::Local { ifindex }) => {
            count(Counter::LocalDelivery, len);
            deliver::into_container(ctx, ifindex)
        }
        Some(Location::Remote { vtep }) => encap::to_remote(ctx, cfg, ep.vni, vtep),
        // The host end of the veth carries the gateway's MAC, so the stack
        // takes the frame as its own: the way out of the overlay, and only that.
        Some(Location::Gateway) => {
            count(Counter::ToGateway, len);
            TC_ACT_OK
        }
        None => drop(ctx, cfg, Counter::DropNoFdb, len),
    }
}
