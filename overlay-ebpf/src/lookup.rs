//! Table lookups: where a MAC lives, which MAC answers for an IP, who may send to us.
//!
//! Values are copied out at once, so a concurrent userspace update cannot change
//! them under the program.

use overlay_common::{
    CONFIG_F_READY, Config, Endpoint, FDB_KIND_GATEWAY, FDB_KIND_LOCAL, FDB_KIND_REMOTE, FdbKey,
    NeighKey,
};

use crate::maps::{CONFIG, ENDPOINTS, FDB, NEIGH, NETWORKS, VTEPS};

/// Where a destination MAC of a network lives.
#[derive(Clone, Copy)]
pub enum Location {
    /// Behind this host-side veth on this node.
    Local { ifindex: u32 },
    /// Behind this remote VTEP.
    Remote { vtep: [u8; 4] },
    /// The network's gateway: this node's host stack.
    Gateway,
}

#[inline(always)]
pub fn config() -> Option<Config> {
    let cfg = *CONFIG.get(0)?;
    if cfg.flags & CONFIG_F_READY == 0 {
        return None;
    }
    Some(cfg)
}

#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<Endpoint> {
    // SAFETY: copied out at once.
    unsafe { ENDPOINTS.get(ifindex).copied() }
}

#[inline(always)]
pub fn locate(vni: u32, mac: [u8; 6]) -> Option<Location> {
    // SAFETY: copied out at once.
    let entry = unsafe { *FDB.get(FdbKey::new(vni, mac))? };
    match entry.kind {
        FDB_KIND_LOCAL => Some(Location::Local {
            ifindex: entry.ifindex,
        }),
        FDB_KIND_REMOTE => Some(Location::Remote {
            vtep: entry.remote_vtep,
        }),
        FDB_KIND_GATEWAY => Some(Location::Gateway),
        _ => None,
    }
}

#[inline(always)]
pub fn neighbour_mac(vni: u32, ip: [u8; 4]) -> Option<[u8; 6]> {
    // SAFETY: copied out at once.
    unsafe { NEIGH.get(NeighKey { vni, ip }).map(|n| n.mac) }
}

#[inline(always)]
pub fn serves_vni(vni: u32) -> bool {
    NETWORKS.get_ptr(vni).is_some()
}

#[inline(always)]
pub fn is_known_vtep(ip: [u8; 4]) -> bool {
    VTEPS.get_ptr(ip).is_some()
}
