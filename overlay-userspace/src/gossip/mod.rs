//! Gossip membership over chitchat: each node's [`NodeRecord`] is its chitchat
//! key-value state ([`kv`]); chitchat spreads it by anti-entropy, and its phi-accrual
//! failure detector says which nodes are live.

pub mod chunk;
pub mod key;
pub mod kv;
pub mod relay;
pub mod replay;
pub mod transport;
pub mod wire;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle,
    spawn_chitchat,
};
use tokio::sync::Notify;

use self::{
    key::Keyring,
    transport::{SealedTransport, SharedKeyring, TransportCounts, TransportStats, max_datagram},
};
use crate::{cluster::record::NodeRecord, config::ClusterSection};

/// A node is declared dead after `PHI_THRESHOLD` mean heartbeat intervals of
/// silence. Chitchat's default, with which Quickwit runs 1 s rounds: with the
/// default 1 s gossip interval, about 3 s (heartbeats arrive more often than
/// once a round).
const PHI_THRESHOLD: f64 = 8.0;
/// How long a dead node's state (network definitions, address blocks) is kept.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(3600);
/// How many live peers a local change is pushed to at once, before the next round.
const PUSH_FANOUT: usize = 8;

pub struct Gossip {
    handle: Arc<ChitchatHandle>,
    /// Passes news from other nodes on ([`relay`]).
    relay: tokio::task::JoinHandle<()>,
    stats: Arc<TransportStats>,
    keys: SharedKeyring,
    changed: Arc<Notify>,
    _listener: ListenerHandle,
    live_nodes: tokio::sync::watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>>,
    /// The record as announced: the next one is announced as what changed
    /// from it ([`kv::delta`]).
    published: NodeRecord,
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
        keys: Keyring,
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
        let keys = Arc::new(RwLock::new(keys));
        let transport = SealedTransport::new(
            keys.clone(),
            stats.clone(),
            section.advertise,
            max_datagram(section.mtu, section.listen),
        );
        let handle = spawn_chitchat(config, kv::encode(record).into_iter().collect(), &transport)
            .await
            .with_context(|| format!("starting gossip on {}", section.listen))?;
        let changed = Arc::new(Notify::new());
        let news = Arc::new(Notify::new());
        let (listener, live_nodes) = handle
            .with_chitchat(|c| {
                let (notify, news) = (changed.clone(), news.clone());
                let me = c.self_chitchat_id().clone();
                // Fires as a delta is applied, before the next gossip round: new
                // endpoints reach the maps without waiting a round, and other
                // nodes hear of them without waiting for this node's. This
                // node's own keys change only in `publish`, inside a sync: a
                // second sync after each of them would double every change's
                // cost (a sixth of an endpoint add at 2,000).
                let listener = c.subscribe_event("", move |event| {
                    if *event.node != me {
                        notify.notify_one();
                        news.notify_one();
                    }
                });
                (listener, c.live_nodes_watcher())
            })
            .await;
        let handle = Arc::new(handle);
        Ok(Gossip {
            relay: relay::spawn(handle.clone(), news),
            handle,
            stats,
            keys,
            changed,
            _listener: listener,
            live_nodes,
            published: record.clone(),
        })
    }

    pub fn generation(&self) -> u64 {
        self.handle.chitchat_id().generation_id
    }

    /// Waits until the cluster changed: a key was set by another node, or the set of
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
        let delta = kv::delta(&self.published, record);
        if delta.is_empty() {
            return;
        }
        self.published.clone_from(record);
        let peers = self
            .handle
            .with_chitchat(|c| {
                let own = c.self_node_state();
                for key in &delta.delete {
                    own.delete(key);
                }
                for (key, value) in &delta.set {
                    own.set(key, value);
                }
                relay::random_live_peers(c, PUSH_FANOUT)
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

    /// Seals with, and opens with, `keys` from now on: a key rotation's step,
    /// without a restart.
    pub fn replace_keys(&self, keys: Keyring) {
        *self.keys.write().expect("keyring lock") = keys;
    }

    pub async fn shutdown(self) {
        self.relay.abort();
        // The relay holds the other handle until it has stopped.
        let _ = self.relay.await;
        match Arc::try_unwrap(self.handle) {
            Ok(handle) => {
                let _ = handle.shutdown().await;
            }
            Err(shared) => {
                let _ = shared.initiate_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        path::PathBuf,
        time::Instant,
    };

    use super::*;
    use crate::{cluster::record::EndpointRecord, gossip::key::ClusterKey, model::Mac};

    const NODES: u8 = 40;
    const ENDPOINTS: u8 = 60;

    fn record(i: u8) -> NodeRecord {
        let mut r = NodeRecord {
            name: format!("n{i}"),
            vtep: Some(Ipv4Addr::new(172, 30, 0, i)),
            ..NodeRecord::default()
        };
        for e in 0..ENDPOINTS {
            let ip = Ipv4Addr::new(10, i, e, 7);
            r.endpoints.push(EndpointRecord {
                network: "a-network-with-a-long-name".into(),
                ip,
                mac: Mac::from_ipv4(ip),
            });
        }
        r
    }

    /// Starts `NODES` nodes on loopback addresses of their own, each announcing
    /// `ENDPOINTS` endpoints, all seeded by the first; how long until every node
    /// knows every other's every endpoint, and the largest datagram sent.
    async fn converge(mtu: u32, net: u8) -> (Duration, u64) {
        let keys = Keyring::new(&[ClusterKey::generate()]);
        let addr = |i: u8| SocketAddr::from(([127, net, 0, i], 7946));
        let started = Instant::now();
        let mut nodes = Vec::new();
        for i in 1..=NODES {
            let section = ClusterSection {
                listen: addr(i),
                advertise: addr(i),
                seeds: vec![addr(1)],
                key_file: PathBuf::new(),
                gossip_interval: Duration::from_millis(200),
                cluster_id: "test".into(),
                mtu,
            };
            let g = Gossip::start(&format!("n{i}"), &section, keys.clone(), &record(i))
                .await
                .unwrap();
            nodes.push(g);
        }
        let want = usize::from(NODES - 1) * usize::from(ENDPOINTS);
        loop {
            let mut done = true;
            for g in &nodes {
                let records = g.records().await;
                let known: usize = records
                    .iter()
                    .filter(|r| r.live)
                    .map(|r| r.endpoints.len())
                    .sum();
                done &= known == want;
            }
            if done {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no convergence within 120 s at MTU {mtu}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();
        let counts: Vec<_> = nodes.iter().map(Gossip::transport_counts).collect();
        for g in nodes {
            g.shutdown().await;
        }
        for c in &counts {
            assert_eq!((c.rejected, c.replayed, c.stale), (0, 0, 0), "{c:?}");
        }
        (took, counts.iter().map(|c| c.largest_sent).max().unwrap())
    }

    #[tokio::test]
    async fn many_nodes_with_much_state_converge_in_datagrams_under_the_mtu() {
        // An MTU of 65535 sends each message whole, as before chunks existed.
        let (whole, whole_largest) = converge(65_535, 91).await;
        let (cut, cut_largest) = converge(1_500, 92).await;
        eprintln!(
            "{NODES} nodes x {ENDPOINTS} endpoints: converged in {whole:?} with messages whole \
             (largest datagram {whole_largest} B), in {cut:?} cut to MTU 1500 (largest {cut_largest} B)"
        );
        assert!(cut_largest <= 1_472, "a datagram of {cut_largest} B");
        assert!(
            whole_largest > 1_472,
            "the state was too small to need chunks"
        );
    }
}
