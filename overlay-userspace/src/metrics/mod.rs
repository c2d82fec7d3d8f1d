//! The Prometheus / OpenMetrics endpoint, on `metrics_listen` (off by default).
//!
//! What it serves comes from four places: the agent itself (reconcile passes,
//! their duration and errors: [`AgentMetrics`], updated as they happen), the
//! gossip transport's counters, the membership view (members by state,
//! endpoints per network: a [`ClusterView`] the agent sets after each pass),
//! and the dataplane's maps, read at scrape time from their pins (counters by
//! reason, the monitor's counts, every map's occupancy): [`collect`]. The HTTP
//! side is [`server`]. README.md, *Monitoring*, lists every metric.

pub mod collect;
pub mod server;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    cluster::resolve::Resolved, config::DecapMode, dataplane::reconcile::Changes,
    desired::DesiredState, gossip::transport::TransportStats,
};

/// Every metric's name starts with this.
pub const PREFIX: &str = "overlay";

/// A reconcile pass's duration: 100 µs to about 13 s.
const RECONCILE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 4.0, 13.0,
];

/// The members and endpoints as the agent's last pass saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Name → live, for every member this node knows (itself included).
    pub members: BTreeMap<String, bool>,
    /// Network name → (local, remote) endpoints in the tables.
    pub endpoints: BTreeMap<String, (u64, u64)>,
}

impl ClusterView {
    pub fn of(resolved: &Resolved, desired: &DesiredState) -> ClusterView {
        let mut endpoints: BTreeMap<String, (u64, u64)> = resolved
            .networks
            .keys()
            .map(|name| (name.clone(), (0, 0)))
            .collect();
        let name_of = |vni: u32| {
            resolved
                .networks
                .values()
                .find(|n| n.vni == vni)
                .map(|n| n.name.clone())
        };
        for vni in desired.local.iter().map(|e| e.vni) {
            if let Some(name) = name_of(vni) {
                endpoints.entry(name).or_default().0 += 1;
            }
        }
        for vni in desired.remote.iter().map(|e| e.vni) {
            if let Some(name) = name_of(vni) {
                endpoints.entry(name).or_default().1 += 1;
            }
        }
        ClusterView {
            members: resolved
                .members
                .iter()
                .map(|m| (m.name.clone(), m.live || m.is_self))
                .collect(),
            endpoints,
        }
    }
}

/// The CPU time the calling thread has used so far: the agent runs its passes
/// on one thread, so the difference across a pass is that pass's cost.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clock id is a constant
    // every Linux has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// What the agent reports as it works, and what the scrape reads of it.
#[derive(Debug)]
pub struct AgentMetrics {
    passes: Counter,
    errors: Counter,
    duration: Histogram,
    cpu: Counter<f64>,
    changes: Family<[(&'static str, &'static str); 1], Counter>,
    view: Mutex<ClusterView>,
    transport: Mutex<Option<Arc<TransportStats>>>,
    pub(crate) decap: DecapMode,
}

impl AgentMetrics {
    pub fn new(decap: DecapMode) -> Arc<AgentMetrics> {
        Arc::new(AgentMetrics {
            passes: Counter::default(),
            errors: Counter::default(),
            duration: Histogram::new(RECONCILE_BUCKETS),
            cpu: Counter::default(),
            changes: Family::default(),
            view: Mutex::new(ClusterView::default()),
            transport: Mutex::new(None),
            decap,
        })
    }

    /// One reconcile pass: its wall time, the CPU time its thread spent on
    /// it, and what it did (`None`: it failed).
    pub fn reconciled(&self, took: Duration, cpu: Duration, changes: Option<&Changes>) {
        self.passes.inc();
        self.duration.observe(took.as_secs_f64());
        self.cpu.inc_by(cpu.as_secs_f64());
        match changes {
            Some(c) => {
                for (kind, n) in [
                    ("added", c.added),
                    ("updated", c.updated),
                    ("removed", c.removed),
                ] {
                    self.changes
                        .get_or_create(&[("kind", kind)])
                        .inc_by(n as u64);
                }
            }
            None => {
                self.errors.inc();
            }
        }
    }

    pub fn set_view(&self, view: ClusterView) {
        *self.view.lock().expect("metrics view") = view;
    }

    pub(crate) fn view(&self) -> ClusterView {
        self.view.lock().expect("metrics view").clone()
    }

    /// The gossip transport's counters, once gossip runs.
    pub fn set_transport(&self, stats: Arc<TransportStats>) {
        *self.transport.lock().expect("metrics transport") = Some(stats);
    }

    pub(crate) fn transport(&self) -> Option<Arc<TransportStats>> {
        self.transport.lock().expect("metrics transport").clone()
    }

    /// Registers what the agent updates itself.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconcile_passes",
            "Reconcile passes: the desired state brought to the maps (on changes, gossip events and every --reconcile-interval)",
            self.passes.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed (the agent's log says why)",
            self.errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "How long a reconcile pass took",
            Unit::Seconds,
            self.duration.clone(),
        );
        // Wall time on a busy host includes waiting for a core; the CPU time
        // is what a pass costs, whatever else runs.
        registry.register_with_unit(
            "reconcile_cpu",
            "CPU time the reconcile passes took, on the agent's thread",
            Unit::Seconds,
            self.cpu.clone(),
        );
        registry.register(
            "reconcile_changes",
            "Map entries the reconcile passes added, updated and removed",
            self.changes.clone(),
        );
    }
}
