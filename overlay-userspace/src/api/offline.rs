//! Detaches a runtime asked for while no agent answered, left on disk for the
//! agent: a CNI DEL must succeed with the agent down (flannel's plugin keeps
//! what DEL needs for the same reason). The plugin deletes the container's
//! interface itself and queues the detach here; the agent carries it out when
//! it starts (before it would make the attachment again from its state file)
//! and at every reconcile.
//!
//! The queue is a directory next to the socket, `<socket>.offline/`, one
//! `<container id>:<ifname>.json` file per detach.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use log::warn;

use super::proto::AttachmentKey;

pub fn queue_dir(socket: &Path) -> PathBuf {
    socket.with_extension("offline")
}

/// A key's file name: both parts are CNI names, which hold no `:` and no `/`.
pub fn file_name(key: &AttachmentKey) -> Result<String> {
    let plain = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && !s.contains(['/', ':', '\0']) && s.len() <= 128
    };
    if !plain(&key.container_id) || !plain(&key.ifname) {
        bail!(
            "container {:?} interface {:?} cannot be queued (no / or : allowed)",
            key.container_id,
            key.ifname
        );
    }
    Ok(format!("{}:{}.json", key.container_id, key.ifname))
}

/// Queues a detach of `key` for the agent behind `socket`.
pub fn queue(socket: &Path, key: &AttachmentKey) -> Result<PathBuf> {
    let dir = queue_dir(socket);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file_name(key)?);
    write_atomically(&path, &serde_json::to_vec(key)?)?;
    Ok(path)
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`: a reader sees the old file or the whole new one. Not synced: these
/// files live under `/run`, which a reboot empties anyway, together with
/// every namespace they are about.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

/// The queued detaches for the agent behind `socket`, with their files; a
/// file that does not read as one is reported and removed.
pub fn queued(socket: &Path) -> Vec<(PathBuf, AttachmentKey)> {
    let Ok(dir) = std::fs::read_dir(queue_dir(socket)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for path in dir.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<AttachmentKey>(&b)?))
        {
            Ok(key) => found.push((path, key)),
            Err(e) => {
                warn!(
                    "queued detach {} is unreadable, removed: {e:#}",
                    path.display()
                );
                done(&path);
            }
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// Removes a queued detach once carried out.
pub fn done(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("removing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detaches_queue_and_come_back_in_order() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("overlay-offline-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("node1.sock");
        let key = |id: &str| AttachmentKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        };
        assert!(queued(&socket).is_empty());
        queue(&socket, &key("b"))?;
        queue(&socket, &key("a"))?;
        queue(&socket, &key("a"))?;
        assert!(queue(&socket, &key("../x")).is_err());
        std::fs::write(queue_dir(&socket).join("junk.json"), "{")?;
        let found = queued(&socket);
        assert_eq!(
            found.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
            vec![key("a"), key("b")]
        );
        assert!(!queue_dir(&socket).join("junk.json").exists());
        for (path, _) in found {
            done(&path);
        }
        assert!(queued(&socket).is_empty());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
