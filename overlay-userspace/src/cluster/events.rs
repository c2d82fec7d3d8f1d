//! What changed between two views of the cluster, as events an operator's log
//! pipeline can count: a node joined or died, a network was created or
//! removed, a conflict was refused. A pure function of the two views.

use std::net::{Ipv4Addr, SocketAddr};

use super::resolve::{Member, Resolved};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Another node is live: new, restarted, or back from the dead.
    NodeJoined {
        node: String,
        vtep: Option<Ipv4Addr>,
        gossip: Option<SocketAddr>,
        generation: u64,
    },
    /// A live node stopped answering (or left).
    NodeDied {
        node: String,
        generation: u64,
    },
    NetworkCreated {
        network: String,
        vni: u32,
        subnet: String,
        origin: String,
        /// The options that shape what containers get, so a log line alone
        /// tells why a container has no way out or a smaller MTU.
        gateway: Ipv4Addr,
        internal: bool,
        mtu: Option<u32>,
    },
    NetworkRemoved {
        network: String,
        vni: u32,
    },
    /// Something announced was not accepted (the reason in words).
    ConflictRefused {
        conflict: String,
    },
}

impl ClusterEvent {
    /// The event's name, as the `event` field of its log line.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterEvent::NodeJoined { .. } => "node_joined",
            ClusterEvent::NodeDied { .. } => "node_died",
            ClusterEvent::NetworkCreated { .. } => "network_created",
            ClusterEvent::NetworkRemoved { .. } => "network_removed",
            ClusterEvent::ConflictRefused { .. } => "conflict_refused",
        }
    }
}

fn live_other(m: &Member) -> bool {
    m.live && !m.is_self
}

/// The events between `before` and `after`. The first view an agent resolves
/// has no `before` worth comparing networks with (they were there before it
/// started), so `first` leaves them out; nodes and conflicts still count.
pub fn changes(before: &Resolved, after: &Resolved, first: bool) -> Vec<ClusterEvent> {
    let mut events = Vec::new();
    let was_live = |m: &Member| {
        before
            .members
            .iter()
            .any(|b| b.name == m.name && b.generation == m.generation && live_other(b))
    };
    for m in after
        .members
        .iter()
        .filter(|m| live_other(m) && !was_live(m))
    {
        events.push(ClusterEvent::NodeJoined {
            node: m.name.clone(),
            vtep: m.vtep,
            gossip: m.gossip_addr,
            generation: m.generation,
        });
    }
    for b in before.members.iter().filter(|b| live_other(b)) {
        let still_live = after
            .members
            .iter()
            .any(|m| m.name == b.name && m.generation == b.generation && live_other(m));
        // A restart shows as the new generation joining; the old one dies
        // quietly with it.
        let restarted = after
            .members
            .iter()
            .any(|m| m.name == b.name && m.generation != b.generation && live_other(m));
        if !still_live && !restarted {
            events.push(ClusterEvent::NodeDied {
                node: b.name.clone(),
                generation: b.generation,
            });
        }
    }
    if !first {
        for (name, n) in &after.networks {
            if before.networks.get(name).is_none_or(|b| b.vni != n.vni) {
                events.push(ClusterEvent::NetworkCreated {
                    network: name.clone(),
                    vni: n.vni,
                    subnet: n.subnet.to_string(),
                    origin: n.origin.clone(),
                    gateway: n.gateway(),
                    internal: n.internal,
                    mtu: n.mtu,
                });
            }
        }
        for (name, b) in &before.networks {
            if !after.networks.contains_key(name) {
                events.push(ClusterEvent::NetworkRemoved {
                    network: name.clone(),
                    vni: b.vni,
                });
            }
        }
    }
    for c in after
        .conflicts
        .iter()
        .filter(|c| !before.conflicts.contains(c))
    {
        events.push(ClusterEvent::ConflictRefused {
            conflict: c.clone(),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::record::NetworkDef;

    fn member(name: &str, generation: u64, live: bool) -> Member {
        Member {
            name: name.into(),
            generation,
            live,
            is_self: false,
            vtep: Some(Ipv4Addr::new(192, 168, 1, 5)),
            gossip_addr: None,
            endpoints: 0,
            refused: None,
        }
    }

    fn view(members: Vec<Member>, networks: &[(&str, u32)], conflicts: &[&str]) -> Resolved {
        Resolved {
            members,
            networks: networks
                .iter()
                .map(|(name, vni)| {
                    (
                        (*name).to_owned(),
                        NetworkDef {
                            name: (*name).to_owned(),
                            vni: *vni,
                            subnet: "10.0.0.0/24".parse().unwrap(),
                            created_ms: 1,
                            origin: "n1".into(),
                            gateway: None,
                            aux: Vec::new(),
                            mtu: None,
                            internal: false,
                        },
                    )
                })
                .collect(),
            conflicts: conflicts.iter().map(|c| (*c).to_owned()).collect(),
            ..Resolved::default()
        }
    }

    fn names(events: &[ClusterEvent]) -> Vec<&'static str> {
        events.iter().map(ClusterEvent::name).collect()
    }

    #[test]
    fn joins_deaths_and_restarts() {
        let empty = view(vec![], &[], &[]);
        let two = view(vec![member("n2", 1, true)], &[], &[]);
        assert_eq!(names(&changes(&empty, &two, false)), ["node_joined"]);
        assert!(changes(&two, &two, false).is_empty());
        let dead = view(vec![member("n2", 1, false)], &[], &[]);
        assert_eq!(names(&changes(&two, &dead, false)), ["node_died"]);
        assert_eq!(names(&changes(&dead, &two, false)), ["node_joined"]);
        let restarted = view(
            vec![member("n2", 1, false), member("n2", 2, true)],
            &[],
            &[],
        );
        assert_eq!(names(&changes(&two, &restarted, false)), ["node_joined"]);
    }

    #[test]
    fn networks_and_conflicts_but_not_the_networks_an_agent_starts_with() {
        let before = view(vec![], &[("a", 1)], &[]);
        let after = view(vec![], &[("b", 2)], &["VNI 3 is taken"]);
        assert_eq!(
            names(&changes(&before, &after, false)),
            ["network_created", "network_removed", "conflict_refused"]
        );
        assert_eq!(
            names(&changes(&Resolved::default(), &after, true)),
            ["conflict_refused"]
        );
    }
}
