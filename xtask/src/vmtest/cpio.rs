//! A minimal writer of cpio "newc" archives, the format the kernel unpacks as an
//! initramfs. Only what an initramfs needs: directories, regular files, symlinks.

use std::{collections::BTreeMap, io::Write as _, path::Path};

use anyhow::{Context as _, Result};

enum Entry {
    Dir,
    File { bytes: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// Entries by absolute path. Parents are added implicitly, and sorting by path
/// writes every directory before what it holds, as the kernel requires.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        self.entries.entry(normalize(path)).or_insert(Entry::Dir);
    }

    /// Adds (or replaces) a regular file.
    pub fn file(&mut self, path: &str, bytes: &[u8], mode: u32) {
        self.parents(path);
        self.entries.insert(
            normalize(path),
            Entry::File {
                bytes: bytes.to_vec(),
                mode,
            },
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries
            .insert(normalize(path), Entry::Symlink(target.to_owned()));
    }

    fn parents(&mut self, path: &str) {
        let path = normalize(path);
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            if !parent.is_empty() {
                self.entries.entry(parent.to_owned()).or_insert(Entry::Dir);
            }
            at += i + 1;
        }
    }

    pub fn write_to(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        for (ino, (name, entry)) in self.entries.iter().enumerate() {
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Dir => (0o040_755, &[]),
                Entry::File { bytes, mode } => (0o100_000 | mode, bytes),
                Entry::Symlink(target) => (0o120_777, target.as_bytes()),
            };
            header(&mut out, ino as u32 + 1, mode, data.len(), name);
            out.extend_from_slice(data);
            pad(&mut out);
        }
        header(&mut out, 0, 0, 0, "TRAILER!!!");
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(&out))
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Archive names are relative ("bin/sh"), which is what the kernel expects.
fn normalize(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    // magic, then ino mode uid gid nlink mtime filesize devmajor devminor
    // rdevmajor rdevminor namesize check, each 8 hex digits.
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
}

/// Header+name and data are each padded to a multiple of four bytes.
fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_layout_is_newc() -> Result<()> {
        let mut a = Archive::default();
        a.file("/a/b/c", b"hi", 0o644);
        a.symlink("/a/l", "b");
        let names: Vec<&str> = a.entries.keys().map(String::as_str).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c", "a/l"]);
        let path = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        a.write_to(&path)?;
        let bytes = std::fs::read(&path)?;
        std::fs::remove_file(&path)?;
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
        Ok(())
    }
}
