//! The node's pin directory: where maps and links live between agents, how a
//! new agent adopts them, and how they are removed.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
};
use overlay_common::map_names;

use super::{ebpf_object, logs, maps::Maps};

/// Default root under which each node pins its maps, in `<root>/<node>/`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/overlay";

pub fn default_pin_dir(node: &str) -> PathBuf {
    Path::new(DEFAULT_PIN_ROOT).join(node)
}

/// Whether `dir` holds pins of a previous agent: maps, or program links.
pub fn holds_pins(dir: &Path) -> bool {
    map_names::ALL.iter().any(|name| dir.join(name).exists())
        || fs::read_dir(dir.join(LINKS_DIR)).is_ok_and(|mut d| d.next().is_some())
}

/// Loads the eBPF object with every map pinned under `pin_dir`. Maps a previous
/// agent left pinned there (it exited with --keep, or was killed) are reused with
/// their contents, so the dataplane it left running keeps its tables; missing
/// ones are created and pinned.
///
/// A pinned map whose shape differs from this build's (another version of the
/// ABI) is refused rather than reused.
pub fn load_adopting(pin_dir: &Path) -> Result<(Ebpf, Maps)> {
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    if holds_pins(pin_dir) {
        check_pinned_shapes(pin_dir)?;
    }
    let paths: Vec<(&str, PathBuf)> = map_names::ALL
        .iter()
        .map(|name| (*name, pin_dir.join(name)))
        .collect();
    // Log statements above the agent's log level are left out by the verifier.
    let log_level = logs::ebpf_log_level();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let mut ebpf = loader
        .load(ebpf_object())
        .context("loading the eBPF object")?;
    let maps = Maps::take(&mut ebpf)?;
    Ok((ebpf, maps))
}

/// Compares each pinned map with the map this build would create.
fn check_pinned_shapes(pin_dir: &Path) -> Result<()> {
    let mut fresh = Ebpf::load(ebpf_object()).context("loading the eBPF object")?;
    for name in map_names::ALL {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let pinned = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?
            .info()?;
        let Some(map) = fresh.map_mut(name) else {
            continue;
        };
        let ours = match map {
            Map::Array(m)
            | Map::HashMap(m)
            | Map::PerCpuArray(m)
            | Map::DevMapHash(m)
            | Map::RingBuf(m) => m.info()?,
            _ => continue,
        };
        if (
            pinned.map_type().ok(),
            pinned.key_size(),
            pinned.value_size(),
            pinned.max_entries(),
        ) != (
            ours.map_type().ok(),
            ours.key_size(),
            ours.value_size(),
            ours.max_entries(),
        ) {
            bail!(
                "the map pinned at {} was made by another version of the dataplane (its shape differs); \
                 stop that node's dataplane (`overlay agent` without --keep, or remove {}) before starting this one",
                path.display(),
                pin_dir.display()
            );
        }
    }
    Ok(())
}

/// Where program links are pinned, inside a node's pin directory.
pub const LINKS_DIR: &str = "links";

/// Removes the pins of every map under `dir`, then `dir` itself if it is empty.
/// Pinned links go too, which detaches their programs.
pub fn unpin(dir: &Path) -> Result<()> {
    if let Ok(links) = fs::read_dir(dir.join(LINKS_DIR)) {
        for link in links.flatten() {
            let _ = fs::remove_file(link.path());
        }
        let _ = fs::remove_dir(dir.join(LINKS_DIR));
    }
    for name in map_names::ALL {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("unpinning {}", dir.join(name).display()));
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => {
            // The shared default root goes too once the last node has left it.
            if dir.parent() == Some(Path::new(DEFAULT_PIN_ROOT)) {
                let _ = fs::remove_dir(DEFAULT_PIN_ROOT);
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        // Someone else's files: leave them.
        Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}
