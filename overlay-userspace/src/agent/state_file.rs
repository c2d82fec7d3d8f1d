//! What this node was told at run time (through the local API) and what it took
//! over from the cluster, kept on disk so that a restarted agent announces and
//! serves the same things. The cluster file stays the source for what it defines.
//!
//! Requests change it only through a [`Change`], which `Node::commit` saves
//! before anything else sees it.
//!
//! On disk it is a snapshot (`state.json`, replaced atomically) and a journal
//! beside it (`state.journal`, one [`Change`] a line, appended and synced):
//! a change costs a line, not the whole node's endpoints serialized and
//! written again. A load replays the journal over the snapshot; every
//! [`JOURNAL_LIMIT`] changes, at each start and at a clean stop the state is
//! written whole again and the journal emptied.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    cluster::{
        record::{BlockClaim, NetworkDef},
        resolve::Resolved,
    },
    model::{Mac, Plumbing, PortMapping},
};

/// An endpoint added through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEndpoint {
    pub network: String,
    /// A namespace name or path.
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Its name inside the namespace (eth0, eth1, ...), to find it again; for
    /// a runtime's attachment, the ifname it asked for.
    pub container_ifname: String,
    /// The runtime's container ID; `None` for endpoints the CLI added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "is_agent_plumbing")]
    pub plumbing: Plumbing,
    /// Its published ports (Docker's `-p`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

/// An address a runtime's IPAM took for an endpoint still to come (Docker's
/// RequestAddress, before Join): no one else on this node is given it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reservation {
    pub network: String,
    pub ip: Ipv4Addr,
}

fn is_agent_plumbing(p: &Plumbing) -> bool {
    *p == Plumbing::Agent
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    /// This node's VTEP and when it first announced it.
    #[serde(default)]
    pub vtep: Option<(Ipv4Addr, u64)>,
    /// Network definitions this node holds besides its file's: created here, or
    /// copied from the cluster so they outlive the node that created them.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkDef>,
    #[serde(default)]
    pub removed: BTreeMap<String, u64>,
    #[serde(default)]
    pub endpoints: Vec<SavedEndpoint>,
    #[serde(default)]
    pub blocks: Vec<BlockClaim>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Reservation>,
}

/// One change a request (or the agent's start) makes to the runtime state;
/// a line of the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// This node's VTEP, first announced at the given time.
    Vtep(Ipv4Addr, u64),
    CreateNetwork(NetworkDef),
    /// Removes every run-time definition of the name made up to `removed_ms`,
    /// the conflicting ones too, and this node's address blocks in it.
    RemoveNetwork {
        name: String,
        removed_ms: u64,
    },
    ClaimBlock(BlockClaim),
    AddEndpoint(SavedEndpoint),
    RemoveEndpoint {
        network: String,
        netns: String,
    },
    /// Replaces the published ports of an endpoint.
    SetPorts {
        network: String,
        netns: String,
        ports: Vec<PortMapping>,
    },
    Reserve(Reservation),
    /// Gives a reserved address back; one not reserved is fine.
    Release(Reservation),
}

impl RuntimeState {
    /// The state after `change`. Applying a change the state already holds
    /// changes nothing (an endpoint or a block is not added twice), so a
    /// journal replayed over a snapshot written after some of its lines (a
    /// crash between the snapshot and the journal's truncation) gives the
    /// same state.
    pub fn with(&self, change: &Change) -> RuntimeState {
        let mut next = self.clone();
        next.apply(change);
        next
    }

    /// [`RuntimeState::with`] in place: a change costs what it touches, not a
    /// copy of every endpoint.
    pub fn apply(&mut self, change: &Change) {
        let next = self;
        match change {
            Change::Vtep(ip, since) => next.vtep = Some((*ip, *since)),
            Change::CreateNetwork(def) => {
                next.networks.insert(def.name.clone(), def.clone());
            }
            Change::RemoveNetwork { name, removed_ms } => {
                next.networks.remove(name);
                next.removed.insert(name.clone(), *removed_ms);
                next.blocks.retain(|b| &b.network != name);
                next.reserved.retain(|r| &r.network != name);
            }
            Change::ClaimBlock(claim) => {
                if !next.blocks.contains(claim) {
                    next.blocks.push(claim.clone());
                }
            }
            Change::AddEndpoint(e) => {
                next.endpoints
                    .retain(|x| !(x.network == e.network && x.netns == e.netns));
                next.endpoints.push(e.clone());
            }
            Change::RemoveEndpoint { network, netns } => next
                .endpoints
                .retain(|e| !(&e.network == network && &e.netns == netns)),
            Change::SetPorts {
                network,
                netns,
                ports,
            } => {
                for e in &mut next.endpoints {
                    if &e.network == network && &e.netns == netns {
                        e.ports.clone_from(ports);
                    }
                }
            }
            Change::Reserve(r) => {
                if !next.reserved.contains(r) {
                    next.reserved.push(r.clone());
                }
            }
            Change::Release(r) => next.reserved.retain(|x| x != r),
        }
    }

    /// The state with the accepted networks this node lacks copied (`in_file`
    /// says which its cluster file defines) and the copies the cluster removed
    /// dropped, so that a definition outlives the node that made it; `None`
    /// if that changes nothing (the common case, checked without a copy).
    ///
    /// This only copies definitions and removals that are already in some
    /// record, so resolving again after it gives the same view.
    pub fn taken_over(
        &self,
        resolved: &Resolved,
        in_file: impl Fn(&str) -> bool,
    ) -> Option<RuntimeState> {
        let copies: Vec<(&String, &NetworkDef)> = resolved
            .networks
            .iter()
            .filter(|(name, _)| !in_file(name) && !self.networks.contains_key(*name))
            .collect();
        let removals: Vec<(&String, u64)> = resolved
            .removed
            .iter()
            .filter(|&(name, &removed_ms)| {
                self.networks
                    .get(name)
                    .is_some_and(|def| def.removed_by(removed_ms))
                    || self.removed.get(name) < Some(&removed_ms)
            })
            .map(|(name, &removed_ms)| (name, removed_ms))
            .collect();
        if copies.is_empty() && removals.is_empty() {
            return None;
        }
        let mut next = self.clone();
        for (name, def) in copies {
            next.networks.insert(name.clone(), def.clone());
        }
        for (name, removed_ms) in removals {
            if next
                .networks
                .get(name)
                .is_some_and(|def| def.removed_by(removed_ms))
            {
                next.networks.remove(name);
            }
            if next.removed.get(name) < Some(&removed_ms) {
                next.removed.insert(name.clone(), removed_ms);
            }
        }
        Some(next)
    }
}

/// Changes the journal holds before the state is written whole again: at
/// 2,000 endpoints a snapshot is about 0.5 MB, so this keeps what a change
/// writes, on average, to a line and a few hundred bytes.
const JOURNAL_LIMIT: usize = 256;

pub struct StateFile {
    path: PathBuf,
    journal: PathBuf,
    /// Lines in the journal since the last snapshot.
    journaled: Cell<usize>,
    /// The journal, open for appending once a change was written (O_APPEND,
    /// so a snapshot's truncation through another handle is fine).
    journal_file: RefCell<Option<File>>,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
            journal: dir.join("state.journal"),
            journaled: Cell::new(0),
            journal_file: RefCell::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, the journal replayed over the snapshot; empty if
    /// there is none yet. A last line cut short (a crash while appending it,
    /// before the change was answered) is left out.
    pub fn load(&self) -> Result<RuntimeState> {
        let mut state = match fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid state file", self.path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RuntimeState::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let journal = match fs::read_to_string(&self.journal) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.journal.display())),
        };
        for (n, line) in journal.split_inclusive('\n').enumerate() {
            // Only the last piece can lack its newline: a line cut short.
            if !line.ends_with('\n') {
                break;
            }
            let change: Change = serde_json::from_str(line).with_context(|| {
                format!(
                    "line {} of {} is not a change",
                    n + 1,
                    self.journal.display()
                )
            })?;
            state = state.with(&change);
        }
        Ok(state)
    }

    /// Saves `state` (the saved state) after `change`, then applies it: a line
    /// appended to the journal and synced, or every [`JOURNAL_LIMIT`] lines
    /// the state written whole. Either way it is on disk when this returns; if
    /// saving fails, `state` is left as it was.
    pub fn commit(&self, state: &mut RuntimeState, change: &Change) -> Result<()> {
        if self.journaled.get() >= JOURNAL_LIMIT {
            let next = state.with(change);
            self.save(&next)?;
            *state = next;
            return Ok(());
        }
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        let mut journal = self.journal_file.borrow_mut();
        let file = match journal.as_mut() {
            Some(file) => file,
            None => journal.insert(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&self.journal)
                    .with_context(|| format!("opening {}", self.journal.display()))?,
            ),
        };
        if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
            // A line half-written is cut short and left out on load; the
            // next change reopens the file.
            *journal = None;
            return Err(e).with_context(|| format!("appending to {}", self.journal.display()));
        }
        self.journaled.set(self.journaled.get() + 1);
        state.apply(change);
        Ok(())
    }

    /// Writes the state whole, atomically (a crash leaves the old state or
    /// the new one), then empties the journal it holds. The journal is
    /// truncated, not removed, so that appending never creates it.
    pub fn save(&self, state: &RuntimeState) -> Result<()> {
        write_atomically(&self.path, serde_json::to_string_pretty(state)?.as_bytes())?;
        let journal = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.journal)
            .with_context(|| format!("emptying {}", self.journal.display()))?;
        journal.sync_all()?;
        self.journaled.set(0);
        Ok(())
    }
}

/// Replaces `path` with `contents` (creating its directory): a crash leaves
/// the old file or the new one, never half of either.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(netns: &str, last: u8) -> SavedEndpoint {
        SavedEndpoint {
            network: "red".into(),
            netns: netns.into(),
            ip: Ipv4Addr::new(10, 1, 0, last),
            mac: Mac([2, 0x42, 10, 1, 0, last]),
            container_ifname: "eth0".into(),
            container_id: None,
            plumbing: Plumbing::Agent,
            ports: Vec::new(),
        }
    }

    #[test]
    fn the_journal_replayed_over_the_snapshot_gives_the_state_saved() {
        let dir = std::env::temp_dir().join(format!("overlay-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let file = StateFile::new(&dir);
        let mut state = RuntimeState::default().with(&Change::CreateNetwork(def("red", 10)));
        file.save(&state).unwrap();
        let changes = [
            Change::AddEndpoint(endpoint("a", 3)),
            Change::AddEndpoint(endpoint("b", 4)),
            Change::RemoveEndpoint {
                network: "red".into(),
                netns: "a".into(),
            },
        ];
        for change in &changes {
            file.commit(&mut state, change).unwrap();
        }
        assert_eq!(file.load().unwrap(), state);
        // A crash after a snapshot, before the journal was emptied: the
        // lines it already holds change nothing.
        write_atomically(&file.path, serde_json::to_vec(&state).unwrap().as_slice()).unwrap();
        assert_eq!(file.load().unwrap(), state);
        // A line cut short by a crash is left out; its change was never answered.
        let mut journal = OpenOptions::new().append(true).open(&file.journal).unwrap();
        journal.write_all(b"{\"add_endpoint\":{\"netw").unwrap();
        assert_eq!(file.load().unwrap(), state);
        // Past the limit the state is written whole and the journal emptied.
        for n in 0..=JOURNAL_LIMIT {
            let change = Change::AddEndpoint(endpoint(&format!("n{n}"), 10));
            file.commit(&mut state, &change).unwrap();
        }
        assert!(fs::read_to_string(&file.journal).unwrap().lines().count() < JOURNAL_LIMIT);
        assert_eq!(file.load().unwrap(), state);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn def(name: &str, created_ms: u64) -> NetworkDef {
        NetworkDef {
            name: name.into(),
            vni: 7,
            subnet: "10.1.0.0/24".parse().unwrap(),
            created_ms,
            origin: "b".into(),
            gateway: None,
            aux: Vec::new(),
            mtu: None,
            internal: false,
        }
    }

    #[test]
    fn removing_a_network_drops_its_definition_and_blocks_and_remembers_when() {
        let state = RuntimeState::default()
            .with(&Change::CreateNetwork(def("red", 10)))
            .with(&Change::ClaimBlock(BlockClaim {
                network: "red".into(),
                index: 0,
                claimed_ms: 11,
            }));
        assert_eq!(state.blocks.len(), 1);
        let state = state.with(&Change::RemoveNetwork {
            name: "red".into(),
            removed_ms: 20,
        });
        assert!(state.networks.is_empty() && state.blocks.is_empty());
        assert_eq!(state.removed["red"], 20);
    }

    #[test]
    fn taking_over_copies_what_is_missing_and_drops_what_was_removed() {
        let mut resolved = Resolved::default();
        resolved.networks.insert("red".into(), def("red", 10));
        let state = RuntimeState::default()
            .taken_over(&resolved, |_| false)
            .expect("copies red");
        assert_eq!(state.networks["red"], def("red", 10));
        assert!(
            state.taken_over(&resolved, |_| false).is_none(),
            "idempotent"
        );
        let from_file = RuntimeState::default();
        assert!(from_file.taken_over(&resolved, |n| n == "red").is_none());

        resolved.networks.clear();
        resolved.removed.insert("red".into(), 15);
        let state = state.taken_over(&resolved, |_| false).expect("drops red");
        assert!(state.networks.is_empty());
        assert_eq!(state.removed["red"], 15);
    }
}
