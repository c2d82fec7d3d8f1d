//! Taking over from an agent of another version without losing traffic.
//!
//! The programs a previous agent left attached are swapped for this agent's in
//! place, each attachment atomically (`bpf_link_update` on TCX and XDP links,
//! a netlink filter replaced at its own priority and handle), all in one pass
//! that is rolled back whole if any swap fails.
//!
//! A pinned map whose shape (type, key or value size, capacity, flags) differs
//! from this build's cannot be reused: this build's programs get a new map,
//! pinned under [`MIGRATING_DIR`] and filled from the desired state while the old
//! programs keep running on the old map; the swap waits until the desired state
//! is complete (the cluster view warm), and only then does the new map take the
//! old one's pin. That holds for every map of [`map_names::ALL`]: the tables are
//! refilled by the reconciler, the programs' own maps (counters) start empty.
//! A map the pinned dataplane lacks (an older version without it: the drop
//! events, the trace flow, the programs' log buffer) is created the same way,
//! under [`MIGRATING_DIR`], and takes its pin with the swap: until then only the
//! new programs, not yet attached, know it, and an agent that stops before the
//! swap leaves the old dataplane's pins as they were. A ring buffer holds no
//! state to carry over, so a fresh one is all a migration of one means.
//! The agent refuses when an old map is also used by a program it would not
//! swap (another loader's, or one it cannot find), since that program would go
//! on with a map nobody fills.

use std::{collections::BTreeSet, fmt, fs, io::ErrorKind, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapInfo},
    programs::{ProgramInfo, links::FdLink, links::PinnedLink, loaded_programs},
};
use log::{info, warn};
use overlay_common::map_names;

use super::{
    ebpf_object,
    pins::{LINKS_DIR, PROGRAMS_DIR},
};

/// Where the new maps of a migration are pinned until the swap.
pub const MIGRATING_DIR: &str = "migrating";

/// What the kernel says a map is; two maps of one shape are interchangeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl Shape {
    fn of(info: &MapInfo) -> Shape {
        Shape {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }
}

/// A map of this build the pinned dataplane cannot give it: its pin has
/// another shape, or there is none (`pinned` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapChange {
    pub name: &'static str,
    pinned: Option<Shape>,
    ours: Shape,
}

impl MapChange {
    /// Whether the running dataplane has a map of this name, which this
    /// migration replaces.
    pub fn replaces_a_pin(&self) -> bool {
        self.pinned.is_some()
    }
}

impl fmt::Display for MapChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(a) = self.pinned else {
            return write!(f, "{} (new: the running dataplane has none)", self.name);
        };
        let b = self.ours;
        let mut parts = Vec::new();
        for (what, old, new) in [
            ("type", a.map_type, b.map_type),
            ("key size", a.key_size, b.key_size),
            ("value size", a.value_size, b.value_size),
            ("max_entries", a.max_entries, b.max_entries),
            ("flags", a.flags, b.flags),
        ] {
            if old != new {
                parts.push(format!("{what} {old} → {new}"));
            }
        }
        write!(f, "{} ({})", self.name, parts.join(", "))
    }
}

/// The maps of this build that the dataplane pinned under `pin_dir` lacks,
/// or pinned with another shape.
pub fn changed_maps(pin_dir: &Path) -> Result<Vec<MapChange>> {
    let mut fresh = Ebpf::load(ebpf_object()).context("loading the eBPF object")?;
    let mut changes = Vec::new();
    for name in map_names::ALL {
        let map = fresh
            .map_mut(name)
            .with_context(|| format!("the eBPF object has no map {name}"))?;
        let ours = Shape::of(
            &map_data(map)
                .with_context(|| format!("map {name} is of a kind this agent does not pin"))?
                .info()?,
        );
        let path = pin_dir.join(name);
        let pinned = if path.exists() {
            let info = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?
                .info()?;
            Some(Shape::of(&info))
        } else {
            None
        };
        if pinned != Some(ours) {
            changes.push(MapChange { name, pinned, ours });
        }
    }
    Ok(changes)
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::RingBuf(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m) => Some(m),
        _ => None,
    }
}

/// Refuses a migration while a program this agent will not swap uses one of
/// the maps it replaces. The previous agent's programs are those it pinned under
/// [`PROGRAMS_DIR`] and those its pinned links run; any other user is named.
pub fn check_sole_users(pin_dir: &Path, changes: &[MapChange]) -> Result<()> {
    let mut old_maps = Vec::new();
    for change in changes.iter().filter(|c| c.replaces_a_pin()) {
        let id = MapData::from_pin(pin_dir.join(change.name))?.info()?.id();
        old_maps.push((id, change));
    }
    let ours = previous_program_ids(pin_dir);
    for program in loaded_programs() {
        let Ok(program) = program else { continue };
        if ours.contains(&program.id()) {
            continue;
        }
        let Ok(Some(uses)) = program.map_ids() else {
            continue;
        };
        if let Some((map_id, change)) = old_maps.iter().find(|(id, _)| uses.contains(id)) {
            bail!(
                "cannot upgrade the running dataplane: map {} changed shape, so this agent must replace it, \
                 but the old map (id {map_id}) is also used by program {} (id {}), which this agent did not \
                 attach and cannot swap; detach that program first, or stop the node's dataplane \
                 (`overlay agent` without --keep) and start this agent on a clean pin directory",
                change,
                program.name_as_str().unwrap_or("?"),
                program.id(),
            );
        }
    }
    Ok(())
}

/// Ids of the previous agent's programs: pinned, or run by its pinned links.
fn previous_program_ids(pin_dir: &Path) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for entry in read_dir(&pin_dir.join(PROGRAMS_DIR)) {
        if let Ok(info) = ProgramInfo::from_pin(entry.path()) {
            ids.insert(info.id());
        }
    }
    for entry in read_dir(&pin_dir.join(LINKS_DIR)) {
        let Ok(link) = PinnedLink::from_pin(entry.path()) else {
            continue;
        };
        if let Ok(info) = FdLink::from(link).info() {
            ids.insert(info.program_id());
        }
    }
    ids
}

fn read_dir(dir: &Path) -> impl Iterator<Item = fs::DirEntry> {
    fs::read_dir(dir).into_iter().flatten().flatten()
}

/// Points each changed map at its migration pin, after removing what an
/// interrupted migration left there.
pub fn pin_migrating<'a>(
    loader: &mut EbpfLoader<'a>,
    pin_dir: &Path,
    changes: &'a [MapChange],
) -> Result<()> {
    let dir = pin_dir.join(MIGRATING_DIR);
    clear_migrating(pin_dir)?;
    if changes.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for change in changes {
        if change.replaces_a_pin() {
            info!(
                "map {change} differs from the pinned one: migrating it (a new map, filled from \
                 the desired state, swapped in with the programs)"
            );
        } else {
            info!("map {change}: creating it, pinned with the programs' swap");
        }
        loader.map_pin_path(change.name, dir.join(change.name));
    }
    Ok(())
}

/// Removes the migration directory: what a migration that never reached its
/// swap left behind (the old maps still serve the old programs).
pub fn clear_migrating(pin_dir: &Path) -> Result<()> {
    let dir = pin_dir.join(MIGRATING_DIR);
    let mut left = 0;
    for entry in read_dir(&dir) {
        fs::remove_file(entry.path())
            .with_context(|| format!("removing {}", entry.path().display()))?;
        left += 1;
    }
    if left > 0 {
        warn!(
            "removed {left} map(s) an interrupted migration left in {}",
            dir.display()
        );
    }
    match fs::remove_dir(&dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// After the swap: each migrated map takes the old one's pin (a rename on
/// bpffs, so the pin never goes missing).
pub fn promote_migrated(pin_dir: &Path, changes: &[MapChange]) -> Result<()> {
    for change in changes {
        let from = pin_dir.join(MIGRATING_DIR).join(change.name);
        let to = pin_dir.join(change.name);
        fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    clear_migrating(pin_dir)
}
