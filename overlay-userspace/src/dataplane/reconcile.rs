//! The reconciler: turns a [`DesiredState`] into the exact map contents it implies,
//! compares them with what the maps hold, and applies only the difference. Running
//! it again with the same state changes nothing; running it periodically heals
//! entries that were lost or altered behind the agent's back.
//!
//! What the maps hold is read whole (a batch lookup per map), or taken from the
//! tables the previous pass wrote: reading whole maps after every change grew
//! an endpoint add with the number of endpoints (19 % of the agent's CPU at
//! 1,500). The periodic pass always reads them, so an entry changed by someone
//! else is repaired within one interval.

use std::{borrow::Cow, collections::BTreeMap, fmt, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData},
};
use overlay_common::{
    Config, Endpoint, FDB_KIND_GATEWAY, FDB_KIND_LOCAL, FDB_KIND_REMOTE, FdbEntry, FdbKey,
    NeighEntry, NeighKey, Network, Vtep,
};

use itertools::{EitherOrBoth, Itertools as _};

use super::{batch, maps::Maps};
use crate::{desired::DesiredState, model::Mac};

/// The contents every map should have.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tables {
    pub config: Config,
    pub networks: BTreeMap<u32, Network>,
    pub endpoints: BTreeMap<u32, Endpoint>,
    pub fdb: BTreeMap<FdbKey, FdbEntry>,
    pub neigh: BTreeMap<NeighKey, NeighEntry>,
    pub vteps: BTreeMap<[u8; 4], Vtep>,
    /// XDP redirect targets: host-side veth ifindex → itself.
    pub endpoint_devs: BTreeMap<u32, u32>,
}

impl Tables {
    /// Each map built whole from a list (sorted once, then filled in key order)
    /// rather than by an insert per entry: this runs after every change, over
    /// every endpoint. Of two entries with one key the later wins, as an
    /// insert would have it: local, then remote, then gateways.
    pub fn from_desired(state: &DesiredState) -> Tables {
        let local = state.local.iter().map(|e| {
            let at = FdbEntry {
                kind: FDB_KIND_LOCAL,
                ifindex: e.host_ifindex,
                remote_vtep: [0; 4],
            };
            (e.vni, e.ip, e.mac, at)
        });
        let remote = state.remote.iter().map(|r| {
            let at = FdbEntry {
                kind: FDB_KIND_REMOTE,
                ifindex: 0,
                remote_vtep: r.vtep.octets(),
            };
            (r.vni, r.ip, r.mac, at)
        });
        let gateways = state.gateways.iter().map(|g| {
            let at = FdbEntry {
                kind: FDB_KIND_GATEWAY,
                ifindex: 0,
                remote_vtep: [0; 4],
            };
            (g.vni, g.ip, g.mac, at)
        });
        // Where each MAC lives, and that each IP is answered with it.
        let addresses: Vec<(u32, Ipv4Addr, Mac, FdbEntry)> =
            local.chain(remote).chain(gateways).collect();
        let mut vteps: BTreeMap<[u8; 4], Vtep> = BTreeMap::new();
        for r in &state.remote {
            vteps.entry(r.vtep.octets()).or_default().endpoints += 1;
        }
        Tables {
            config: state.config,
            networks: state
                .networks
                .iter()
                .map(|(&vni, &mtu)| (vni, Network { mtu, flags: 0 }))
                .collect(),
            endpoints: state
                .local
                .iter()
                .map(|e| {
                    let endpoint = Endpoint {
                        vni: e.vni,
                        ip: e.ip.octets(),
                        mac: e.mac.0,
                        _pad: [0; 2],
                    };
                    (e.host_ifindex, endpoint)
                })
                .collect(),
            fdb: addresses
                .iter()
                .map(|&(vni, _, mac, at)| (FdbKey::new(vni, mac.0), at))
                .collect(),
            neigh: addresses
                .iter()
                .map(|&(vni, ip, mac, _)| {
                    let key = NeighKey {
                        vni,
                        ip: ip.octets(),
                    };
                    let entry = NeighEntry {
                        mac: mac.0,
                        _pad: [0; 2],
                    };
                    (key, entry)
                })
                .collect(),
            vteps,
            endpoint_devs: state
                .local
                .iter()
                .map(|e| (e.host_ifindex, e.host_ifindex))
                .collect(),
        }
    }
}

/// How many entries one reconcile pass added, changed and removed, and how
/// many it could not add because their map was full, per map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub refused: BTreeMap<&'static str, usize>,
}

impl Changes {
    /// Whether the pass changed nothing (refusals are reported on their own).
    pub fn is_empty(&self) -> bool {
        self.added + self.updated + self.removed == 0
    }
    fn merge(&mut self, map: &'static str, other: &Changes) {
        self.added += other.added;
        self.updated += other.updated;
        self.removed += other.removed;
        if let Some(&n) = other.refused.get(SELF) {
            self.refused.insert(map, n);
        }
    }
}

/// The key a single map's pass uses for its own refusals, renamed on merge.
const SELF: &str = "";

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} updated, {} removed",
            self.added, self.updated, self.removed
        )
    }
}

/// Brings every map to `want`. CONFIG goes last: the programs act on the tables
/// only once it says ready, and by then the tables are complete.
pub fn reconcile(maps: &mut Maps, want: &Tables) -> Result<Changes> {
    reconcile_with(maps, want, Prune::All, None)
}

/// Which stale entries a pass removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prune {
    All,
    /// Keep FDB, NEIGH and VTEPS entries the desired state lacks. A restarted
    /// agent that adopted running maps does this until gossip has told it the
    /// cluster's state, so it does not withdraw what it simply has not heard yet.
    KeepStaleRemote,
}

/// Brings every map to `want`, as [`reconcile`]. `written` is what the maps
/// held after the previous pass, if this agent alone wrote them since: the
/// maps are then not read. It is used with [`Prune::All`] only (a pass that
/// keeps stale entries must see them).
pub fn reconcile_with(
    maps: &mut Maps,
    want: &Tables,
    prune: Prune,
    written: Option<&Tables>,
) -> Result<Changes> {
    use overlay_common::map_names::{ENDPOINT_DEVS, ENDPOINTS, FDB, NEIGH, NETWORKS, VTEPS};
    let prune_remote = prune == Prune::All;
    let written = written.filter(|_| prune_remote);
    let mut changes = Changes::default();
    let current = held(&maps.networks, written.map(|t| &t.networks));
    let pass =
        current.and_then(|c| sync_hash(&mut maps.networks, &c, &want.networks, true, in_key_order));
    changes.merge(NETWORKS, &pass.context(NETWORKS)?);
    let current = held(&maps.vteps, written.map(|t| &t.vteps));
    let pass = current
        .and_then(|c| sync_hash(&mut maps.vteps, &c, &want.vteps, prune_remote, in_key_order));
    changes.merge(VTEPS, &pass.context(VTEPS)?);
    let current = held(&maps.endpoints, written.map(|t| &t.endpoints));
    let pass = current
        .and_then(|c| sync_hash(&mut maps.endpoints, &c, &want.endpoints, true, in_key_order));
    changes.merge(ENDPOINTS, &pass.context(ENDPOINTS)?);
    let pass = sync_fdb(
        &mut maps.fdb,
        written.map(|t| &t.fdb),
        &want.fdb,
        prune_remote,
    );
    changes.merge(FDB, &pass.context(FDB)?);
    let current = held(&maps.neigh, written.map(|t| &t.neigh));
    let pass = current
        .and_then(|c| sync_hash(&mut maps.neigh, &c, &want.neigh, prune_remote, in_key_order));
    changes.merge(NEIGH, &pass.context(NEIGH)?);
    let pass = sync_devmap(maps, written.map(|t| &t.endpoint_devs), &want.endpoint_devs);
    changes.merge(ENDPOINT_DEVS, &pass.context(ENDPOINT_DEVS)?);
    let current = match written {
        Some(t) => t.config,
        None => maps.config.get(&0, 0).context("reading CONFIG")?,
    };
    if current != want.config {
        maps.config
            .set(0, want.config, 0)
            .context("writing CONFIG")?;
        changes.updated += 1;
    }
    Ok(changes)
}

/// What `map` holds: `written` if the previous pass says so, else read whole.
fn held<'a, K, V>(
    map: &HashMap<MapData, K, V>,
    written: Option<&'a BTreeMap<K, V>>,
) -> Result<Cow<'a, BTreeMap<K, V>>>
where
    K: Pod + Ord,
    V: Pod,
{
    if let Some(written) = written {
        return Ok(Cow::Borrowed(written));
    }
    Ok(Cow::Owned(match batch::read_all(map) {
        Some(current) => current,
        None => map.iter().collect::<Result<_, _>>()?,
    }))
}

/// Like [`sync_hash`], but local entries (whose veth may be gone) are always pruned.
fn sync_fdb(
    map: &mut HashMap<MapData, FdbKey, FdbEntry>,
    written: Option<&BTreeMap<FdbKey, FdbEntry>>,
    want: &BTreeMap<FdbKey, FdbEntry>,
    prune_remote: bool,
) -> Result<Changes> {
    if !prune_remote {
        let current: Vec<(FdbKey, FdbEntry)> = map.iter().collect::<Result<_, _>>()?;
        for (key, entry) in current {
            if entry.kind == FDB_KIND_LOCAL && !want.contains_key(&key) {
                map.remove(&key)?;
            }
        }
    }
    let current = held(map, written)?;
    // This node's own endpoints and gateways go in first: a full FDB refuses
    // remote ones.
    sync_hash(map, &current, want, prune_remote, |e| {
        e.kind != FDB_KIND_REMOTE
    })
}

/// Brings one hash map from `current` (what it holds) to `want`. When `want` does not fit, the map holds the
/// entries `first` picks, then the others in key order, up to its capacity,
/// whatever it held before; the rest are counted as refused, and the pass goes
/// on: a full map must not stop the rest of the tables.
fn sync_hash<K, V>(
    map: &mut HashMap<MapData, K, V>,
    current: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    prune: bool,
    first: impl Fn(&V) -> bool,
) -> Result<Changes>
where
    K: Pod + Ord,
    V: Pod + PartialEq,
{
    let stale_kept = if prune {
        0
    } else {
        current.keys().filter(|k| !want.contains_key(k)).count()
    };
    let capacity = map.map().info()?.max_entries() as usize;
    let room = capacity.saturating_sub(stale_kept);
    if want.len() <= room {
        return sync_fitting(map, current, want, prune);
    }
    let ordered: Vec<(&K, &V)> = want
        .iter()
        .filter(|(_, v)| first(v))
        .chain(want.iter().filter(|(_, v)| !first(v)))
        .collect();
    let (fits, left_out) = ordered.split_at(ordered.len().min(room));
    // Wanted entries that do not fit give up their slots to those that do.
    let gone = current
        .keys()
        .filter(|k| prune && !want.contains_key(k))
        .chain(
            left_out
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| current.contains_key(k)),
        );
    let writes = fits
        .iter()
        .filter_map(|&(key, value)| match current.get(key) {
            Some(v) if v == value => None,
            held => Some((key, value, held.is_none())),
        });
    write_changes(map, gone, writes, left_out.len())
}

/// [`sync_hash`] when every wanted entry fits: one walk over both maps in key
/// order, without a lookup per entry (the pass after each change walks every
/// endpoint's entries).
fn sync_fitting<K, V>(
    map: &mut HashMap<MapData, K, V>,
    current: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    prune: bool,
) -> Result<Changes>
where
    K: Pod + Ord,
    V: Pod + PartialEq,
{
    let (mut gone, mut writes) = (Vec::new(), Vec::new());
    for pair in current
        .iter()
        .merge_join_by(want, |(h, _), (w, _)| h.cmp(w))
    {
        match pair {
            EitherOrBoth::Left((key, _)) if prune => gone.push(key),
            EitherOrBoth::Left(_) => {}
            EitherOrBoth::Right((key, value)) => writes.push((key, value, true)),
            EitherOrBoth::Both((_, old), (key, value)) if old != value => {
                writes.push((key, value, false));
            }
            EitherOrBoth::Both(..) => {}
        }
    }
    write_changes(map, gone, writes, 0)
}

/// Removes `gone` from `map` (first: that makes room), then writes `writes`,
/// each with whether its key is new. A new key the full map refuses is
/// counted, beside `refused` already left out, and the pass goes on.
fn write_changes<'a, K, V>(
    map: &mut HashMap<MapData, K, V>,
    gone: impl IntoIterator<Item = &'a K>,
    writes: impl IntoIterator<Item = (&'a K, &'a V, bool)>,
    mut refused: usize,
) -> Result<Changes>
where
    K: Pod + 'a,
    V: Pod + 'a,
{
    let mut changes = Changes::default();
    for key in gone {
        match map.remove(key) {
            Ok(()) => changes.removed += 1,
            // Removed behind the agent's back since the pass that wrote it.
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (key, value, fresh) in writes {
        match map.insert(key, value, 0) {
            Ok(()) if fresh => changes.added += 1,
            Ok(()) => changes.updated += 1,
            Err(e) if fresh && is_full(&e) => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    if refused > 0 {
        changes.refused.insert(SELF, refused);
    }
    Ok(changes)
}

/// For [`sync_hash`]: no entry goes before the others.
fn in_key_order<V>(_: &V) -> bool {
    false
}

/// A hash map at max_entries refuses new keys with E2BIG (preallocated maps
/// with ENOMEM).
fn is_full(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOMEM)))
}

/// A delete of a key that is not there fails with ENOENT.
fn is_missing(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s)
        if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn sync_devmap(
    maps: &mut Maps,
    written: Option<&BTreeMap<u32, u32>>,
    want: &BTreeMap<u32, u32>,
) -> Result<Changes> {
    let mut changes = Changes::default();
    let current: Cow<'_, BTreeMap<u32, u32>> = match written {
        Some(written) => Cow::Borrowed(written),
        None => Cow::Owned(
            maps.endpoint_devs
                .iter()
                .map(|r| r.map(|(k, v)| (k, v.if_index)))
                .collect::<Result<_, _>>()?,
        ),
    };
    for key in current.keys().filter(|k| !want.contains_key(k)) {
        match maps.endpoint_devs.remove(*key) {
            Ok(()) => changes.removed += 1,
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (&key, &ifindex) in want {
        match current.get(&key) {
            Some(&v) if v == ifindex => continue,
            Some(_) => changes.updated += 1,
            None => changes.added += 1,
        }
        maps.endpoint_devs.insert(key, ifindex, None, 0)?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{LocalEndpoint, RemoteEndpoint};

    #[test]
    fn tables_hold_local_and_remote_endpoints() {
        let state = DesiredState {
            config: Config::default(),
            networks: [(4097, 1450)].into(),
            local: vec![LocalEndpoint {
                vni: 4097,
                ip: Ipv4Addr::new(10, 0, 0, 3),
                mac: Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 3)),
                host_ifindex: 7,
            }],
            remote: vec![
                RemoteEndpoint {
                    vni: 4097,
                    ip: Ipv4Addr::new(10, 0, 0, 4),
                    mac: Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 4)),
                    vtep: Ipv4Addr::new(192, 168, 1, 5),
                },
                RemoteEndpoint {
                    vni: 4097,
                    ip: Ipv4Addr::new(10, 0, 0, 5),
                    mac: Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 5)),
                    vtep: Ipv4Addr::new(192, 168, 1, 5),
                },
            ],
            gateways: vec![crate::desired::Gateway {
                vni: 4097,
                ip: Ipv4Addr::new(10, 0, 0, 1),
                mac: Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            }],
            egress: crate::desired::EgressNets::default(),
        };
        let t = Tables::from_desired(&state);
        assert_eq!(t.fdb.len(), 4);
        assert_eq!(t.neigh.len(), 4);
        assert_eq!(
            t.fdb[&FdbKey::new(4097, [2, 0x42, 10, 0, 0, 1])].kind,
            FDB_KIND_GATEWAY
        );
        assert_eq!(t.vteps[&[192, 168, 1, 5]].endpoints, 2);
        assert_eq!(
            t.fdb[&FdbKey::new(4097, [2, 0x42, 10, 0, 0, 3])],
            FdbEntry {
                kind: FDB_KIND_LOCAL,
                ifindex: 7,
                remote_vtep: [0; 4]
            }
        );
        assert_eq!(t.endpoint_devs[&7], 7);
    }
}
