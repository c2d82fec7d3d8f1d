//! The agent's side of the cluster: gossip (when the file has a `[cluster]`
//! section), the resolved view of every record, and the warm-up that keeps a
//! restarted agent from withdrawing what it has not heard about yet.

use std::time::{Duration, Instant};

use anyhow::Result;
use log::{info, warn};

use crate::{
    api::proto::MemberList,
    cluster::{
        events::{self, ClusterEvent},
        record::NodeRecord,
        resolve::{Resolved, resolve},
    },
    config::ClusterSection,
    gossip::{Gossip, key::Keyring, now_ms, transport::TransportStats},
};

/// A restarted agent keeps remote entries it has not heard about yet for at most
/// this long, waiting for gossip to tell it the cluster's state.
const WARMUP: Duration = Duration::from_secs(5);

pub struct Membership {
    gossip: Option<Gossip>,
    generation: u64,
    resolved: Resolved,
    started: Instant,
    warm: bool,
    /// How long an address block claim takes to be seen by every node.
    settle: Duration,
    /// Whether `resolved` is a view resolved by this agent, rather than empty.
    resolved_once: bool,
}

impl Membership {
    /// This node alone, until [`Membership::join`].
    pub fn alone() -> Membership {
        Membership {
            gossip: None,
            generation: now_ms(),
            resolved: Resolved::default(),
            started: Instant::now(),
            warm: false,
            settle: Duration::ZERO,
            resolved_once: false,
        }
    }

    /// Joins the cluster's gossip, announcing `record`.
    pub async fn join(
        &mut self,
        node: &str,
        section: &ClusterSection,
        keys: Keyring,
        record: &NodeRecord,
    ) -> Result<()> {
        let gossip = Gossip::start(node, section, keys, record).await?;
        self.generation = gossip.generation();
        // A claim is pushed and relayed at once; two rounds cover a lost push.
        self.settle = 2 * section.gossip_interval + Duration::from_millis(500);
        self.gossip = Some(gossip);
        Ok(())
    }

    /// This agent's chitchat generation: its start time.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// Whether gossip has had time to tell this agent the cluster's state, so
    /// that what the view lacks may be withdrawn from the maps.
    pub fn is_warm(&self) -> bool {
        self.warm
    }

    /// How long to wait before a block claim counts; `None` alone, where a claim
    /// settles at once.
    pub fn claim_settle(&self) -> Option<Duration> {
        self.gossip.as_ref().map(|_| self.settle)
    }

    /// Waits until the cluster changed; never, without gossip.
    pub async fn changed(&mut self) {
        match &mut self.gossip {
            Some(g) => g.changed().await,
            None => std::future::pending().await,
        }
    }

    /// Resolves the cluster from `own` and every other record, and logs what
    /// changed: one line per cluster event.
    pub async fn resolve(&mut self, own: &NodeRecord) -> &Resolved {
        let others = match &self.gossip {
            Some(g) => g.records().await,
            None => Vec::new(),
        };
        if !self.warm {
            // Warm once gossip has shown a live peer, or nobody answered for a while.
            self.warm = self.gossip.is_none()
                || others.iter().any(|r| r.live)
                || self.started.elapsed() > WARMUP;
        }
        let resolved = resolve(own, &others, now_ms());
        for event in events::changes(&self.resolved, &resolved, !self.resolved_once) {
            log_event(&event);
        }
        self.resolved_once = true;
        self.resolved = resolved;
        &self.resolved
    }

    /// The view of this node alone, before any gossip: what a starting agent
    /// fills its tables from first. Says nothing about warmth (gossip may not
    /// be joined yet).
    pub fn resolve_own(&mut self, own: &NodeRecord) -> &Resolved {
        self.resolved = resolve(own, &[], now_ms());
        &self.resolved
    }

    /// Announces `record` (a no-op without gossip, or when nothing changed).
    pub async fn publish(&mut self, record: &NodeRecord) {
        if let Some(g) = self.gossip.as_mut() {
            g.publish(record).await;
        }
    }

    /// Seals and opens gossip with `keys` from now on; false without gossip.
    pub fn replace_keys(&self, keys: Keyring) -> bool {
        self.gossip.as_ref().map(|g| g.replace_keys(keys)).is_some()
    }

    /// The gossip transport's counters, once gossip runs.
    pub fn transport_stats(&self) -> Option<std::sync::Arc<TransportStats>> {
        self.gossip.as_ref().map(Gossip::transport_stats)
    }

    pub fn member_list(&self, node: &str) -> MemberList {
        MemberList {
            node: node.to_owned(),
            gossip: self.gossip.is_some(),
            members: self.resolved.members.clone(),
            transport: self.gossip.as_ref().map(Gossip::transport_counts),
            conflicts: self.resolved.conflicts.clone(),
        }
    }

    /// Leaves the gossip cluster.
    pub async fn leave(&mut self) {
        if let Some(g) = self.gossip.take() {
            g.shutdown().await;
        }
    }
}

/// One line per event, its fields as key-values (JSON members with
/// `--log-format json`).
fn log_event(event: &ClusterEvent) {
    let name = event.name();
    match event {
        ClusterEvent::NodeJoined {
            node,
            vtep,
            gossip,
            generation,
        } => {
            let vtep = vtep.map_or_else(|| "none".to_owned(), |v| v.to_string());
            let gossip = gossip.map_or_else(|| "none".to_owned(), |g| g.to_string());
            info!(
                event = name, node = node.as_str(), vtep = vtep.as_str(), gossip = gossip.as_str(),
                generation = *generation;
                "node {node} joined (VTEP {vtep}, gossip {gossip}, generation {generation})"
            );
        }
        ClusterEvent::NodeDied { node, generation } => warn!(
            event = name, node = node.as_str(), generation = *generation;
            "node {node} died: its endpoints are withdrawn"
        ),
        ClusterEvent::NetworkCreated {
            network,
            vni,
            subnet,
            origin,
            gateway,
            internal,
            mtu,
        } => {
            let gateway = gateway.to_string();
            // 0: each node's underlay MTU minus the VXLAN overhead.
            let mtu = mtu.unwrap_or(0);
            let shape = match (*internal, mtu) {
                (true, 0) => format!("internal, gateway address {gateway} reserved"),
                (false, 0) => format!("gateway {gateway}"),
                (true, mtu) => format!("internal, gateway address {gateway} reserved, MTU {mtu}"),
                (false, mtu) => format!("gateway {gateway}, MTU {mtu}"),
            };
            info!(
                event = name, network = network.as_str(), vni = *vni, subnet = subnet.as_str(),
                origin = origin.as_str(), gateway = gateway.as_str(), internal = *internal, mtu = mtu;
                "network {network} created (VNI {vni}, {subnet}, {shape}, by {origin})"
            );
        }
        ClusterEvent::NetworkRemoved { network, vni } => info!(
            event = name, network = network.as_str(), vni = *vni;
            "network {network} removed (VNI {vni})"
        ),
        ClusterEvent::ConflictRefused { conflict } => warn!(
            event = name, conflict = conflict.as_str();
            "refused: {conflict}"
        ),
    }
}
