//! Typed handles on the dataplane's maps: taken out of a freshly loaded object,
//! or opened from the pins a running agent left.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, IterableMap as _, Map, MapData, PerCpuArray},
};
use overlay_common::{
    Config, CounterValue, Endpoint, FdbEntry, FdbKey, MonitorCpu, NeighEntry, NeighKey, Network,
    TraceFlow, Vtep, map_names,
};

/// Typed handles on the dataplane's tables and counters. The ring buffers
/// (EVENTS, AYA_LOGS) have one reader each, the agent: see [`super::events`]
/// and [`super::logs`].
pub struct Maps {
    pub config: Array<MapData, Config>,
    pub networks: HashMap<MapData, u32, Network>,
    pub endpoints: HashMap<MapData, u32, Endpoint>,
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub neigh: HashMap<MapData, NeighKey, NeighEntry>,
    pub vteps: HashMap<MapData, [u8; 4], Vtep>,
    pub stats: PerCpuArray<MapData, CounterValue>,
    pub endpoint_devs: DevMapHash<MapData>,
    pub monitor: PerCpuArray<MapData, MonitorCpu>,
    pub trace: Array<MapData, TraceFlow>,
}

impl Maps {
    /// Takes the maps out of a freshly loaded object and pins each under `pin_dir`
    /// (created if missing). On failure, removes the pins it made. The agent
    /// loads through [`super::pins::load_adopting`]; this door is for tests that
    /// run the programs without an agent.
    #[cfg(feature = "test-doors")]
    pub fn take_and_pin(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Maps> {
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        let maps = (|| -> Result<Maps> {
            for name in map_names::ALL {
                let path = pin_dir.join(name);
                ebpf.map(name)
                    .with_context(|| format!("the eBPF object has no map {name}"))?
                    .pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
            Maps::take(ebpf)
        })();
        if maps.is_err() {
            let _ = super::pins::unpin(pin_dir);
        }
        maps
    }

    /// Takes the maps out of a loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Ok(Maps {
            config: Array::try_from(take(map_names::CONFIG)?)?,
            networks: HashMap::try_from(take(map_names::NETWORKS)?)?,
            endpoints: HashMap::try_from(take(map_names::ENDPOINTS)?)?,
            fdb: HashMap::try_from(take(map_names::FDB)?)?,
            neigh: HashMap::try_from(take(map_names::NEIGH)?)?,
            vteps: HashMap::try_from(take(map_names::VTEPS)?)?,
            stats: PerCpuArray::try_from(take(map_names::STATS)?)?,
            endpoint_devs: DevMapHash::try_from(take(map_names::ENDPOINT_DEVS)?)?,
            monitor: PerCpuArray::try_from(take(map_names::MONITOR)?)?,
            trace: Array::try_from(take(map_names::TRACE)?)?,
        })
    }

    /// The capacity of map `name`, from the kernel.
    pub fn max_entries(&self, name: &str) -> Option<u32> {
        let data = match name {
            map_names::CONFIG => self.config.map(),
            map_names::NETWORKS => self.networks.map(),
            map_names::ENDPOINTS => self.endpoints.map(),
            map_names::FDB => self.fdb.map(),
            map_names::NEIGH => self.neigh.map(),
            map_names::VTEPS => self.vteps.map(),
            map_names::STATS => self.stats.map(),
            map_names::ENDPOINT_DEVS => self.endpoint_devs.map(),
            _ => return None,
        };
        data.info().ok().map(|i| i.max_entries())
    }

    /// Opens the maps a running (or kept) agent pinned under `dir`.
    pub fn from_pins(dir: &Path) -> Result<Maps> {
        if !dir.is_dir() {
            bail!(
                "no pinned maps at {} (is an agent running for this node? is /sys/fs/bpf mounted?)",
                dir.display()
            );
        }
        let open = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))
        };
        Ok(Maps {
            config: Array::try_from(Map::Array(open(map_names::CONFIG)?))?,
            networks: HashMap::try_from(Map::HashMap(open(map_names::NETWORKS)?))?,
            endpoints: HashMap::try_from(Map::HashMap(open(map_names::ENDPOINTS)?))?,
            fdb: HashMap::try_from(Map::HashMap(open(map_names::FDB)?))?,
            neigh: HashMap::try_from(Map::HashMap(open(map_names::NEIGH)?))?,
            vteps: HashMap::try_from(Map::HashMap(open(map_names::VTEPS)?))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open(map_names::STATS)?))?,
            endpoint_devs: DevMapHash::try_from(Map::DevMapHash(open(map_names::ENDPOINT_DEVS)?))?,
            monitor: PerCpuArray::try_from(Map::PerCpuArray(open(map_names::MONITOR)?))?,
            trace: Array::try_from(Map::Array(open(map_names::TRACE)?))?,
        })
    }
}
