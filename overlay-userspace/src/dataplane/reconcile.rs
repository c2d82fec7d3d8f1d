//! The reconciler: turns a [`DesiredState`] into the exact map contents it implies,
//! compares them with what the maps hold, and applies only the difference. Running
//! it again with the same state changes nothing; running it periodically heals
//! entries that were lost or altered behind the agent's back.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use overlay_common::{
    Config, Endpoint, FDB_KIND_GATEWAY, FDB_KIND_LOCAL, FDB_KIND_REMOTE, FdbEntry, FdbKey,
    NeighEntry, NeighKey, Network, Vtep,
};

use super::{batch, maps::Maps};
use crate::{desired::DesiredState, model::Mac};

/// The contents every map should have.
#[derive(Debug, Default, PartialEq)]
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
    pub fn from_desired(state: &DesiredState) -> Tables {
        let mut t = Tables {
            config: state.config,
            ..Tables::default()
        };
        for (&vni, &mtu) in &state.networks {
            t.networks.insert(vni, Network { mtu, flags: 0 });
        }
        for e in &state.local {
            t.endpoints.insert(
                e.host_ifindex,
                Endpoint {
                    vni: e.vni,
                    ip: e.ip.octets(),
                    mac: e.mac.0,
                    _pad: [0; 2],
                },
            );
            let local = FdbEntry {
                kind: FDB_KIND_LOCAL,
                ifindex: e.host_ifindex,
                remote_vtep: [0; 4],
            };
            t.add_address(e.vni, e.ip, e.mac, local);
            t.endpoint_devs.insert(e.host_ifindex, e.host_ifindex);
        }
        for r in &state.remote {
            let remote = FdbEntry {
                kind: FDB_KIND_REMOTE,
                ifindex: 0,
                remote_vtep: r.vtep.octets(),
            };
            t.add_address(r.vni, r.ip, r.mac, remote);
            t.vteps.entry(r.vtep.octets()).or_default().endpoints += 1;
        }
        for g in &state.gateways {
            let gateway = FdbEntry {
                kind: FDB_KIND_GATEWAY,
                ifindex: 0,
                remote_vtep: [0; 4],
            };
            t.add_address(g.vni, g.ip, g.mac, gateway);
        }
        t
    }
}

impl Tables {
    /// Where `mac` of network `vni` lives, and that `ip` is answered with it.
    fn add_address(&mut self, vni: u32, ip: Ipv4Addr, mac: Mac, at: FdbEntry) {
        self.fdb.insert(FdbKey::new(vni, mac.0), at);
        self.neigh.insert(
            NeighKey {
                vni,
                ip: ip.octets(),
            },
            NeighEntry {
                mac: mac.0,
                _pad: [0; 2],
            },
        );
    }
}

/// How many entries one reconcile pass added, changed and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
    fn merge(&mut self, other: Changes) {
        self.added += other.added;
        self.updated += other.updated;
        self.removed += other.removed;
    }
}

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
    reconcile_with(maps, want, Prune::All)
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

pub fn reconcile_with(maps: &mut Maps, want: &Tables, prune: Prune) -> Result<Changes> {
    let prune_remote = prune == Prune::All;
    let mut changes = Changes::default();
    changes.merge(sync_hash(&mut maps.networks, &want.networks, true).context("NETWORKS")?);
    changes.merge(sync_hash(&mut maps.vteps, &want.vteps, prune_remote).context("VTEPS")?);
    changes.merge(sync_hash(&mut maps.endpoints, &want.endpoints, true).context("ENDPOINTS")?);
    changes.merge(sync_fdb(&mut maps.fdb, &want.fdb, prune_remote).context("FDB")?);
    changes.merge(sync_hash(&mut maps.neigh, &want.neigh, prune_remote).context("NEIGH")?);
    changes.merge(sync_devmap(maps, &want.endpoint_devs).context("ENDPOINT_DEVS")?);
    let current = maps.config.get(&0, 0).context("reading CONFIG")?;
    if current != want.config {
        maps.config
            .set(0, want.config, 0)
            .context("writing CONFIG")?;
        changes.updated += 1;
    }
    Ok(changes)
}

/// Like [`sync_hash`], but local entries (whose veth may be gone) are always pruned.
fn sync_fdb(
    map: &mut HashMap<MapData, FdbKey, FdbEntry>,
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
    sync_hash(map, want, prune_remote)
}

fn sync_hash<K, V>(
    map: &mut HashMap<MapData, K, V>,
    want: &BTreeMap<K, V>,
    prune: bool,
) -> Result<Changes>
where
    K: Pod + Ord,
    V: Pod + PartialEq,
{
    let mut changes = Changes::default();
    let current: BTreeMap<K, V> = match batch::read_all(map) {
        Some(current) => current,
        None => map.iter().collect::<Result<_, _>>()?,
    };
    for key in current.keys().filter(|k| prune && !want.contains_key(k)) {
        map.remove(key)?;
        changes.removed += 1;
    }
    for (key, value) in want {
        match current.get(key) {
            Some(v) if v == value => continue,
            Some(_) => changes.updated += 1,
            None => changes.added += 1,
        }
        map.insert(key, value, 0)?;
    }
    Ok(changes)
}

fn sync_devmap(maps: &mut Maps, want: &BTreeMap<u32, u32>) -> Result<Changes> {
    let mut changes = Changes::default();
    let current: BTreeMap<u32, u32> = maps
        .endpoint_devs
        .iter()
        .map(|r| r.map(|(k, v)| (k, v.if_index)))
        .collect::<Result<_, _>>()?;
    for key in current.keys().filter(|k| !want.contains_key(k)) {
        maps.endpoint_devs.remove(*key)?;
        changes.removed += 1;
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
