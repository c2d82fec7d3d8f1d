//! One peer: a cluster member made of the agent's gossip module and nothing
//! else (no maps, no veths), driven by commands.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
};

use anyhow::Result;
use overlay_userspace::{
    cluster::record::{EndpointRecord, NodeRecord},
    config::ClusterSection,
    gossip::{Gossip, key::Keyring, now_ms},
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::{announce::Layout, report};

pub enum Command {
    /// Report when an endpoint with this address shows in another node's record.
    Watch(Ipv4Addr),
    /// Announce one more endpoint.
    Add(EndpointRecord),
    /// How many endpoints this peer sees announced, its own included.
    View(oneshot::Sender<usize>),
}

pub struct Peer {
    index: usize,
    gossip: Gossip,
    record: NodeRecord,
    watching: BTreeSet<Ipv4Addr>,
}

impl Peer {
    pub async fn join(
        index: usize,
        name: &str,
        section: &ClusterSection,
        keys: Keyring,
        layout: &Layout,
    ) -> Result<Peer> {
        let mut record = layout.record(index, name, section.advertise);
        let gossip = Gossip::start(name, section, keys, &record).await?;
        record.generation = gossip.generation();
        Ok(Peer {
            index,
            gossip,
            record,
            watching: BTreeSet::new(),
        })
    }

    /// Serves commands until the channel closes, then leaves the cluster.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Watch(ip)) => {
                        self.watching.insert(ip);
                        // It may have arrived before the command did.
                        self.look().await;
                    }
                    Some(Command::Add(endpoint)) => {
                        let ip = endpoint.ip;
                        self.record.endpoints.push(endpoint);
                        self.record.endpoints.sort();
                        let at_ms = now_ms();
                        self.gossip.publish(&self.record).await;
                        report(&json!({"event": "published", "peer": self.index, "ip": ip, "at_ms": at_ms}));
                    }
                    Some(Command::View(reply)) => {
                        let _ = reply.send(self.view().await);
                    }
                },
                () = self.gossip.changed(), if !self.watching.is_empty() => self.look().await,
            }
        }
        self.gossip.shutdown().await;
    }

    /// Reports the watched addresses now announced by others. The time is taken
    /// after the records were read: never earlier than the arrival.
    async fn look(&mut self) {
        let records = self.gossip.records().await;
        let at_ms = now_ms();
        let seen: Vec<Ipv4Addr> = self
            .watching
            .iter()
            .copied()
            .filter(|ip| {
                records
                    .iter()
                    .any(|r| r.endpoints.iter().any(|e| e.ip == *ip))
            })
            .collect();
        for ip in seen {
            self.watching.remove(&ip);
            report(&json!({"event": "seen", "peer": self.index, "ip": ip, "at_ms": at_ms}));
        }
    }

    async fn view(&self) -> usize {
        let others: usize = self
            .gossip
            .records()
            .await
            .iter()
            .map(|r| r.endpoints.len())
            .sum();
        others + self.record.endpoints.len()
    }
}

/// The address peer `index` gossips on.
pub fn peer_addr(first: Ipv4Addr, port: u16, index: usize) -> SocketAddr {
    let offset = u32::try_from(index).expect("a few hundred peers at most");
    SocketAddr::from((Ipv4Addr::from(u32::from(first) + offset), port))
}
