//! Per-CPU counters, one slot per [`Counter`] reason: no atomics, no contention.
//! Every drop goes through [`drop`], so each one is counted under its reason.

use aya_ebpf::bindings::{TC_ACT_SHOT, xdp_action};
use overlay_common::Counter;

use crate::maps::STATS;

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

/// Counts a dropped frame under `reason` and returns the hook's drop verdict.
#[inline(always)]
pub fn drop<V: DropVerdict>(reason: Counter, bytes: u32) -> V {
    count(reason, bytes);
    V::DROP
}
