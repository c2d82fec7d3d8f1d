//! The BPF maps: the tables userspace fills and the programs read.
//!
//! Keys and values are the `overlay-common` ABI types. The maps are BTF-typed so
//! `bpftool map dump pinned …` prints field names. The dynamic tables (FDB, NEIGH,
//! VTEPS) are not preallocated: memory follows the cluster's size, and a value read
//! here stays valid under RCU even if userspace replaces the entry meanwhile.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, DevMapHash, HashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use overlay_common::{
    Config, Counter, CounterValue, DropEvent, EVENTS_BYTES, Endpoint, FdbEntry, FdbKey,
    MAX_ENDPOINTS, MAX_FDB_ENTRIES, MAX_NEIGH_ENTRIES, MAX_NETWORKS, MAX_VTEPS, MonitorCpu,
    NeighEntry, NeighKey, Network, TraceFlow, Vtep,
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static NETWORKS: HashMap<u32, Network, { MAX_NETWORKS as usize }> = HashMap::new();

#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static FDB: HashMap<FdbKey, FdbEntry, FDB_ENTRIES, NO_PREALLOC> = HashMap::new();

/// The upgrade tests' second build has a FDB of another shape, which an agent
/// upgrading onto it must migrate.
#[cfg(not(feature = "upgrade-test-variant"))]
const FDB_ENTRIES: usize = MAX_FDB_ENTRIES as usize;
#[cfg(feature = "upgrade-test-variant")]
const FDB_ENTRIES: usize = MAX_FDB_ENTRIES as usize / 2;

#[btf_map]
pub static NEIGH: HashMap<NeighKey, NeighEntry, { MAX_NEIGH_ENTRIES as usize }, NO_PREALLOC> =
    HashMap::new();

#[btf_map]
pub static VTEPS: HashMap<[u8; 4], Vtep, { MAX_VTEPS as usize }, NO_PREALLOC> = HashMap::new();

#[btf_map]
pub static STATS: PerCpuArray<CounterValue, { Counter::COUNT as usize }> = PerCpuArray::new();

/// The encapsulation's next hop per remote VTEP, written by the programs
/// themselves after a successful FIB lookup and trusted for `NEXT_HOP_TTL_NS`.
/// Internal: not pinned, not part of the ABI, gone with the programs.
#[btf_map]
pub static NEXT_HOPS: HashMap<[u8; 4], NextHop, { MAX_VTEPS as usize }, NO_PREALLOC> =
    HashMap::new();

#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    /// bpf_ktime_get_coarse_ns() of the FIB lookup that produced it.
    pub looked_up_ns: u64,
}

#[btf_map]
pub static ENDPOINT_DEVS: DevMapHash<{ MAX_ENDPOINTS as usize }> = DevMapHash::new();

/// Dropped frames, while a monitor listens (`CONFIG_F_MONITOR`).
#[btf_map]
pub static EVENTS: RingBuf<DropEvent, { EVENTS_BYTES as usize }> = RingBuf::new();

/// Per CPU: the rate limiters of drop events and log records, and their counts.
#[btf_map]
pub static MONITOR: PerCpuArray<MonitorCpu, 1> = PerCpuArray::new();

/// The flow whose decisions are logged while `CONFIG_F_TRACE` is set.
#[btf_map]
pub static TRACE: Array<TraceFlow, 1> = Array::new();

/// Per CPU: the packet of the traced flow being processed, and the counters
/// as they were when it arrived, so that its decisions show as what moved.
/// Internal: not pinned, not part of the ABI.
#[btf_map]
pub static TRACE_CPU: PerCpuArray<TracedPacket, 1> = PerCpuArray::new();

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TracedPacket {
    /// Non-zero while a packet of the traced flow is being processed.
    pub active: u32,
    pub _pad: u32,
    /// The packet's arrival time, which its log records carry to tell them apart.
    pub id: u64,
    /// STATS packets per counter (this CPU's) when the packet arrived.
    pub before: [u64; Counter::COUNT as usize],
}
