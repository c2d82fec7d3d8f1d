//! What a scrape reads at the moment it happens: the dataplane's maps (from
//! their pins), the gossip transport's counters, the agent's last view of the
//! cluster, and what does not change (build, ABI, decap mode, TC attachment).

use std::{
    fmt,
    sync::{Arc, Mutex, atomic::Ordering},
};

use overlay_common::ABI_FINGERPRINT;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};
use tokio::sync::watch;

use super::AgentMetrics;
use crate::{
    dataplane::{
        kernel::{self, TcAttach},
        maps::Maps,
    },
    monitor::Listeners,
};

type Labels = Vec<(&'static str, String)>;

/// The scrape-time half of the endpoint.
pub struct Collect {
    pub agent: Arc<AgentMetrics>,
    /// The agent's maps, opened from their pins.
    pub maps: Mutex<Maps>,
    pub listeners: watch::Receiver<Listeners>,
}

impl fmt::Debug for Collect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Collect")
    }
}

/// One family of values that do not come from a live metric object.
fn family<V: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result
where
    u64: From<V>,
{
    let mut descriptor = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in rows {
        let metric = descriptor.encode_family(&labels)?;
        let value = u64::from(value);
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(metric)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)?,
        }
    }
    Ok(())
}

fn info(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &impl EncodeLabelSet,
) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Info)?
        .encode_info(labels)
}

/// A reading that failed leaves its families out of this scrape, and says so
/// in the agent's log at debug level.
fn read<T>(what: &str, r: anyhow::Result<T>) -> Option<T> {
    r.map_err(|e| log::debug!("metrics: reading {what}: {e:#}"))
        .ok()
}

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        {
            let maps = self.maps.lock().expect("metrics maps");
            if let Some(totals) = read("STATS", maps.counter_totals()) {
                let by_reason =
                    |f: fn(&overlay_common::CounterValue) -> u64| -> Vec<(Labels, u64)> {
                        totals
                            .iter()
                            .map(|(c, v)| (vec![("reason", c.name().to_owned())], f(v)))
                            .collect()
                    };
                family(
                    e,
                    "dataplane_packets",
                    "Frames the programs counted, by reason (drop_* are drops), summed over CPUs",
                    None,
                    MetricType::Counter,
                    by_reason(|v| v.packets),
                )?;
                family(
                    e,
                    "dataplane",
                    "Bytes of the frames the programs counted, by reason, summed over CPUs",
                    Some(&Unit::Bytes),
                    MetricType::Counter,
                    by_reason(|v| v.bytes),
                )?;
            }
            if let Some(m) = read("MONITOR", maps.monitor_totals()) {
                family(
                    e,
                    "monitor_events",
                    "Drop events for overlay monitor: written to the ring buffer, lost (it was full), held back by the rate limit",
                    None,
                    MetricType::Counter,
                    [
                        (vec![("result", "written".to_owned())], m.events),
                        (vec![("result", "lost".to_owned())], m.events_lost),
                        (
                            vec![("result", "rate_limited".to_owned())],
                            m.events_limited,
                        ),
                    ],
                )?;
                family(
                    e,
                    "monitor_log_records_rate_limited",
                    "Log records of the programs held back by their rate limit",
                    None,
                    MetricType::Counter,
                    [(Labels::new(), m.logs_limited)],
                )?;
            }
            if let Some(occupancy) = read("the maps' occupancy", maps.occupancy()) {
                family(
                    e,
                    "map_entries",
                    "Entries in each map (arrays are always full)",
                    None,
                    MetricType::Gauge,
                    occupancy
                        .iter()
                        .map(|o| (vec![("map", o.map.to_owned())], o.entries)),
                )?;
                family(
                    e,
                    "map_max_entries",
                    "The size of each map: an insert beyond it fails",
                    None,
                    MetricType::Gauge,
                    occupancy
                        .iter()
                        .map(|o| (vec![("map", o.map.to_owned())], o.max_entries)),
                )?;
            }
        }
        family(
            e,
            "monitor_listeners",
            "overlay monitor clients connected",
            None,
            MetricType::Gauge,
            [(Labels::new(), self.listeners.borrow().monitors() as u64)],
        )?;

        let view = self.agent.view();
        let live = view.members.values().filter(|l| **l).count() as u64;
        family(
            e,
            "cluster_members",
            "Members of the cluster as this node sees them, itself included, by state",
            None,
            MetricType::Gauge,
            [
                (vec![("state", "live".to_owned())], live),
                (
                    vec![("state", "dead".to_owned())],
                    view.members.len() as u64 - live,
                ),
            ],
        )?;
        family(
            e,
            "cluster_member_up",
            "1 for a live member, 0 for a dead one",
            None,
            MetricType::Gauge,
            view.members
                .iter()
                .map(|(name, live)| (vec![("node", name.clone())], u64::from(*live))),
        )?;
        family(
            e,
            "endpoints",
            "Endpoints in this node's tables, per network: on this node (local) or behind another VTEP (remote)",
            None,
            MetricType::Gauge,
            view.endpoints
                .iter()
                .flat_map(|(network, (local, remote))| {
                    [
                        (
                            vec![("network", network.clone()), ("location", "local".into())],
                            *local,
                        ),
                        (
                            vec![("network", network.clone()), ("location", "remote".into())],
                            *remote,
                        ),
                    ]
                }),
        )?;

        if let Some(t) = self.agent.transport() {
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            family(
                e,
                "gossip_datagrams_sent",
                "Sealed gossip datagrams sent",
                None,
                MetricType::Counter,
                [(Labels::new(), load(&t.sent))],
            )?;
            family(
                e,
                "gossip_datagrams_received",
                "Gossip datagrams received: accepted; rejected (failed authentication, addressed to another node, or malformed); replayed (a copy seen before); stale (sealed outside the replay window)",
                None,
                MetricType::Counter,
                [
                    (vec![("result", "accepted".to_owned())], load(&t.accepted)),
                    (vec![("result", "rejected".to_owned())], load(&t.rejected)),
                    (vec![("result", "replayed".to_owned())], load(&t.replayed)),
                    (vec![("result", "stale".to_owned())], load(&t.stale)),
                ],
            )?;
            family(
                e,
                "gossip_messages_oversized",
                "Gossip messages not sent: too large for 255 datagrams",
                None,
                MetricType::Counter,
                [(Labels::new(), load(&t.oversized))],
            )?;
            family(
                e,
                "gossip_messages_incomplete",
                "Gossip messages dropped because a chunk never came",
                None,
                MetricType::Counter,
                [(Labels::new(), load(&t.incomplete))],
            )?;
        }

        info(
            e,
            "build",
            "The agent's version and the map ABI it was built with",
            &[
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("abi", format!("{ABI_FINGERPRINT:08x}")),
            ],
        )?;
        info(
            e,
            "dataplane",
            "How the dataplane is attached: decap mode, the underlay's TC attachment (tcx, or \
             the netlink clsact fallback before 6.6), the endpoints' (netlink clsact), kernel",
            &[
                ("decap", self.agent.decap.to_string()),
                ("tc_attach", tc_attach_label(kernel::tc_attach())),
                (
                    "endpoint_tc_attach",
                    tc_attach_label(kernel::endpoint_tc_attach()),
                ),
                ("kernel", kernel::release()),
            ],
        )?;
        Ok(())
    }
}

fn tc_attach_label(how: TcAttach) -> String {
    match how {
        TcAttach::Tcx => "tcx",
        TcAttach::NetlinkClsact => "netlink_clsact",
    }
    .to_owned()
}
