//! The agent's side of the cluster: gossip (when the file has a `[cluster]`
//! section), the resolved view of every record, and the warm-up that keeps a
//! restarted agent from withdrawing what it has not heard about yet.

use std::time::{Duration, Instant};

use anyhow::Result;
use log::warn;

use crate::{
    api::proto::MemberList,
    cluster::{
        record::NodeRecord,
        resolve::{Resolved, resolve},
    },
    config::ClusterSection,
    gossip::{Gossip, key::ClusterKey, now_ms},
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
        }
    }

    /// Joins the cluster's gossip, announcing `record`.
    pub async fn join(
        &mut self,
        node: &str,
        section: &ClusterSection,
        key: &ClusterKey,
        record: &NodeRecord,
    ) -> Result<()> {
        let gossip = Gossip::start(node, section, key, record).await?;
        self.generation = gossip.generation();
        self.settle = 4 * section.gossip_interval + Duration::from_millis(500);
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

    /// Resolves the cluster from `own` and every other record, and logs the
    /// conflicts that are new.
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
        for c in resolved
            .conflicts
            .iter()
            .filter(|c| !self.resolved.conflicts.contains(c))
        {
            warn!("{c}");
        }
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
