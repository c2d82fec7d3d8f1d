//! What the programs report besides counting: drop events for `overlay monitor`
//! (written only while one listens), and log records of rare events (aya-log,
//! read into the agent's log). Both are rate limited per CPU.
//!
//! Everything here runs off the forwarding path: a drop's report is called
//! only from a drop, and then is a global subprogram of its own (one per
//! program type), which the verifier checks once rather than at each of the
//! twenty drops; the drops' inlined code stays a count, one flag test and a call.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_SHOT, xdp_md},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{error, warn};
use overlay_common::{
    CONFIG_F_MONITOR, Config, Counter, DROP_SAMPLE_LEN, HOOK_ENDPOINT, HOOK_UNDERLAY_TC,
    HOOK_UNDERLAY_XDP, LOG_RECORDS_PER_SEC, MONITOR_EVENTS_PER_SEC, MonitorCpu, RateWindow,
};

use crate::{
    maps::{CONFIG, EVENTS, MONITOR},
    trace,
};

/// The log target of every record the programs write: `RUST_LOG=overlay_ebpf=debug`.
pub const LOG_TARGET: &str = "overlay_ebpf";

const WINDOW_NS: u64 = 1_000_000_000;

/// A program's context, as the reporting needs it: where the frame came in and
/// a copy of its first bytes.
pub trait Hooked {
    fn ifindex(&self) -> u32;
    /// The frame's length.
    fn len(&self) -> u32;
    /// Which program runs, given the underlay's ifindex.
    fn hook(&self, underlay_ifindex: u32) -> u8;
    /// Copies the frame's first `len` bytes (1..=`DROP_SAMPLE_LEN`) to `dst`.
    fn copy_start(&self, dst: *mut u8, len: u32) -> bool;
    /// This program type's [`report_drop`] subprogram.
    fn report_drop(&self, reason: Counter, len: u32, flags: u32) -> u32;
    /// This program type's `trace::begin` subprogram.
    fn trace_begin(&self) -> u32;
}

impl Hooked for TcContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: ctx is a valid skb.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn hook(&self, underlay_ifindex: u32) -> u8 {
        if self.ifindex() == underlay_ifindex {
            HOOK_UNDERLAY_TC
        } else {
            HOOK_ENDPOINT
        }
    }
    #[inline(always)]
    fn copy_start(&self, dst: *mut u8, len: u32) -> bool {
        // SAFETY: dst holds at least `len` bytes; the helper checks the packet.
        unsafe {
            aya_ebpf::helpers::bpf_skb_load_bytes(self.as_ptr().cast(), 0, dst.cast(), len) == 0
        }
    }
    #[inline(always)]
    fn report_drop(&self, reason: Counter, len: u32, flags: u32) -> u32 {
        report_drop_tc(self.skb.skb, reason as u32, len, flags)
    }
    #[inline(always)]
    fn trace_begin(&self) -> u32 {
        trace::begin_tc(self.skb.skb)
    }
}

impl Hooked for XdpContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: ctx is a valid xdp_md.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        // Masked on the 64-bit difference, so the verifier sees the bound on
        // the very register a helper is later given.
        ((self.data_end() - self.data()) & 0xffff) as u32
    }
    #[inline(always)]
    fn hook(&self, _underlay_ifindex: u32) -> u8 {
        HOOK_UNDERLAY_XDP
    }
    #[inline(always)]
    fn copy_start(&self, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as above.
        unsafe { bpf_xdp_load_bytes(self.as_ptr().cast(), 0, dst.cast(), len) == 0 }
    }
    #[inline(always)]
    fn report_drop(&self, reason: Counter, len: u32, flags: u32) -> u32 {
        report_drop_xdp(self.ctx, reason as u32, len, flags)
    }
    #[inline(always)]
    fn trace_begin(&self) -> u32 {
        trace::begin_xdp(self.ctx)
    }
}

/// Whether a drop under `reason` has something to report: a monitor listens,
/// or the reason is one that is logged. Inlined into every drop.
#[inline(always)]
pub fn wants_report(cfg: &Config, reason: Counter) -> bool {
    cfg.flags & CONFIG_F_MONITOR != 0 || is_logged(reason)
}

/// A drop event the rate limit refuses without asking the clock (see
/// [`admit`]): decided and counted in the drop's own code, so that in a flood
/// past the limit a drop costs a lookup, a compare and an increment more, and
/// no call. `false`: ask [`report_drop`].
#[inline(always)]
pub fn refused_at_once(reason: Counter) -> bool {
    if is_logged(reason) {
        return false;
    }
    let Some(cpu) = this_cpu() else {
        return false;
    };
    if cpu.event_window.used < MONITOR_EVENTS_PER_SEC || cpu.events_limited % 64 == 0 {
        return false;
    }
    cpu.events_limited += 1;
    true
}

/// Drops that should never happen on a working node, and so are logged.
#[inline(always)]
const fn is_logged(reason: Counter) -> bool {
    matches!(reason, Counter::DropError | Counter::DropUnknownEndpoint)
}

/// The report of a TC program's drop: see [`report_drop`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn report_drop_tc(skb: *mut __sk_buff, reason: u32, len: u32, flags: u32) -> u32 {
    report_drop(&TcContext::new(skb), reason, len, flags)
}

/// The report of an XDP program's drop: see [`report_drop`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn report_drop_xdp(ctx: *mut xdp_md, reason: u32, len: u32, flags: u32) -> u32 {
    report_drop(&XdpContext::new(ctx), reason, len, flags)
}

/// Takes one from the current window's allowance, if any is left; counts a
/// refusal in `refused`. A window lasts at least a second and admits at most
/// `per_second`. The clock is read when a window opens, and once its allowance
/// is used up only on every 64th refusal, to see whether a second has passed:
/// in a flood a refusal costs a compare and an increment, and a new window
/// opens at most 63 refusals late.
#[inline(always)]
fn admit(window: &mut RateWindow, per_second: u32, refused: &mut u64) -> bool {
    if window.used < per_second {
        if window.used == 0 {
            window.start_ns = coarse_now();
        }
        window.used += 1;
        return true;
    }
    if refused.is_multiple_of(64) {
        let now = coarse_now();
        if now.wrapping_sub(window.start_ns) >= WINDOW_NS {
            window.start_ns = now;
            window.used = 1;
            return true;
        }
    }
    *refused += 1;
    false
}

#[inline(always)]
fn this_cpu() -> Option<&'static mut MonitorCpu> {
    // SAFETY: this CPU's slot; programs do not preempt each other on one CPU.
    MONITOR.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The clock of the rate limiters: a tick's resolution is plenty for
/// one-second windows, and it costs a fraction of `bpf_ktime_get_ns`.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Whether a log record may be written now; counts the ones that may not.
#[inline(always)]
pub fn may_log() -> bool {
    let Some(cpu) = this_cpu() else {
        return false;
    };
    admit(
        &mut cpu.log_window,
        LOG_RECORDS_PER_SEC,
        &mut cpu.logs_limited,
    )
}

/// The report of one drop: a log record for the reasons that are logged, and
/// a [`DropEvent`] while a monitor listens. 1 if an event was written.
///
/// Global subprograms (`extern "C"`, unmangled) keep their signature: a static
/// one whose value nobody uses may be left returning whatever its return
/// register holds, and the verifier refuses one that may return a pointer into
/// its stack.
#[inline(always)]
fn report_drop<C: Hooked>(ctx: &C, reason: u32, len: u32, flags: u32) -> u32 {
    let Some(reason) = Counter::from_index(reason) else {
        return 0;
    };
    if is_logged(reason) && may_log() {
        let ifindex = ctx.ifindex();
        if reason == Counter::DropError {
            error!(
                ctx,
                target: LOG_TARGET,
                "a helper failed on a frame of {} bytes arriving on ifindex {}: dropped (drop_error)",
                len,
                ifindex
            );
        } else {
            warn!(
                ctx,
                target: LOG_TARGET,
                "endpoint_ingress runs on ifindex {}, which has no ENDPOINTS entry: frame dropped (drop_unknown_endpoint); a veth the agent does not know?",
                ifindex
            );
        }
    }
    if flags & CONFIG_F_MONITOR == 0 {
        return 0;
    }
    let Some(cpu) = this_cpu() else {
        return 0;
    };
    if !admit(
        &mut cpu.event_window,
        MONITOR_EVENTS_PER_SEC,
        &mut cpu.events_limited,
    ) {
        return 0;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve(0) else {
        cpu.events_lost += 1;
        return 0;
    };
    let event = entry.as_mut_ptr();
    let sample_len = if (len as usize) < DROP_SAMPLE_LEN {
        len
    } else {
        DROP_SAMPLE_LEN as u32
    };
    // SAFETY: `event` is the reserved record, DropEvent-sized and aligned.
    unsafe {
        (*event).time_ns = bpf_ktime_get_ns();
        (*event).reason = reason as u32;
        (*event).ifindex = ctx.ifindex();
        (*event).frame_len = len;
        (*event).hook = ctx.hook(cfg.underlay_ifindex);
        (*event)._pad = 0;
        let copied = sample_len > 0 && ctx.copy_start((*event).sample.as_mut_ptr(), sample_len);
        (*event).sample_len = if copied { sample_len as u16 } else { 0 };
    }
    entry.submit(0);
    cpu.events += 1;
    1
}

/// endpoint_ingress before the agent published CONFIG: nothing is known about
/// the frame, so it is dropped (a container must not reach the host through
/// us), and that is worth a line in the agent's log. The verdict.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn endpoint_not_configured(skb: *mut __sk_buff) -> i32 {
    let ctx = &TcContext::new(skb);
    if may_log() {
        warn!(
            ctx,
            target: LOG_TARGET,
            "endpoint_ingress ran on ifindex {} before the agent published CONFIG: frame dropped",
            ctx.ifindex()
        );
    }
    TC_ACT_SHOT
}
