//! Gossip membership over chitchat: each node's [`NodeRecord`] is its chitchat
//! key-value state ([`kv`]); chitchat spreads it by anti-entropy, and its phi-accrual
//! failure detector says which nodes are live.

pub mod key;
pub mod kv;
pub mod transport;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle,
    spawn_chitchat,
};
use tokio::sync::Notify;

use self::{
    key::ClusterKey,
    transport::{SealedTransport, TransportCounts, TransportStats},
};
use crate::{cluster::record::NodeRecord, config::ClusterSection};

/// A failure detector tuned for a LAN: a node is declared dead after
/// `PHI_THRESHOLD` mean heartbeat intervals of silence: with the default 200 ms
/// gossip interval, about 2 s (heartbeats arrive more often than once a round).
const PHI_THRESHOLD: f64 = 20.0;
/// How long a dead node's state (network definitions, address blocks) is kept.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(3600);
/// How many live peers a local change is pushed to at once, before the next round.
const PUSH_FANOUT: usize = 8;

pub struct Gossip {
    handle: ChitchatHandle,
    stats: Arc<TransportStats>,
    changed: Arc<Notify>,
    _listener: ListenerHandle,
    live_nodes: tokio::sync::watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>>,
    published: BTreeMap<String, String>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Gossip {
    /// Joins the cluster announcing `record`.
    pub async fn start(
        node: &str,
        section: &ClusterSection,
        key: &ClusterKey,
        record: &NodeRecord,
    ) -> Result<Gossip> {
        // The generation orders a restarted agent after its previous life.
        let generation = now_ms();
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node.to_owned(), generation, section.advertise),
            cluster_id: section.cluster_id.clone(),
            gossip_interval: section.gossip_interval,
            listen_addr: section.listen,
            seed_nodes: section.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: PHI_THRESHOLD,
                initial_interval: section.gossip_interval,
                dead_node_grace_period: DEAD_NODE_GRACE,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: DEAD_NODE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let stats = Arc::new(TransportStats::default());
        let transport = SealedTransport::new(key, stats.clone());
        let published = kv::encode(record);
        let handle = spawn_chitchat(config, published.clone().into_iter().collect(), &transport)
            .await
            .with_context(|| format!("starting gossip on {}", section.listen))?;
        let changed = Arc::new(Notify::new());
        let (listener, live_nodes) = handle
            .with_chitchat(|c| {
                let notify = changed.clone();
                // Fires as a delta is applied, before the next gossip round: new
                // endpoints reach the maps without waiting a round.
                let listener = c.subscribe_event("", move |_| notify.notify_one());
                (listener, c.live_nodes_watcher())
            })
            .await;
        Ok(Gossip {
            handle,
            stats,
            changed,
            _listener: listener,
            live_nodes,
            published,
        })
    }

    pub fn generation(&self) -> u64 {
        self.handle.chitchat_id().generation_id
    }

    /// Waits until the cluster changed: a key was set anywhere, or the set of
    /// live nodes or their versions changed (deletions and deaths show here).
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.changed.notified() => {}
            r = self.live_nodes.changed() => {
                if r.is_err() {
                    // The gossip task ended; don't spin.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Makes this node's announced state equal `record`, then pushes it to live
    /// peers at once.
    pub async fn publish(&mut self, record: &NodeRecord) {
        let want = kv::encode(record);
        if want == self.published {
            return;
        }
        let old = std::mem::replace(&mut self.published, want.clone());
        let peers = self
            .handle
            .with_chitchat(|c| {
                let own = c.self_node_state();
                for key in old.keys().filter(|k| !want.contains_key(*k)) {
                    own.delete(key);
                }
                for (key, value) in &want {
                    if old.get(key) != Some(value) {
                        own.set(key, value);
                    }
                }
                let me = c.self_chitchat_id().clone();
                c.live_nodes()
                    .filter(|id| **id != me)
                    .map(|id| id.gossip_advertise_addr)
                    .take(PUSH_FANOUT)
                    .collect::<Vec<_>>()
            })
            .await;
        for peer in peers {
            let _ = self.handle.gossip(peer);
        }
    }

    /// Every other node's record, any generation, live or not.
    pub async fn records(&self) -> Vec<NodeRecord> {
        self.handle
            .with_chitchat(|c| {
                let me = c.self_chitchat_id().clone();
                let live: std::collections::BTreeSet<ChitchatId> =
                    c.live_nodes().cloned().collect();
                c.node_states()
                    .iter()
                    .filter(|(id, _)| **id != me)
                    .map(|(id, state)| {
                        kv::decode(
                            &id.node_id,
                            id.generation_id,
                            live.contains(id),
                            Some(id.gossip_advertise_addr),
                            state.key_values(),
                        )
                    })
                    .collect()
            })
            .await
    }

    pub fn transport_counts(&self) -> TransportCounts {
        self.stats.counts()
    }

    /// The transport's live counters.
    pub fn transport_stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}
