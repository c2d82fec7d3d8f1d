//! Per-CPU counters, one slot per [`Counter`] reason: no atomics, no contention.
//! Every drop goes through [`drop`], so each one is counted under its reason,
//! and reported (a drop event, a log record) when there is anyone to tell.

use aya_ebpf::bindings::{TC_ACT_SHOT, xdp_action};
use overlay_common::{Config, Counter};

use crate::{
    maps::STATS,
    monitor::{self, Hooked},
};

#[inline(always)]
pub fn count(reason: Counter, bytes: u32) {
    if let Some(slot) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: the slot belongs to this CPU and BPF programs are not preempted
        // by each other on one CPU while they run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
        }
    }
}

/// The verdict that drops a frame at a hook: TC programs return `i32`, XDP
/// programs `u32`, so the return type picks the hook.
pub trait DropVerdict {
    const DROP: Self;
}

impl DropVerdict for i32 {
    const DROP: i32 = TC_ACT_SHOT;
}

impl DropVerdict for u32 {
    const DROP: u32 = xdp_action::XDP_DROP;
}

/// Counts a dropped frame under `reason`, reports it if a monitor listens (or
/// the reason is one that is logged), and returns the hook's drop verdict.
/// `cfg` is the program's copy of CONFIG: while nobody listens, the drop costs
/// one more test of a flag already at hand.
#[inline(always)]
pub fn drop<C: Hooked, V: DropVerdict>(ctx: &C, cfg: &Config, reason: Counter, bytes: u32) -> V {
    count(reason, bytes);
    if monitor::wants_report(cfg, reason) && !monitor::refused_at_once(reason) {
        ctx.report_drop(reason, bytes, cfg.flags);
    }
    V::DROP
}
