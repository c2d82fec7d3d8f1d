//! What this node was told at run time (through the local API) and what it took
//! over from the cluster, kept on disk so that a restarted agent announces and
//! serves the same things. The cluster file stays the source for what it defines.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    config::Mac,
    membership::{BlockClaim, NetworkDef},
};

/// An endpoint added through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEndpoint {
    pub network: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Its name inside the namespace (eth0, eth1, ...), to find it again.
    pub container_ifname: String,
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
    pub endpoints: Vec<RuntimeEndpoint>,
    #[serde(default)]
    pub blocks: Vec<BlockClaim>,
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; empty if there is none yet.
    pub fn load(&self) -> Result<RuntimeState> {
        match fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid state file", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RuntimeState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Replaces the file atomically: a crash leaves the old state or the new one.
    pub fn save(&self, state: &RuntimeState) -> Result<()> {
        let dir = self.path.parent().expect("a file in a directory");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        Ok(())
    }
}
