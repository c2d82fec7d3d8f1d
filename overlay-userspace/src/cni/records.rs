//! The attachments this plugin made, one file each, by configuration name:
//! `<socket>.cni/<name>/<container id>:<ifname>.json`, holding the agent's
//! answer. GC goes by them, so that it only ever removes what CNI attached
//! under this configuration, never a Docker endpoint or another runtime's
//! attachment in the same overlay network.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::api::{
    offline::{file_name, write_atomically},
    proto::{Attachment, AttachmentKey},
};

pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records of configuration `name` for the agent behind `socket`.
    pub fn new(socket: &Path, name: &str) -> Records {
        Records {
            dir: socket.with_extension("cni").join(name),
        }
    }

    fn path(&self, key: &AttachmentKey) -> Result<PathBuf> {
        Ok(self.dir.join(file_name(key)?))
    }

    pub fn save(&self, key: &AttachmentKey, attachment: &Attachment) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        write_atomically(&self.path(key)?, &serde_json::to_vec(attachment)?)
    }

    /// What ADD recorded for `key`, if anything.
    pub fn get(&self, key: &AttachmentKey) -> Option<Attachment> {
        let bytes = std::fs::read(self.path(key).ok()?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forgets `key`; one never recorded is fine.
    pub fn remove(&self, key: &AttachmentKey) -> Result<()> {
        match std::fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the record of {key:?}")),
        }
    }

    /// Every recorded attachment's key, sorted.
    pub fn keys(&self) -> Result<Vec<AttachmentKey>> {
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let mut keys: Vec<AttachmentKey> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (container_id, ifname) = name.strip_suffix(".json")?.split_once(':')?;
                Some(AttachmentKey {
                    container_id: container_id.to_owned(),
                    ifname: ifname.to_owned(),
                })
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_per_configuration() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("overlay-cni-records-{}", std::process::id()));
        let socket = dir.join("node1.sock");
        let (blue, red) = (Records::new(&socket, "blue"), Records::new(&socket, "red"));
        let key = AttachmentKey {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
        };
        let attachment: Attachment = serde_json::from_value(serde_json::json!({
            "container_id": "c0ffee", "ifname": "eth0", "network": "n", "vni": 1,
            "netns": "/run/netns/x", "plumbing": "agent", "host_ifname": "ov1",
            "container_ifname": "eth0", "mac": "02:42:0a:00:00:03", "ip": "10.0.0.3",
            "prefix_len": 24, "gateway": null, "routes": [], "mtu": 1450
        }))?;
        assert!(blue.keys()?.is_empty());
        blue.save(&key, &attachment)?;
        assert_eq!(blue.keys()?, vec![key.clone()]);
        assert_eq!(blue.get(&key), Some(attachment));
        assert!(red.keys()?.is_empty());
        blue.remove(&key)?;
        blue.remove(&key)?;
        assert!(blue.keys()?.is_empty());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
