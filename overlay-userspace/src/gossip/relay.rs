//! News passed on at once. A node that learns a key from another node gossips
//! with a few random live peers right away instead of at its next round, as
//! the node that made the change does ([`super::Gossip::publish`]). Rounds
//! are long (1 s by default: every round sends a digest of every node, so its
//! cost grows with the cluster), and this is what keeps a change's spread to
//! a few round trips per hop instead of several rounds. At rest nothing is new
//! and nothing is relayed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chitchat::{Chitchat, ChitchatHandle};
use rand::seq::IteratorRandom as _;
use tokio::{sync::Notify, task::JoinHandle};

/// How many peers a node passes news on to.
pub const RELAY_FANOUT: usize = 3;
/// News arriving within this of the last relay waits for it to pass, then
/// goes out in one: a node catching up on many keys relays a few times, not
/// once per key.
const RELAY_GAP: Duration = Duration::from_millis(50);

/// Relays whenever `news` is notified, until aborted.
pub fn spawn(handle: Arc<ChitchatHandle>, news: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            news.notified().await;
            let peers = handle
                .with_chitchat(|c| random_live_peers(c, RELAY_FANOUT))
                .await;
            for peer in peers {
                let _ = handle.gossip(peer);
            }
            tokio::time::sleep(RELAY_GAP).await;
        }
    })
}

/// Up to `n` live nodes other than this one, picked at random: the same few
/// would otherwise take every push and relay.
pub fn random_live_peers(c: &Chitchat, n: usize) -> Vec<SocketAddr> {
    let me = c.self_chitchat_id();
    c.live_nodes()
        .filter(|id| *id != me)
        .map(|id| id.gossip_advertise_addr)
        .sample(&mut rand::rng(), n)
}
