//! The map ABI shared by the eBPF programs and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Pod`, and padded explicitly so that the
//! byte layout the kernel sees is the layout both sides compile. IPv4 addresses
//! and MACs are byte arrays in wire order, so `bpftool map dump` prints them as
//! the bytes you would read in a packet capture. Integers are host order.
//!
//! Map names (the pin file names under `<pin root>/<node>/`) are the constants
//! in [`map_names`]; the programs declare their maps with exactly these names.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// IANA VXLAN port (RFC 7348); the kernel's VXLAN device default with `dstport 4789`.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Ethernet + IPv4 (no options) + UDP + VXLAN: what encapsulation adds in front of
/// the inner Ethernet frame, and so what the inner MTU must leave free.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Largest VNI: the field is 24 bits wide; 0 is reserved by convention.
pub const VNI_MAX: u32 = (1 << 24) - 1;

pub const MAX_NETWORKS: u32 = 1024;
pub const MAX_ENDPOINTS: u32 = 4096;
pub const MAX_FDB_ENTRIES: u32 = 262_144;
pub const MAX_NEIGH_ENTRIES: u32 = 262_144;
pub const MAX_VTEPS: u32 = 16_384;
/// EVENTS' size in bytes: about 1 700 [`DropEvent`]s between two reads.
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// At most this many [`DropEvent`]s per second and CPU; the rest are counted
/// in [`MonitorCpu::events_limited`].
pub const MONITOR_EVENTS_PER_SEC: u32 = 1000;
/// At most this many log records per second and CPU from the programs' rare
/// events (warnings, and packets of a traced flow); the rest are counted in
/// [`MonitorCpu::logs_limited`].
pub const LOG_RECORDS_PER_SEC: u32 = 100;
/// How much of a dropped frame a [`DropEvent`] carries: outer and inner headers
/// of a VXLAN frame with room to spare, as Cilium's drop notifications do.
pub const DROP_SAMPLE_LEN: usize = 128;

pub mod map_names {
    pub const CONFIG: &str = "CONFIG";
    pub const NETWORKS: &str = "NETWORKS";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const FDB: &str = "FDB";
    pub const NEIGH: &str = "NEIGH";
    pub const VTEPS: &str = "VTEPS";
    pub const STATS: &str = "STATS";
    /// DEVMAP_HASH keyed by host-side veth ifindex: the XDP decap redirect target.
    pub const ENDPOINT_DEVS: &str = "ENDPOINT_DEVS";
    /// Ring buffer of [`super::DropEvent`]s, written while a monitor listens.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU [`super::MonitorCpu`]: the rate limiters and what they let through.
    pub const MONITOR: &str = "MONITOR";
    /// The one [`super::TraceFlow`] whose decisions are logged while `CONFIG_F_TRACE` is set.
    pub const TRACE: &str = "TRACE";
    /// aya-log's ring buffer of log records (declared by `aya-log-ebpf`); pinned
    /// so that an agent that adopts running programs reads their logs too.
    pub const AYA_LOGS: &str = "AYA_LOGS";

    pub const ALL: [&str; 12] = [
        CONFIG,
        NETWORKS,
        ENDPOINTS,
        FDB,
        NEIGH,
        VTEPS,
        STATS,
        ENDPOINT_DEVS,
        EVENTS,
        MONITOR,
        TRACE,
        AYA_LOGS,
    ];
}

/// Program names, as exported by the eBPF object.
pub mod program_names {
    /// TC ingress on each endpoint's host-side veth: everything a container sends.
    pub const ENDPOINT_INGRESS: &str = "endpoint_ingress";
    /// TC ingress on the underlay: the TC decapsulation variant.
    pub const UNDERLAY_INGRESS_TC: &str = "underlay_ingress";
    /// XDP on the underlay: the XDP decapsulation variant.
    pub const UNDERLAY_XDP: &str = "underlay_xdp";
    /// XDP_PASS on the container-side veth. Frames XDP_REDIRECTed into a veth are
    /// dropped unless its peer runs an XDP program (or has NAPI); this is that program.
    pub const ENDPOINT_PEER_XDP: &str = "endpoint_peer_xdp";
}

/// The single entry of the CONFIG array (index 0).
///
/// Layout (24 bytes): `vtep_ip` 0..4, `underlay_ifindex` 4..8, `vxlan_port` 8..10,
/// `src_port_min` 10..12, `src_port_max` 12..14, `_pad` 14..16, `flags` 16..20,
/// `_reserved` 20..24.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// This node's VTEP address: outer source on encap, required outer destination on decap.
    pub vtep_ip: [u8; 4],
    pub underlay_ifindex: u32,
    /// UDP destination port of VXLAN datagrams, host order.
    pub vxlan_port: u16,
    /// Outer UDP source ports are drawn from `src_port_min..=src_port_max` by inner
    /// flow hash, as the kernel's `udp_flow_src_port` does, for ECMP entropy.
    pub src_port_min: u16,
    pub src_port_max: u16,
    pub _pad: u16,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    pub _reserved: u32,
}

/// The programs act only once userspace has published a configuration.
pub const CONFIG_F_READY: u32 = 1 << 0;
/// A monitor is listening: the drop paths write a [`DropEvent`] to EVENTS, at
/// most [`MONITOR_EVENTS_PER_SEC`] per CPU. The agent sets it while an
/// `overlay monitor` is connected; without it the drop paths write nothing.
pub const CONFIG_F_MONITOR: u32 = 1 << 1;
/// A flow is selected in TRACE: the decisions taken on its packets are logged
/// at debug level. Without it the programs only test this bit.
pub const CONFIG_F_TRACE: u32 = 1 << 2;

/// NETWORKS value, keyed by VNI (`u32`). Layout (8 bytes): `mtu` 0..4, `flags` 4..8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Network {
    /// The endpoints' MTU in this network (underlay MTU − 50 unless configured).
    pub mtu: u32,
    pub flags: u32,
}

/// ENDPOINTS value, keyed by the host-side veth ifindex (`u32`).
/// Layout (16 bytes): `vni` 0..4, `ip` 4..8, `mac` 8..14, `_pad` 14..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Endpoint {
    pub vni: u32,
    /// The only source IPv4 this endpoint may send from.
    pub ip: [u8; 4],
    /// The only source MAC this endpoint may send from.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// FDB key. Layout (12 bytes): `vni` 0..4, `mac` 4..10, `_pad` 10..12.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct FdbKey {
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl FdbKey {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self {
            vni,
            mac,
            _pad: [0; 2],
        }
    }
}

pub const FDB_KIND_LOCAL: u32 = 1;
pub const FDB_KIND_REMOTE: u32 = 2;
/// The network's gateway: frames to this MAC leave the overlay through the host
/// stack of this node (`ifindex` and `remote_vtep` are zero).
pub const FDB_KIND_GATEWAY: u32 = 3;

/// FDB value: where a MAC of a network lives.
/// Layout (12 bytes): `kind` 0..4, `ifindex` 4..8, `remote_vtep` 8..12.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FdbEntry {
    /// `FDB_KIND_LOCAL` (deliver to `ifindex`), `FDB_KIND_REMOTE` (encapsulate to
    /// `remote_vtep`) or `FDB_KIND_GATEWAY` (hand to the host stack).
    pub kind: u32,
    /// Host-side veth of a local endpoint; 0 for remote entries.
    pub ifindex: u32,
    /// VTEP of a remote endpoint; zero for local entries.
    pub remote_vtep: [u8; 4],
}

/// NEIGH key: an IPv4 address inside a network. Layout (8 bytes): `vni` 0..4, `ip` 4..8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct NeighKey {
    pub vni: u32,
    pub ip: [u8; 4],
}

/// NEIGH value: the MAC that proxy ARP answers with. Layout (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NeighEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// VTEPS value, keyed by the peer's VTEP IPv4 (`[u8; 4]`). A peer is accepted as an
/// outer source for decapsulation only while it has an entry here.
/// Layout (8 bytes): `endpoints` 0..4, `flags` 4..8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Vtep {
    /// How many remote endpoints userspace knows behind this VTEP (informational).
    pub endpoints: u32,
    pub flags: u32,
}

/// Which program dropped a frame, and so what a [`DropEvent`]'s sample starts with.
pub const HOOK_ENDPOINT: u8 = 1;
/// The TC decapsulation variant: the sample is the frame as it came off the underlay.
pub const HOOK_UNDERLAY_TC: u8 = 2;
/// The XDP decapsulation variant: as [`HOOK_UNDERLAY_TC`].
pub const HOOK_UNDERLAY_XDP: u8 = 3;

/// One EVENTS record: a dropped frame, written by the drop path only while
/// `CONFIG_F_MONITOR` is set.
///
/// Layout (152 bytes): `time_ns` 0..8, `reason` 8..12, `ifindex` 12..16,
/// `frame_len` 16..20, `sample_len` 20..22, `hook` 22, `_pad` 23, `sample` 24..152.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub time_ns: u64,
    /// A [`Counter`] (a `drop_` one).
    pub reason: u32,
    /// The interface the frame arrived on.
    pub ifindex: u32,
    /// The whole frame's length.
    pub frame_len: u32,
    /// How many bytes of `sample` hold the frame's start (at most [`DROP_SAMPLE_LEN`]).
    pub sample_len: u16,
    /// `HOOK_*`: a container's frame (endpoint) or one from the underlay.
    pub hook: u8,
    pub _pad: u8,
    /// The frame's first bytes, as they were when it was dropped.
    pub sample: [u8; DROP_SAMPLE_LEN],
}

/// A fixed one-second window of a per-CPU rate limiter.
/// Layout (16 bytes): `start_ns` 0..8, `used` 8..12, `_pad` 12..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RateWindow {
    /// When the current window began (`bpf_ktime_get_coarse_ns()`).
    pub start_ns: u64,
    /// How much of the window's allowance is used.
    pub used: u32,
    pub _pad: u32,
}

/// MONITOR's single entry, per CPU: the rate limiters of drop events and log
/// records, and what they let through. Only the programs write it.
///
/// Layout (64 bytes): `events` 0..8, `events_lost` 8..16, `events_limited`
/// 16..24, `logs_limited` 24..32, `event_window` 32..48, `log_window` 48..64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MonitorCpu {
    /// Drop events written to EVENTS.
    pub events: u64,
    /// Drop events not written because EVENTS was full (the reader fell behind).
    pub events_lost: u64,
    /// Drop events not written because of [`MONITOR_EVENTS_PER_SEC`].
    pub events_limited: u64,
    /// Log records not written because of [`LOG_RECORDS_PER_SEC`].
    pub logs_limited: u64,
    pub event_window: RateWindow,
    pub log_window: RateWindow,
}

/// TRACE's single entry: the flow whose packets are logged while
/// `CONFIG_F_TRACE` is set. A packet belongs to it when its (inner) IPv4 or
/// ARP addresses are `a` and `b` in either direction, or `a` and anything if
/// `b` is 0.0.0.0, in network `vni` (0: any).
/// Layout (12 bytes): `vni` 0..4, `a` 4..8, `b` 8..12.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TraceFlow {
    pub vni: u32,
    pub a: [u8; 4],
    pub b: [u8; 4],
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), have no implicit padding and are valid
    // for any bit pattern (they are bytemuck::Pod).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Network {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for FdbKey {}
    unsafe impl aya::Pod for FdbEntry {}
    unsafe impl aya::Pod for NeighKey {}
    unsafe impl aya::Pod for NeighEntry {}
    unsafe impl aya::Pod for Vtep {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for MonitorCpu {}
    unsafe impl aya::Pod for TraceFlow {}
}

/// Declares [`Counter`] once: each reason with its doc, its stable name, and
/// its STATS index (declaration order), so the list cannot drift from the names.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $variant:ident => $name:literal, )+) => {
        /// Why a packet was counted. The STATS per-CPU array is indexed by these
        /// values; [`Counter::name`] gives the stable name userspace prints.
        ///
        /// Counters starting with `drop_` are the reasons a frame was dropped.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl Counter {
            /// Every counter, in STATS index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant),+];
            pub const COUNT: u32 = Counter::ALL.len() as u32;

            pub const fn name(self) -> &'static str {
                match self {
                    $( Counter::$variant => $name, )+
                }
            }

            /// The counter at STATS index `index`.
            pub const fn from_index(index: u32) -> Option<Counter> {
                if index < Counter::COUNT {
                    Some(Counter::ALL[index as usize])
                } else {
                    None
                }
            }

            /// Whether this counter is a reason to drop a frame.
            pub const fn is_drop(self) -> bool {
                let name = self.name().as_bytes();
                name.len() > 5
                    && name[0] == b'd'
                    && name[1] == b'r'
                    && name[2] == b'o'
                    && name[3] == b'p'
                    && name[4] == b'_'
            }
        }
    };
}

counters! {
    /// A container frame encapsulated towards a remote VTEP.
    Encap => "encap",
    /// A VXLAN datagram decapsulated and delivered to a local endpoint.
    Decap => "decap",
    /// A container frame delivered straight to another local endpoint.
    LocalDelivery => "local_delivery",
    /// An ARP request from a container answered from NEIGH.
    ArpReply => "arp_reply",
    /// An ARP request that came through the tunnel, delivered to the endpoint owning its target.
    TunnelArpDelivered => "tunnel_arp_delivered",
    /// Encapsulated frame whose next hop had no neighbour entry: handed to
    /// `bpf_redirect_neigh` so the kernel resolves it.
    EncapNeighResolve => "encap_neigh_resolve",
    /// Encapsulated frame the FIB lookup could not route (e.g. forwarding is off on
    /// the underlay): handed to `bpf_redirect_neigh` to route and resolve. Slower.
    EncapRouteFallback => "encap_route_fallback",
    /// Source MAC is not the endpoint's own.
    DropSpoofedMac => "drop_spoofed_mac",
    /// Source IPv4 (or ARP sender IP) is not the endpoint's own.
    DropSpoofedIp => "drop_spoofed_ip",
    /// ARP request for an address with no NEIGH entry (never flooded).
    DropArpMiss => "drop_arp_miss",
    /// Not IPv4 or ARP, or a malformed header.
    DropUnsupported => "drop_unsupported",
    /// Broadcast or multicast frame that is not an ARP request (never flooded).
    DropFlood => "drop_flood",
    /// No FDB entry for the destination MAC in this network.
    DropNoFdb => "drop_no_fdb",
    /// Frame on a veth that has our program but no ENDPOINTS entry.
    DropUnknownEndpoint => "drop_unknown_endpoint",
    /// VXLAN for a served VNI without the I flag.
    DropVxlanFlags => "drop_vxlan_flags",
    /// VXLAN for a served VNI from an outer source that is not a known VTEP.
    DropUnknownVtep => "drop_unknown_vtep",
    /// VXLAN for a served VNI whose inner destination is not a local endpoint of that VNI.
    DropNotLocal => "drop_not_local",
    /// VXLAN for a served VNI that is too short or malformed inside.
    DropMalformed => "drop_malformed",
    /// A helper failed (adjust_room, store, FIB lookup, redirect).
    DropError => "drop_error",
    /// VXLAN to our VTEP and port for a VNI this node does not serve, passed untouched.
    PassUnknownVni => "pass_unknown_vni",
    /// A container frame to its gateway's MAC, handed to the host stack: the way
    /// out of the overlay.
    ToGateway => "to_gateway",
}

/// One STATS slot (per CPU). Layout (16 bytes): `packets` 0..8, `bytes` 8..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for CounterValue {}

// The layouts documented above, checked at compile time on both sides of the ABI.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Config>() == 24);
    assert!(size_of::<Network>() == 8);
    assert!(size_of::<Endpoint>() == 16);
    assert!(size_of::<FdbKey>() == 12);
    assert!(size_of::<FdbEntry>() == 12);
    assert!(size_of::<NeighKey>() == 8);
    assert!(size_of::<NeighEntry>() == 8);
    assert!(size_of::<Vtep>() == 8);
    assert!(size_of::<CounterValue>() == 16);
    assert!(size_of::<DropEvent>() == 152);
    assert!(size_of::<RateWindow>() == 16);
    assert!(size_of::<MonitorCpu>() == 64);
    assert!(size_of::<TraceFlow>() == 12);
    // A ring buffer record must be a multiple of 8 bytes long.
    assert!(size_of::<DropEvent>().is_multiple_of(8));
};

/// Identifies this build's ABI: it changes when a layout, a map's size, a map
/// name, a counter or a flag changes, so that nodes (and pins) of different
/// ABIs can be told apart (the agent reports it as `overlay_build_info{abi}`).
pub const ABI_FINGERPRINT: u32 = {
    use core::mem::size_of;
    const FNV_OFFSET: u32 = 0x811c_9dc5;
    const FNV_PRIME: u32 = 0x0100_0193;
    const fn mix(mut hash: u32, bytes: &[u8]) -> u32 {
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u32;
            hash = hash.wrapping_mul(FNV_PRIME);
            i += 1;
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        (hash ^ 0xff).wrapping_mul(FNV_PRIME)
    }
    const fn mix_u32(hash: u32, value: u32) -> u32 {
        mix(hash, &value.to_le_bytes())
    }
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < map_names::ALL.len() {
        hash = mix(hash, map_names::ALL[i].as_bytes());
        i += 1;
    }
    let mut i = 0;
    while i < Counter::ALL.len() {
        hash = mix(hash, Counter::ALL[i].name().as_bytes());
        i += 1;
    }
    let sizes = [
        size_of::<Config>(),
        size_of::<Network>(),
        size_of::<Endpoint>(),
        size_of::<FdbKey>(),
        size_of::<FdbEntry>(),
        size_of::<NeighKey>(),
        size_of::<NeighEntry>(),
        size_of::<Vtep>(),
        size_of::<CounterValue>(),
        size_of::<DropEvent>(),
        size_of::<MonitorCpu>(),
        size_of::<TraceFlow>(),
    ];
    let mut i = 0;
    while i < sizes.len() {
        hash = mix_u32(hash, sizes[i] as u32);
        i += 1;
    }
    let numbers = [
        MAX_NETWORKS,
        MAX_ENDPOINTS,
        MAX_FDB_ENTRIES,
        MAX_NEIGH_ENTRIES,
        MAX_VTEPS,
        EVENTS_BYTES,
        MONITOR_EVENTS_PER_SEC,
        LOG_RECORDS_PER_SEC,
        CONFIG_F_READY | CONFIG_F_MONITOR | CONFIG_F_TRACE,
        FDB_KIND_LOCAL,
        FDB_KIND_REMOTE,
    ];
    let mut i = 0;
    while i < numbers.len() {
        hash = mix_u32(hash, numbers[i]);
        i += 1;
    }
    hash
};
