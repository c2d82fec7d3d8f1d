//! The cluster keys: 32 random bytes shared by every node, which authenticate and
//! encrypt every gossip datagram. A key file holds one key per line (a
//! keyring): a node seals with the first and opens with any, so a new key can
//! be rolled out while the old one still opens what others send.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use chacha20poly1305::{
    KeyInit as _, XChaCha20Poly1305,
    aead::{OsRng, rand_core::RngCore as _},
};

pub const KEY_LEN: usize = 32;
/// Every datagram that opens with no key costs one attempt per key: a handful
/// covers any rotation.
pub const MAX_KEYS: usize = 8;

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

    pub fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
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

/// The keys of a key file, in its order: the first seals, every one opens.
#[derive(Clone)]
pub struct Keyring {
    ciphers: Vec<XChaCha20Poly1305>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring({} keys)", self.ciphers.len())
    }
}

impl Keyring {
    pub fn new(keys: &[ClusterKey]) -> Keyring {
        assert!(!keys.is_empty(), "a keyring holds at least one key");
        Keyring {
            ciphers: keys.iter().map(ClusterKey::cipher).collect(),
        }
    }

    /// Reads a key file: one key per line, each 64 hexadecimal digits (what
    /// `overlay keygen` writes); blank lines and `#` comments are skipped. A
    /// file of exactly 32 bytes is one raw key.
    pub fn load(path: &Path) -> Result<Keyring> {
        let bytes =
            fs::read(path).with_context(|| format!("reading cluster key {}", path.display()))?;
        let keys = parse_keys(&bytes).with_context(|| format!("cluster key {}", path.display()))?;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "cluster key {} is readable by group or others (mode {:o}); `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        Ok(Keyring::new(&keys))
    }

    /// The key every datagram this node sends is sealed with.
    pub fn sealing(&self) -> &XChaCha20Poly1305 {
        &self.ciphers[0]
    }

    /// Every key a datagram may be sealed with, the sealing key first.
    pub fn opening(&self) -> &[XChaCha20Poly1305] {
        &self.ciphers
    }

    pub fn len(&self) -> usize {
        self.ciphers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ciphers.is_empty()
    }
}

/// A key file's keys, in order.
pub fn parse_keys(bytes: &[u8]) -> Result<Vec<ClusterKey>> {
    if bytes.len() == KEY_LEN {
        return Ok(vec![ClusterKey::parse(bytes)?]);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        bail!(
            "is neither lines of {} hexadecimal digits nor {KEY_LEN} raw bytes ({} bytes); create one with `overlay keygen`",
            2 * KEY_LEN,
            bytes.len()
        );
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(ClusterKey::parse(line.as_bytes()).with_context(|| format!("line {}", i + 1))?);
    }
    if keys.is_empty() {
        bail!("holds no key; create one with `overlay keygen`");
    }
    if keys.len() > MAX_KEYS {
        bail!(
            "holds {} keys, at most {MAX_KEYS} are read (a rotation needs two)",
            keys.len()
        );
    }
    Ok(keys)
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

    #[test]
    fn a_key_file_holds_keys_in_order_and_says_which_line_is_wrong() {
        let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
        let text = format!(
            "# rotation: b is new\n{}\n\n  {}  \n",
            a.to_hex(),
            b.to_hex()
        );
        let keys = parse_keys(text.as_bytes()).unwrap();
        assert_eq!(keys.iter().map(|k| k.0).collect::<Vec<_>>(), vec![a.0, b.0]);
        assert_eq!(parse_keys(&a.0).unwrap()[0].0, a.0);
        let bad = format!("{}\nnot a key\n", a.to_hex());
        let err = format!("{:#}", parse_keys(bad.as_bytes()).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_keys(b"\n# nothing\n").is_err());
        let many = format!("{}\n", a.to_hex()).repeat(MAX_KEYS + 1);
        assert!(parse_keys(many.as_bytes()).is_err());
    }
}
