//! Per-CPU counters, one slot per [`Counter`] reason: no atomics, no contention.

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
