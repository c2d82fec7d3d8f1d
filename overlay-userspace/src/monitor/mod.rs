//! The agent's side of `overlay monitor` and `overlay trace`: who listens, and
//! the drop events relayed to them.
//!
//! The agent is the one reader of the programs' EVENTS ring buffer (a ring
//! buffer has one consumer position) and fans the events out to every monitor
//! connected to its socket. While at least one is connected the programs are
//! asked to write events (`CONFIG_F_MONITOR`); when the last one goes, even
//! killed, its connection closes and they stop. A traced flow is held the same
//! way, by the connection of the `overlay trace` that asked for it.
//!
//! [`record`]: a drop event decoded, and the filters.

pub mod record;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use overlay_common::{MonitorCpu, TraceFlow};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use self::record::{DropRecord, Lookup};
use crate::{
    dataplane::{Observe, events::DropEvents, maps::Maps},
    host::ifname::ifname,
};

/// What a monitor receives after the agent's first answer, one JSON line each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorMessage {
    Drop(Box<DropRecord>),
    /// Drops that were not reported since the last such message: held back by
    /// the programs' rate limit, or lost because the agent read too slowly.
    Missed {
        rate_limited: u64,
        lost: u64,
    },
}

/// How many messages a slow monitor may fall behind before it misses some.
const BACKLOG: usize = 4096;

/// Who listens, and what the programs should report for them.
pub struct Monitor {
    messages: broadcast::Sender<Arc<MonitorMessage>>,
    observe: watch::Sender<Listeners>,
}

/// Who is connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listeners {
    monitors: usize,
    trace: Option<TraceFlow>,
}

impl Listeners {
    /// What the programs should report for them.
    pub fn observe(&self) -> Observe {
        Observe {
            monitor: self.monitors > 0,
            trace: self.trace,
        }
    }

    pub fn monitors(&self) -> usize {
        self.monitors
    }
}

/// A connected monitor: its messages, until it is dropped.
pub struct Subscription {
    pub messages: broadcast::Receiver<Arc<MonitorMessage>>,
    _listening: Registration,
}

/// A traced flow, until it is dropped.
pub struct Tracing {
    _listening: Registration,
}

/// Undoes what a listener asked for when it goes.
struct Registration {
    monitor: Arc<Monitor>,
    what: Held,
}

enum Held {
    Monitor,
    Trace,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.monitor.observe.send_modify(|l| match self.what {
            Held::Monitor => l.monitors -= 1,
            Held::Trace => l.trace = None,
        });
    }
}

impl Monitor {
    pub fn new() -> Arc<Monitor> {
        Arc::new(Monitor {
            messages: broadcast::channel(BACKLOG).0,
            observe: watch::Sender::new(Listeners::default()),
        })
    }

    /// A new monitor's subscription.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let messages = self.messages.subscribe();
        self.observe.send_modify(|l| l.monitors += 1);
        Subscription {
            messages,
            _listening: Registration {
                monitor: self.clone(),
                what: Held::Monitor,
            },
        }
    }

    /// Traces `flow` until the result is dropped; refused while another flow
    /// is traced.
    pub fn trace(self: &Arc<Self>, flow: TraceFlow) -> Result<Tracing> {
        let mut taken = None;
        self.observe.send_if_modified(|l| {
            taken = l.trace;
            if taken.is_none() {
                l.trace = Some(flow);
            }
            taken.is_none()
        });
        if let Some(other) = taken {
            bail!(
                "another `overlay trace` is tracing {} on this node; stop it first",
                describe(&other)
            );
        }
        Ok(Tracing {
            _listening: Registration {
                monitor: self.clone(),
                what: Held::Trace,
            },
        })
    }

    /// Who is connected, as it changes.
    pub fn listeners(&self) -> watch::Receiver<Listeners> {
        self.observe.subscribe()
    }

    fn listening(&self) -> bool {
        self.messages.receiver_count() > 0
    }

    fn publish(&self, message: MonitorMessage) {
        let _ = self.messages.send(Arc::new(message));
    }
}

/// A flow in words.
pub fn describe(flow: &TraceFlow) -> String {
    let a = Ipv4Addr::from(flow.a);
    let peer = if flow.b == [0; 4] {
        "anything".to_owned()
    } else {
        Ipv4Addr::from(flow.b).to_string()
    };
    let vni = if flow.vni == 0 {
        String::new()
    } else {
        format!(" in VNI {}", flow.vni)
    };
    format!("{a} <-> {peer}{vni}")
}

/// Reads the programs' drop events for as long as the agent runs, and relays
/// them, decoded, to the monitors; once a second, what they missed.
pub async fn relay(mut events: DropEvents, monitor: Arc<Monitor>, pin_dir: PathBuf) {
    let maps = match Maps::from_pins(&pin_dir) {
        Ok(maps) => maps,
        Err(e) => {
            log::warn!("overlay monitor will show nothing: {e:#}");
            return;
        }
    };
    let mut missed = Missed::default();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            read = events.next_batch(&mut batch) => {
                if let Err(e) = read {
                    log::warn!("overlay monitor will show nothing more: {e:#}");
                    return;
                }
                let lookup = NodeLookup::new(&maps);
                for event in batch.drain(..) {
                    let record = DropRecord::decode(&event, lookup.wall_time(event.time_ns), &lookup);
                    monitor.publish(MonitorMessage::Drop(Box::new(record)));
                }
            }
            _ = ticker.tick() => {
                if let Ok(totals) = maps.monitor_totals()
                    && let Some(message) = missed.since_last(&totals)
                    && monitor.listening()
                {
                    monitor.publish(message);
                }
            }
        }
    }
}

/// The monitor's loss counters at the last report.
#[derive(Default)]
struct Missed {
    seen: Option<(u64, u64)>,
}

impl Missed {
    fn since_last(&mut self, t: &MonitorCpu) -> Option<MonitorMessage> {
        let now = (t.events_limited, t.events_lost);
        let (limited, lost) = self.seen.replace(now).unwrap_or(now);
        let message = MonitorMessage::Missed {
            rate_limited: now.0.saturating_sub(limited),
            lost: now.1.saturating_sub(lost),
        };
        (now != (limited, lost)).then_some(message)
    }
}

/// Decoding against this node's maps, with the clocks read once per batch.
struct NodeLookup<'a> {
    maps: &'a Maps,
    vxlan_port: u16,
    /// Wall clock minus monotonic clock, in nanoseconds.
    offset_ns: i128,
}

impl<'a> NodeLookup<'a> {
    fn new(maps: &'a Maps) -> NodeLookup<'a> {
        let vxlan_port = maps.config.get(&0, 0).map_or(0, |c| c.vxlan_port);
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        NodeLookup {
            maps,
            vxlan_port,
            offset_ns: wall - i128::from(monotonic_ns()),
        }
    }

    /// A `bpf_ktime_get_ns()` reading as wall-clock time.
    fn wall_time(&self, monotonic: u64) -> String {
        jiff::Timestamp::from_nanosecond(self.offset_ns + i128::from(monotonic))
            .and_then(|t| t.round(jiff::Unit::Microsecond))
            .map_or_else(|_| format!("+{monotonic}ns"), |t| t.to_string())
    }
}

impl Lookup for NodeLookup<'_> {
    fn vxlan_port(&self) -> u16 {
        self.vxlan_port
    }
    fn endpoint_vni(&self, ifindex: u32) -> Option<u32> {
        self.maps.endpoints.get(&ifindex, 0).ok().map(|e| e.vni)
    }
    fn interface(&self, ifindex: u32) -> String {
        ifname(ifindex).unwrap_or_else(|| format!("#{ifindex}"))
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
