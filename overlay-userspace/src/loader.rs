//! Loading the eBPF object, pinning its maps, attaching and detaching its programs.

use std::{
    collections::BTreeMap,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link as _, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcError,
        },
        xdp::XdpLink,
    },
};
use overlay_common::{
    Config, CounterValue, Endpoint, FdbEntry, FdbKey, NeighEntry, NeighKey, Network, Vtep,
    map_names, program_names,
};

use crate::{
    config::DecapMode,
    kernel::{self, TcAttach},
    netlink::NetnsGuard,
};

/// The compiled eBPF object, embedded at build time.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay"))
}

/// Default root under which each node pins its maps, in `<root>/<node>/`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/overlay";

pub fn default_pin_dir(node: &str) -> PathBuf {
    Path::new(DEFAULT_PIN_ROOT).join(node)
}

/// Typed handles on every map of the dataplane.
pub struct Maps {
    pub config: Array<MapData, Config>,
    pub networks: HashMap<MapData, u32, Network>,
    pub endpoints: HashMap<MapData, u32, Endpoint>,
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub neigh: HashMap<MapData, NeighKey, NeighEntry>,
    pub vteps: HashMap<MapData, [u8; 4], Vtep>,
    pub stats: PerCpuArray<MapData, CounterValue>,
    pub endpoint_devs: DevMapHash<MapData>,
}

impl Maps {
    /// Takes the maps out of a freshly loaded object and pins each under `pin_dir`
    /// (created if missing). On failure, removes the pins it made.
    pub fn take_and_pin(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Maps> {
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        let maps = (|| -> Result<Maps> {
            for name in map_names::ALL {
                let path = pin_dir.join(name);
                ebpf.map(name)
                    .with_context(|| format!("the eBPF object has no map {name}"))?
                    .pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
            Maps::take(ebpf)
        })();
        if maps.is_err() {
            let _ = unpin(pin_dir);
        }
        maps
    }

    /// Takes the maps out of a loaded object.
    fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Ok(Maps {
            config: Array::try_from(take(map_names::CONFIG)?)?,
            networks: HashMap::try_from(take(map_names::NETWORKS)?)?,
            endpoints: HashMap::try_from(take(map_names::ENDPOINTS)?)?,
            fdb: HashMap::try_from(take(map_names::FDB)?)?,
            neigh: HashMap::try_from(take(map_names::NEIGH)?)?,
            vteps: HashMap::try_from(take(map_names::VTEPS)?)?,
            stats: PerCpuArray::try_from(take(map_names::STATS)?)?,
            endpoint_devs: DevMapHash::try_from(take(map_names::ENDPOINT_DEVS)?)?,
        })
    }

    /// Opens the maps a running (or kept) agent pinned under `dir`.
    pub fn from_pins(dir: &Path) -> Result<Maps> {
        if !dir.is_dir() {
            bail!(
                "no pinned maps at {} (is an agent running for this node? is /sys/fs/bpf mounted?)",
                dir.display()
            );
        }
        let open = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))
        };
        Ok(Maps {
            config: Array::try_from(Map::Array(open(map_names::CONFIG)?))?,
            networks: HashMap::try_from(Map::HashMap(open(map_names::NETWORKS)?))?,
            endpoints: HashMap::try_from(Map::HashMap(open(map_names::ENDPOINTS)?))?,
            fdb: HashMap::try_from(Map::HashMap(open(map_names::FDB)?))?,
            neigh: HashMap::try_from(Map::HashMap(open(map_names::NEIGH)?))?,
            vteps: HashMap::try_from(Map::HashMap(open(map_names::VTEPS)?))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open(map_names::STATS)?))?,
            endpoint_devs: DevMapHash::try_from(Map::DevMapHash(open(map_names::ENDPOINT_DEVS)?))?,
        })
    }
}

/// Whether `dir` holds pins of a previous agent: maps, or program links.
pub fn holds_pins(dir: &Path) -> bool {
    map_names::ALL.iter().any(|name| dir.join(name).exists())
        || fs::read_dir(dir.join(LINKS_DIR)).is_ok_and(|mut d| d.next().is_some())
}

/// Loads the eBPF object with every map pinned under `pin_dir`. Maps a previous
/// agent left pinned there (it exited with --keep, or was killed) are reused with
/// their contents, so the dataplane it left running keeps its tables; missing
/// ones are created and pinned. Returns whether anything was adopted.
///
/// A pinned map whose shape differs from this build's (another version of the
/// ABI) is refused rather than reused.
pub fn load_adopting(pin_dir: &Path) -> Result<(Ebpf, Maps, bool)> {
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    let adopted = holds_pins(pin_dir);
    if adopted {
        check_pinned_shapes(pin_dir)?;
    }
    let paths: Vec<(&str, PathBuf)> = map_names::ALL
        .iter()
        .map(|name| (*name, pin_dir.join(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(ebpf_object())
        .context("loading the eBPF object")?;
    let maps = Maps::take(&mut ebpf)?;
    Ok((ebpf, maps, adopted))
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
            Map::Array(m) | Map::HashMap(m) | Map::PerCpuArray(m) | Map::DevMapHash(m) => {
                m.info()?
            }
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

/// Where a program is attached; names its link's pin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// endpoint_ingress on a host-side veth.
    Endpoint(String),
    /// The XDP_PASS program on the container side of the veth whose host side is named.
    PeerXdp(String),
    UnderlayTc(String),
    UnderlayXdp(String),
}

impl Hook {
    fn pin_name(&self) -> String {
        match self {
            Hook::Endpoint(i) => format!("endpoint-{i}"),
            Hook::PeerXdp(i) => format!("peer-xdp-{i}"),
            Hook::UnderlayTc(i) => format!("underlay-tc-{i}"),
            Hook::UnderlayXdp(i) => format!("underlay-xdp-{i}"),
        }
    }
}

/// One attachment. Links are pinned, so that the dataplane outlives the agent
/// when it is killed or exits with --keep, and a later agent adopts them.
/// TC attachments made through netlink (before TCX, kernels < 6.6) have no link
/// to pin; they stay until removed.
enum Attachment {
    Pinned(PinnedLink),
    TcNetlink(SchedClassifierLink),
}

impl Attachment {
    fn detach(self) -> Result<()> {
        match self {
            Attachment::Pinned(link) => link.unpin()?.detach()?,
            Attachment::TcNetlink(link) => link.detach()?,
        }
        Ok(())
    }
}

/// The loaded programs and what they are attached to.
pub struct Programs {
    ebpf: Ebpf,
    links_dir: PathBuf,
    attachments: BTreeMap<Hook, Attachment>,
}

impl Programs {
    /// Loads every program into the kernel (the verifier runs here), after
    /// checking that the kernel has what they use. Links are pinned under
    /// `pin_dir`/links.
    pub fn load(mut ebpf: Ebpf, pin_dir: &Path) -> Result<Programs> {
        kernel::check_features()?;
        kernel::tc_attach();
        for name in [
            program_names::ENDPOINT_INGRESS,
            program_names::UNDERLAY_INGRESS_TC,
        ] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name}"))?;
        }
        for name in [
            program_names::UNDERLAY_XDP,
            program_names::ENDPOINT_PEER_XDP,
        ] {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name}"))?;
        }
        let links_dir = pin_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        Ok(Programs {
            ebpf,
            links_dir,
            attachments: BTreeMap::new(),
        })
    }

    /// Takes over a link a previous agent pinned for `hook`; false if there is none.
    fn adopt(&mut self, hook: &Hook) -> Result<bool> {
        if self.attachments.contains_key(hook) {
            return Ok(true);
        }
        let path = self.links_dir.join(hook.pin_name());
        if !path.exists() {
            return Ok(false);
        }
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        self.attachments
            .insert(hook.clone(), Attachment::Pinned(link));
        Ok(true)
    }

    fn pin(&mut self, hook: Hook, link: Result<FdLink, Attachment>) -> Result<()> {
        let attachment = match link {
            Ok(fd_link) => {
                let path = self.links_dir.join(hook.pin_name());
                Attachment::Pinned(
                    fd_link
                        .pin(&path)
                        .with_context(|| format!("pinning link {}", path.display()))?,
                )
            }
            Err(netlink) => netlink,
        };
        self.attachments.insert(hook, attachment);
        Ok(())
    }

    pub fn attach_endpoint(&mut self, host_ifname: &str) -> Result<()> {
        let hook = Hook::Endpoint(host_ifname.to_owned());
        if self.adopt(&hook)? {
            return Ok(());
        }
        let program = classifier(&mut self.ebpf, program_names::ENDPOINT_INGRESS)?;
        let id = attach_tc_ingress(program, program_names::ENDPOINT_INGRESS, host_ifname)
            .with_context(|| {
                format!(
                    "attaching {} to {host_ifname}",
                    program_names::ENDPOINT_INGRESS
                )
            })?;
        let link = program.take_link(id)?;
        self.pin(hook, tc_fd_link(link))
    }

    /// Attaches the XDP_PASS program to a container-side veth, from inside the
    /// container's namespace, so XDP-redirected frames are accepted there.
    pub fn attach_peer_xdp(&mut self, host_ifname: &str, netns: &Path, ifname: &str) -> Result<()> {
        let hook = Hook::PeerXdp(host_ifname.to_owned());
        if self.adopt(&hook)? {
            return Ok(());
        }
        let link = {
            let _inside = NetnsGuard::enter(netns)?;
            let program = xdp(&mut self.ebpf, program_names::ENDPOINT_PEER_XDP)?;
            let id = program.attach(ifname, XdpMode::Default).with_context(|| {
                format!(
                    "attaching {} to {ifname} in {}",
                    program_names::ENDPOINT_PEER_XDP,
                    netns.display()
                )
            })?;
            program.take_link(id)?
        };
        self.pin(hook, Ok(xdp_fd_link(link)?))
    }

    pub fn attach_underlay(&mut self, underlay: &str, mode: DecapMode) -> Result<()> {
        let hook = match mode {
            DecapMode::Tc => Hook::UnderlayTc(underlay.to_owned()),
            DecapMode::Xdp => Hook::UnderlayXdp(underlay.to_owned()),
        };
        if self.adopt(&hook)? {
            return Ok(());
        }
        let link = match mode {
            DecapMode::Tc => {
                let program = classifier(&mut self.ebpf, program_names::UNDERLAY_INGRESS_TC)?;
                let id = attach_tc_ingress(program, program_names::UNDERLAY_INGRESS_TC, underlay)
                    .with_context(|| format!("attaching TC decap to {underlay}"))?;
                tc_fd_link(program.take_link(id)?)
            }
            DecapMode::Xdp => {
                let program = xdp(&mut self.ebpf, program_names::UNDERLAY_XDP)?;
                let id = program
                    .attach(underlay, XdpMode::Default)
                    .with_context(|| format!("attaching XDP decap to {underlay}"))?;
                Ok(xdp_fd_link(program.take_link(id)?)?)
            }
        };
        self.pin(hook, link)
    }

    /// Detaches what is attached at `hook`, if anything.
    pub fn detach(&mut self, hook: &Hook) -> Result<()> {
        match self.attachments.remove(hook) {
            Some(a) => a.detach(),
            None => Ok(()),
        }
    }

    /// Links pinned by a previous agent that nothing adopted: what it attached
    /// for endpoints or modes that are gone. Detaches them.
    pub fn detach_unadopted(&mut self) -> Vec<String> {
        let adopted: Vec<String> = self.attachments.keys().map(Hook::pin_name).collect();
        let mut removed = Vec::new();
        if let Ok(dir) = fs::read_dir(&self.links_dir) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !adopted.contains(&name) && fs::remove_file(entry.path()).is_ok() {
                    removed.push(name);
                }
            }
        }
        removed
    }

    /// Detaches everything. Links whose interface is already gone detach as
    /// no-ops. Returns the first error after trying them all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first_err = None;
        while let Some((_, attachment)) = self.attachments.pop_last() {
            if let Err(e) = attachment.detach() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Leaves every attachment in place for a later agent: pinned links stay
    /// pinned, netlink attachments stay attached.
    pub fn keep_all(&mut self) {
        for (_, attachment) in std::mem::take(&mut self.attachments) {
            match attachment {
                Attachment::Pinned(_) => {}
                // Dropping these would detach them.
                Attachment::TcNetlink(l) => std::mem::forget(l),
            }
        }
    }

    /// The underlying object, for tests that run programs directly.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Attaches classifier `name` at `ifname`'s ingress the way
/// [`kernel::tc_attach`] chose. A netlink filter needs the clsact qdisc first;
/// one already there (another TC user's, or ours for an earlier hook) is shared,
/// and stays when the agent leaves, as `tc` leaves it. Netlink filters have no
/// link to pin and adopt, so a filter of ours that a kept or killed agent left
/// on the interface is replaced rather than doubled.
fn attach_tc_ingress(
    program: &mut SchedClassifier,
    name: &str,
    ifname: &str,
) -> Result<SchedClassifierLinkId> {
    let options = match kernel::tc_attach() {
        TcAttach::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        TcAttach::NetlinkClsact => {
            match tc::qdisc_add_clsact(ifname) {
                Ok(()) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("adding a clsact qdisc to {ifname}"));
                }
            }
            match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, name) {
                Ok(()) => {
                    log::info!("replaced the {name} filter a previous agent left on {ifname}")
                }
                Err(TcError::IoError(e)) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing a stale {name} filter from {ifname}"));
                }
            }
            TcAttachOptions::Netlink(NlOptions::default())
        }
    };
    Ok(program.attach_with_options(ifname, TcAttachType::Ingress, options)?)
}

fn tc_fd_link(link: SchedClassifierLink) -> Result<FdLink, Attachment> {
    // Only a TCX attachment is a bpf_link; try_from consumes the link, so check first.
    if <&FdLink>::try_from(&link).is_ok() {
        Ok(FdLink::try_from(link).expect("checked above"))
    } else {
        Err(Attachment::TcNetlink(link))
    }
}

/// XDP attaches through a bpf_link on every kernel this dataplane supports (5.9+).
fn xdp_fd_link(link: XdpLink) -> Result<FdLink> {
    FdLink::try_from(link)
        .map_err(|e| anyhow::anyhow!("XDP was attached without a bpf_link ({e}); kernel too old"))
}

pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(program.try_into()?)
}

pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(program.try_into()?)
}
