//! The node's pin directory: where maps and links live between agents, how a
//! new agent adopts them, and how they are removed.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader};
use overlay_common::map_names;

use super::{
    ebpf_object, logs,
    maps::Maps,
    upgrade::{self, MIGRATING_DIR, MapChange},
};

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
/// ABI) is not reused: it is migrated (see [`upgrade`]), and returned.
pub fn load_adopting(pin_dir: &Path) -> Result<(Ebpf, Maps, Vec<MapChange>)> {
    ensure_on_bpffs(pin_dir)?;
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    let changes = if holds_pins(pin_dir) {
        let changes = upgrade::changed_maps(pin_dir)?;
        if !changes.is_empty() {
            upgrade::check_sole_users(pin_dir, &changes)?;
        }
        changes
    } else {
        Vec::new()
    };
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
    upgrade::pin_migrating(&mut loader, pin_dir, &changes)?;
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let mut ebpf = loader
        .load(ebpf_object())
        .context("loading the eBPF object")?;
    let maps = Maps::take(&mut ebpf)?;
    Ok((ebpf, maps, changes))
}

/// Pins live only on a BPF filesystem. Checked on the nearest existing parent
/// of `pin_dir`, before anything is created, so that a hidden bpffs (`ip netns
/// exec` remounts /sys) is named as such instead of failing on a missing file.
pub fn ensure_on_bpffs(pin_dir: &Path) -> Result<()> {
    let Some(existing) = pin_dir.ancestors().find(|p| p.exists()) else {
        bail!("pin directory {} has no existing parent", pin_dir.display());
    };
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .context("pin directory path has a NUL byte")?;
    // SAFETY: statfs writes into the zeroed struct it is given; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", existing.display()));
    }
    if st.f_type == libc::BPF_FS_MAGIC {
        return Ok(());
    }
    let hint = if pin_dir.starts_with("/sys/fs/bpf") {
        "no BPF filesystem is mounted at /sys/fs/bpf here. `ip netns exec` remounts /sys in a \
         mount namespace of its own, which hides the host's bpffs (and a bpffs mounted there \
         would not be the host's, so no other agent or `overlay` command would see the pins): \
         run the agent with `nsenter --net=/run/netns/NAME overlay agent …` instead. Without \
         `ip netns exec`, mount it with `mount -t bpf bpf /sys/fs/bpf`"
    } else {
        "pass --pin-dir on a mounted BPF filesystem (`mount -t bpf bpf DIR`)"
    };
    bail!(
        "pin directory {}: {} is not on a BPF filesystem (statfs type {:#x}); {hint}",
        pin_dir.display(),
        existing.display(),
        st.f_type
    )
}

/// Where program links are pinned, inside a node's pin directory. Netlink
/// filters (every endpoint's, and the underlay's before TCX) have no link;
/// each has a directory of its hook's name there instead, so the next agent
/// knows to replace it.
pub const LINKS_DIR: &str = "links";

/// Where the running agent's programs are pinned: the next agent's way back if
/// its swap must be rolled back.
pub const PROGRAMS_DIR: &str = "programs";

/// Removes the pins of every map under `dir`, then `dir` itself if it is empty.
/// Pinned links go too, which detaches their programs.
pub fn unpin(dir: &Path) -> Result<()> {
    for sub in [LINKS_DIR, PROGRAMS_DIR, MIGRATING_DIR] {
        if let Ok(entries) = fs::read_dir(dir.join(sub)) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path()).or_else(|_| fs::remove_dir(entry.path()));
            }
            let _ = fs::remove_dir(dir.join(sub));
        }
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
