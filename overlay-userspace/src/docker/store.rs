//! What the plugin knows between Docker's calls. Docker never replays
//! CreateNetwork (not to a restarted plugin, not after its own restart), so
//! which overlay network each Docker NetworkID is saved on disk
//! (`docker.json` beside the agent's state file); the rest lives only between
//! the calls of one `docker network create` or `docker run`.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    agent::state_file::write_atomically,
    api::proto::NetworkCreate,
    model::{Mac, Subnet},
};

/// The overlay network a Docker network is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// The cluster's network of that name.
    Named(String),
    /// Created on this node, checked, and waiting for Docker to tell its name
    /// (it does once CreateNetwork has returned); then created in the cluster.
    Unnamed(NetworkCreate),
}

/// A pool the IPAM handed out for a network that does not exist yet (the
/// calls of `docker network create` before CreateNetwork): its gateway and
/// auxiliary addresses arrive as RequestAddress calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPool {
    pub subnet: Subnet,
}

/// An endpoint between CreateEndpoint and Join: what Join needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerEndpoint {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// NetworkID → its overlay network.
    networks: BTreeMap<String, Binding>,
}

pub struct Store {
    path: PathBuf,
    saved: Saved,
    /// PoolID → a pool of a network still being created.
    pub pools: BTreeMap<String, PendingPool>,
    /// EndpointID → the endpoint Join will attach.
    pub endpoints: HashMap<String, DockerEndpoint>,
    /// Subnet → the cluster network this plugin is creating in dockerd right
    /// now: its CreateNetwork binds instead of creating.
    pub mirrors: BTreeMap<Subnet, String>,
}

impl Store {
    /// The saved bindings in `dir`; none if there are none yet.
    pub fn load(dir: &Path) -> Result<Store> {
        let path = dir.join("docker.json");
        let saved = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid plugin state", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Store {
            path,
            saved,
            pools: BTreeMap::new(),
            endpoints: HashMap::new(),
            mirrors: BTreeMap::new(),
        })
    }

    pub fn binding(&self, network_id: &str) -> Option<&Binding> {
        self.saved.networks.get(network_id)
    }

    pub fn bindings(&self) -> impl Iterator<Item = (&String, &Binding)> {
        self.saved.networks.iter()
    }

    /// The NetworkID bound to the cluster network `name`.
    pub fn bound_to(&self, name: &str) -> Option<&str> {
        self.saved
            .networks
            .iter()
            .find(|(_, b)| matches!(b, Binding::Named(n) if n == name))
            .map(|(id, _)| id.as_str())
    }

    /// Saves `network_id` as `binding`; only once saved does the store hold it.
    pub fn bind(&mut self, network_id: &str, binding: Binding) -> Result<()> {
        let previous = self.saved.networks.insert(network_id.to_owned(), binding);
        self.save()
            .inspect_err(|_| self.restore(network_id, previous))
    }

    /// Forgets `network_id`'s binding, saved.
    pub fn unbind(&mut self, network_id: &str) -> Result<Option<Binding>> {
        let previous = self.saved.networks.remove(network_id);
        if previous.is_some() {
            let kept = previous.clone();
            self.save()
                .inspect_err(|_| self.restore(network_id, kept))?;
        }
        Ok(previous)
    }

    fn restore(&mut self, network_id: &str, previous: Option<Binding>) {
        match previous {
            Some(b) => self.saved.networks.insert(network_id.to_owned(), b),
            None => self.saved.networks.remove(network_id),
        };
    }

    fn save(&self) -> Result<()> {
        write_atomically(
            &self.path,
            serde_json::to_string_pretty(&self.saved)?.as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_survive_a_reload_and_unbinding_saves() {
        let dir = std::env::temp_dir().join(format!("dk-store-{}", std::process::id()));
        let mut store = Store::load(&dir).unwrap();
        store.bind("n1", Binding::Named("uber-net".into())).unwrap();
        let pending = NetworkCreate {
            subnet: "10.0.9.0/24".into(),
            ..NetworkCreate::default()
        };
        store.bind("n2", Binding::Unnamed(pending.clone())).unwrap();
        let again = Store::load(&dir).unwrap();
        assert_eq!(
            again.binding("n1"),
            Some(&Binding::Named("uber-net".into()))
        );
        assert_eq!(again.binding("n2"), Some(&Binding::Unnamed(pending)));
        assert_eq!(again.bound_to("uber-net"), Some("n1"));
        store.unbind("n1").unwrap();
        assert_eq!(Store::load(&dir).unwrap().binding("n1"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
