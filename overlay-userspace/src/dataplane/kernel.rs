//! What the running kernel offers the dataplane, decided once per process: which
//! way TC programs attach, and whether every helper and map type the programs use
//! exists. Where a feature has a fallback it is taken and logged; where none does,
//! the agent refuses to start and names the missing feature, rather than half-work.

use std::sync::OnceLock;

use anyhow::{Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
    util::KernelVersion,
};
use log::{info, warn};

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX links (6.6+): owned by the process, gone when it exits.
    Tcx,
    /// A `cls_bpf` filter under a `clsact` qdisc, over netlink: the only way
    /// before 6.6, and the endpoints' way on every kernel
    /// ([`endpoint_tc_attach`]). The qdisc must exist first, so the loader
    /// adds it.
    NetlinkClsact,
}

/// The kernel's release, e.g. "6.1.0-56-amd64" (from uname).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// How the underlay's TC decap attaches on this kernel, decided and logged on
/// first use.
///
/// It is the same rule aya's `SchedClassifier::attach` applies (TCX from 6.6),
/// made explicit so that the loader knows when it must add the clsact qdisc and
/// so that aya and the loader cannot disagree.
pub fn tc_attach() -> TcAttach {
    static MODE: OnceLock<TcAttach> = OnceLock::new();
    *MODE.get_or_init(|| {
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if tcx {
            info!(
                "the underlay's TC program attaches as a TCX link (kernel {}); endpoints' as \
                 cls_bpf filters",
                release()
            );
            TcAttach::Tcx
        } else {
            warn!(
                "kernel {} has no TCX (6.6+): falling back to cls_bpf filters under a clsact \
                 qdisc (netlink)",
                release()
            );
            TcAttach::NetlinkClsact
        }
    })
}

/// How `endpoint_ingress` attaches to a host-side veth: a netlink filter on
/// every kernel. The first TCX program on a device costs its attach a full RCU
/// grace period (`tcx_entry_sync`: 12 of the 19 ms an endpoint add took here,
/// at any endpoint count); the clsact qdisc's first filter waits at most an
/// expedited one. The underlay's one attachment keeps [`tc_attach`].
#[cfg(not(feature = "upgrade-test-variant"))]
pub fn endpoint_tc_attach() -> TcAttach {
    TcAttach::NetlinkClsact
}

/// The upgrade tests' other version attaches endpoints as agents before
/// [`TcAttach::NetlinkClsact`] endpoints did (TCX from 6.6), so that taking
/// over such links is tested.
#[cfg(feature = "upgrade-test-variant")]
pub fn endpoint_tc_attach() -> TcAttach {
    tc_attach()
}

/// A helper the programs call, the program type that calls it, and why.
const HELPERS: [(ProgramType, BpfHelper, &str, &str); 13] = [
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_skb_adjust_room,
        "bpf_skb_adjust_room",
        "encapsulation and TC decapsulation",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_fib_lookup,
        "bpf_fib_lookup",
        "routing encapsulated frames (TC)",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_redirect_neigh,
        "bpf_redirect_neigh (5.10+)",
        "handing encapsulated frames to the next hop",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_redirect_peer,
        "bpf_redirect_peer (5.10+)",
        "delivering into containers",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_skb_change_type,
        "bpf_skb_change_type",
        "marking delivered frames PACKET_HOST",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_get_hash_recalc,
        "bpf_get_hash_recalc",
        "outer UDP source ports from the flow hash",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_redirect,
        "bpf_redirect",
        "forwarding (TC)",
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_xdp_adjust_head,
        "bpf_xdp_adjust_head",
        "XDP decapsulation",
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_redirect_map,
        "bpf_redirect_map",
        "XDP delivery into containers",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_ringbuf_reserve,
        "bpf_ringbuf_reserve (5.8+)",
        "drop events and log records (TC)",
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_ringbuf_reserve,
        "bpf_ringbuf_reserve (5.8+)",
        "drop events and log records (XDP)",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_skb_load_bytes,
        "bpf_skb_load_bytes",
        "the dropped frame's headers in a drop event (TC)",
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_xdp_load_bytes,
        "bpf_xdp_load_bytes (5.18+)",
        "the dropped frame's headers in a drop event (XDP)",
    ),
];

/// Map types beyond the basic hash and array ones, which any BPF kernel has.
const MAPS: [(MapType, &str); 3] = [
    (MapType::DevMapHash, "BPF_MAP_TYPE_DEVMAP_HASH (5.4+)"),
    (MapType::PerCpuArray, "BPF_MAP_TYPE_PERCPU_ARRAY"),
    (MapType::RingBuf, "BPF_MAP_TYPE_RINGBUF (5.8+)"),
];

/// Refuses to go on if the kernel lacks a helper or map type the programs use:
/// none of them has a fallback, and a program that cannot load or a path that
/// fails at run time would leave a dataplane that half-works. A probe that
/// cannot decide is logged and not held against the kernel; loading the programs
/// is the final word.
pub fn check_features() -> Result<()> {
    let mut missing = Vec::new();
    for (program, helper, name, purpose) in HELPERS {
        match is_helper_supported(program, helper) {
            Ok(true) => {}
            Ok(false) => missing.push(format!(
                "helper {name} in {program:?} programs, for {purpose}"
            )),
            Err(e) => warn!("could not probe for {name}: {e}"),
        }
    }
    for (map, name) in MAPS {
        match is_map_supported(map) {
            Ok(true) => {}
            Ok(false) => missing.push(format!("map type {name}")),
            Err(e) => warn!("could not probe for {name}: {e}"),
        }
    }
    if !missing.is_empty() {
        bail!(
            "kernel {} lacks what the dataplane needs, and there is no fallback: {}",
            release(),
            missing.join("; ")
        );
    }
    Ok(())
}
