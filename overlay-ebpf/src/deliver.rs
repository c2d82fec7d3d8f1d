//! Handing a frame to a local container: straight into its namespace with
//! `bpf_redirect_peer`, past the host-side veth and the host stack.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_redirect_peer, bpf_skb_change_type},
    programs::TcContext,
};

/// `skb->pkt_type` for a frame addressed to the receiving host.
const PACKET_HOST: u32 = 0;

/// Redirects the frame into the container behind the host-side veth `ifindex`.
/// Returns the TC action.
#[inline(always)]
pub fn into_container(ctx: &TcContext, ifindex: u32) -> i32 {
    // SAFETY: plain helper calls on a valid skb.
    unsafe {
        // ip_rcv drops a frame that is not addressed to the host. A frame switched
        // from another container, or decapsulated from one addressed to this
        // node's VTEP, is addressed to the container: say so.
        bpf_skb_change_type(ctx.as_ptr().cast(), PACKET_HOST);
        bpf_redirect_peer(ifindex, 0) as i32
    }
}
