//! Running commands, unique names and scratch files.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, ensure};

/// Runs `cmd`; its stdout, or an error carrying its stderr.
pub fn output_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a shell command line; its stdout, or an error carrying its stderr.
pub fn sh(cmd: &str) -> Result<String> {
    output_ok(Command::new("sh").args(["-c", cmd]))
}

/// Runs `ip` with `args`, split at whitespace (no shell involved: no quoting,
/// no expansion); its stdout, or an error carrying its stderr.
pub fn ip(args: &str) -> Result<String> {
    output_ok(Command::new("ip").args(args.split_whitespace()))
}

/// A prefix unique to this process and call, such as `t4170`, so that re-runs and
/// parallel tests never collide. Short, because interface names (and, by
/// convention here, namespace names built on it) must fit in 15 characters.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}{}",
        std::process::id() % 1000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory under the temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("overlay-{}", unique_prefix(tag)));
        // A directory of the same name can only be a leftover of a killed run.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `contents` to `dir/name` (a node's config file, typically).
pub fn write_config(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
