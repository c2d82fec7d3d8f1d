//! What the maps say about the dataplane's work, read from any handle on them
//! (the agent's, or one opened from the pins): the counters summed over CPUs,
//! the monitor's counts, and each map's entries against its size.

use anyhow::{Context as _, Result};
use aya::maps::{IterableMap as _, MapData, MapInfo};
use overlay_common::{Counter, CounterValue, MonitorCpu, map_names};

use super::{batch, maps::Maps};

/// How full a map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub map: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

impl Maps {
    /// Every counter, summed over CPUs, in STATS order.
    pub fn counter_totals(&self) -> Result<Vec<(Counter, CounterValue)>> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = self
                    .stats
                    .get(&(counter as u32), 0)
                    .context("reading STATS")?;
                let total = per_cpu
                    .iter()
                    .fold(CounterValue::default(), |t, v| CounterValue {
                        packets: t.packets + v.packets,
                        bytes: t.bytes + v.bytes,
                    });
                Ok((counter, total))
            })
            .collect()
    }

    /// The monitor's counts (events written, lost, rate limited; log records
    /// rate limited), summed over CPUs. The rate windows are left zero.
    pub fn monitor_totals(&self) -> Result<MonitorCpu> {
        let per_cpu = self.monitor.get(&0, 0).context("reading MONITOR")?;
        Ok(per_cpu
            .iter()
            .fold(MonitorCpu::default(), |t, v| MonitorCpu {
                events: t.events + v.events,
                events_lost: t.events_lost + v.events_lost,
                events_limited: t.events_limited + v.events_limited,
                logs_limited: t.logs_limited + v.logs_limited,
                ..MonitorCpu::default()
            }))
    }

    /// The occupancy of the tables the agent fills (the hash maps), whose
    /// capacity refuses what it would add once they are full.
    pub fn fill(&self) -> Result<Vec<Occupancy>> {
        const ARRAYS: [&str; 4] = [
            map_names::CONFIG,
            map_names::STATS,
            map_names::MONITOR,
            map_names::TRACE,
        ];
        Ok(self
            .occupancy()?
            .into_iter()
            .filter(|o| !ARRAYS.contains(&o.map))
            .collect())
    }

    /// Entries against max entries for every table. Arrays are always full;
    /// the ring buffers are not tables and are left out (their losses are in
    /// [`Maps::monitor_totals`]).
    pub fn occupancy(&self) -> Result<Vec<Occupancy>> {
        let hash = |name: &'static str, data: &MapData, entries: usize| -> Result<Occupancy> {
            Ok(Occupancy {
                map: name,
                entries: entries as u64,
                max_entries: u64::from(info(name, data)?.max_entries()),
            })
        };
        let full = |name: &'static str, data: &MapData| -> Result<Occupancy> {
            let max = u64::from(info(name, data)?.max_entries());
            Ok(Occupancy {
                map: name,
                entries: max,
                max_entries: max,
            })
        };
        let counted = |name: &'static str, n: Result<usize, aya::maps::MapError>| {
            n.with_context(|| format!("counting the entries of {name}"))
        };
        Ok(vec![
            full(map_names::CONFIG, self.config.map())?,
            hash(
                map_names::NETWORKS,
                self.networks.map(),
                counted(map_names::NETWORKS, batch::count(&self.networks))?,
            )?,
            hash(
                map_names::ENDPOINTS,
                self.endpoints.map(),
                counted(map_names::ENDPOINTS, batch::count(&self.endpoints))?,
            )?,
            hash(
                map_names::FDB,
                self.fdb.map(),
                counted(map_names::FDB, batch::count(&self.fdb))?,
            )?,
            hash(
                map_names::NEIGH,
                self.neigh.map(),
                counted(map_names::NEIGH, batch::count(&self.neigh))?,
            )?,
            hash(
                map_names::VTEPS,
                self.vteps.map(),
                counted(map_names::VTEPS, batch::count(&self.vteps))?,
            )?,
            full(map_names::STATS, self.stats.map())?,
            hash(
                map_names::ENDPOINT_DEVS,
                self.endpoint_devs.map(),
                counted(
                    map_names::ENDPOINT_DEVS,
                    self.endpoint_devs
                        .keys()
                        .try_fold(0, |n, key| key.map(|_| n + 1)),
                )?,
            )?,
            full(map_names::MONITOR, self.monitor.map())?,
            full(map_names::TRACE, self.trace.map())?,
        ])
    }
}

fn info(name: &str, data: &MapData) -> Result<MapInfo> {
    data.info()
        .with_context(|| format!("reading the map info of {name}"))
}
