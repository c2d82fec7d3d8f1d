//! The cluster key: 32 random bytes shared by every node, which authenticates and
//! encrypts every gossip datagram.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use chacha20poly1305::aead::{OsRng, rand_core::RngCore as _};

pub const KEY_LEN: usize = 32;

#[derive(Clone)]
pub struct ClusterKey(pub [u8; KEY_LEN]);

/// Never print the key itself.
impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn generate() -> ClusterKey {
        let mut key = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut key);
        ClusterKey(key)
    }

    /// Reads a key file: 64 hexadecimal digits (what `overlay keygen` writes), or
    /// exactly 32 raw bytes. Surrounding whitespace is ignored.
    pub fn load(path: &Path) -> Result<ClusterKey> {
        let bytes =
            fs::read(path).with_context(|| format!("reading cluster key {}", path.display()))?;
        let key =
            ClusterKey::parse(&bytes).with_context(|| format!("cluster key {}", path.display()))?;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "cluster key {} is readable by group or others (mode {:o}); `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        Ok(key)
    }

    pub fn parse(bytes: &[u8]) -> Result<ClusterKey> {
        if bytes.len() == KEY_LEN {
            return Ok(ClusterKey(bytes.try_into().expect("length checked")));
        }
        let text = std::str::from_utf8(bytes)
            .ok()
            .map(str::trim)
            .filter(|t| t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(text) = text else {
            bail!(
                "is neither {} hexadecimal digits nor {KEY_LEN} raw bytes ({} bytes); create one with `overlay keygen`",
                2 * KEY_LEN,
                bytes.len()
            );
        };
        let mut key = [0u8; KEY_LEN];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex digits checked");
        }
        Ok(ClusterKey(key))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Writes a new key file readable by its owner only. An existing file is
    /// kept unless `force`: overwriting a cluster key cuts this node off.
    pub fn write_new(path: &Path, force: bool) -> Result<ClusterKey> {
        let key = ClusterKey::generate();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut options = OpenOptions::new();
        options.write(true).mode(0o600);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "{} already exists; every node needs the same key, so it is not replaced (use --force to replace it)",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("creating {}", path.display()))
            }
        })?;
        writeln!(file, "{}", key.to_hex())
            .with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_raw_and_rejects_the_rest() {
        let key = ClusterKey::generate();
        assert_eq!(ClusterKey::parse(key.to_hex().as_bytes()).unwrap().0, key.0);
        assert_eq!(
            ClusterKey::parse(format!("{}\n", key.to_hex()).as_bytes())
                .unwrap()
                .0,
            key.0
        );
        assert_eq!(ClusterKey::parse(&key.0).unwrap().0, key.0);
        assert!(ClusterKey::parse(b"short").is_err());
        assert!(ClusterKey::parse(&[b'z'; 64]).is_err());
    }
}
