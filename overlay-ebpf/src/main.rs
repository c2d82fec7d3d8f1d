//! eBPF programs of the VXLAN overlay dataplane. Entry points only: the work is in
//! one module per concern.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_pass_by_value,
    reason = "aya's program macros fix the entry points' signatures: the context comes by value"
)]

mod arp;
mod counters;
mod decap;
mod deliver;
mod encap;
mod lookup;
mod maps;
mod monitor;
mod parse;
mod switch;
mod trace;

use monitor::Hooked as _;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress on an endpoint's host-side veth: every frame its container sends.
#[classifier]
pub fn endpoint_ingress(ctx: TcContext) -> i32 {
    upgrade_test_variant();
    let Some(cfg) = lookup::config() else {
        // Not configured yet: a container must not reach the host stack through us.
        return monitor::endpoint_not_configured(ctx.skb.skb);
    };
    if trace::tracing(&cfg) {
        ctx.trace_begin();
    }
    let verdict = switch::from_endpoint(&ctx, &cfg);
    if trace::tracing(&cfg) {
        trace::end(verdict as u32);
    }
    verdict
}

/// TC ingress on the underlay: the TC decapsulation variant.
#[classifier]
pub fn underlay_ingress(ctx: TcContext) -> i32 {
    upgrade_test_variant();
    let Some(cfg) = lookup::config() else {
        return TC_ACT_OK;
    };
    if trace::tracing(&cfg) {
        ctx.trace_begin();
    }
    let verdict = decap::tc(&ctx, &cfg);
    if trace::tracing(&cfg) {
        trace::end(verdict as u32);
    }
    verdict
}

/// XDP on the underlay: the XDP decapsulation variant.
#[xdp]
pub fn underlay_xdp(ctx: XdpContext) -> u32 {
    upgrade_test_variant();
    let Some(cfg) = lookup::config() else {
        return xdp_action::XDP_PASS;
    };
    if trace::tracing(&cfg) {
        ctx.trace_begin();
    }
    let verdict = decap::xdp(&ctx, &cfg);
    if trace::tracing(&cfg) {
        trace::end(verdict);
    }
    verdict
}

/// On the container-side veth in XDP mode. veth drops XDP_REDIRECTed frames unless
/// the receiving peer runs an XDP program; this one lets everything through.
#[xdp]
pub fn endpoint_peer_xdp(_ctx: XdpContext) -> u32 {
    upgrade_test_variant();
    xdp_action::XDP_PASS
}

/// In the upgrade tests' second build, one helper call more at every entry
/// point: the same behaviour, other code (another program tag), so an agent
/// upgrading from the default build has every program to swap.
#[inline(always)]
fn upgrade_test_variant() {
    #[cfg(feature = "upgrade-test-variant")]
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe {
        aya_ebpf::helpers::bpf_ktime_get_ns();
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
