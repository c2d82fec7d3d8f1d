//! The loaded programs and their attachments (hooks), pinned as links so the
//! dataplane outlives an agent that is killed or exits with `--keep`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link as _, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcError,
            TcHandle,
        },
        xdp::XdpLink,
    },
};
use overlay_common::program_names;

use super::{
    kernel::{self, TcAttach},
    pins::{LINKS_DIR, PROGRAMS_DIR},
};
use crate::{
    config::DecapMode,
    host::{ifname::ifindex, netns::NetnsGuard},
};

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
    pub(super) fn pin_name(&self) -> String {
        match self {
            Hook::Endpoint(i) => format!("endpoint-{i}"),
            Hook::PeerXdp(i) => format!("peer-xdp-{i}"),
            Hook::UnderlayTc(i) => format!("underlay-tc-{i}"),
            Hook::UnderlayXdp(i) => format!("underlay-xdp-{i}"),
        }
    }

    /// The hook whose link (or netlink filter's directory) is pinned as `name`.
    fn from_pin_name(name: &str) -> Option<Hook> {
        type Make = fn(String) -> Hook;
        let kinds: [(&str, Make); 4] = [
            ("endpoint-", Hook::Endpoint),
            ("peer-xdp-", Hook::PeerXdp),
            ("underlay-tc-", Hook::UnderlayTc),
            ("underlay-xdp-", Hook::UnderlayXdp),
        ];
        kinds
            .into_iter()
            .find_map(|(prefix, hook)| name.strip_prefix(prefix).map(|i| hook(i.to_owned())))
    }

    /// The program this hook runs.
    pub(super) fn program(&self) -> &'static str {
        match self {
            Hook::Endpoint(_) => program_names::ENDPOINT_INGRESS,
            Hook::PeerXdp(_) => program_names::ENDPOINT_PEER_XDP,
            Hook::UnderlayTc(_) => program_names::UNDERLAY_INGRESS_TC,
            Hook::UnderlayXdp(_) => program_names::UNDERLAY_XDP,
        }
    }

    /// The interface of a TC hook, which may be a netlink filter.
    pub(super) fn tc_ifname(&self) -> Option<&str> {
        match self {
            Hook::Endpoint(i) | Hook::UnderlayTc(i) => Some(i),
            Hook::PeerXdp(_) | Hook::UnderlayXdp(_) => None,
        }
    }
}

/// Every program the agent loads, TC classifiers first.
const TC_PROGRAMS: [&str; 2] = [
    program_names::ENDPOINT_INGRESS,
    program_names::UNDERLAY_INGRESS_TC,
];
const XDP_PROGRAMS: [&str; 2] = [
    program_names::UNDERLAY_XDP,
    program_names::ENDPOINT_PEER_XDP,
];

/// One attachment. Links are pinned, so that the dataplane outlives the agent
/// when it is killed or exits with --keep, and a later agent adopts them.
/// TC attachments made through netlink (every endpoint's, and the underlay's
/// before TCX, kernels < 6.6) have no link to pin; they stay until removed.
pub(super) enum Attachment {
    Pinned(PinnedLink),
    /// A netlink filter, and the directory in `links/` that tells the next
    /// agent it is there.
    TcNetlink(SchedClassifierLink, PathBuf),
}

impl Attachment {
    /// Detaches the attachment at `hook`. A filter whose interface is gone
    /// (a veth deleted by hand, or with its namespace) went with it; only a
    /// link needed detaching then, and that is a no-op.
    fn detach(self, hook: &Hook) -> Result<()> {
        match self {
            Attachment::Pinned(link) => link.unpin()?.detach()?,
            Attachment::TcNetlink(link, marker) => {
                if let Err(e) = link.detach() {
                    match hook.tc_ifname() {
                        Some(ifname) if ifindex(ifname)?.is_none() => {}
                        _ => return Err(e).with_context(|| format!("detaching {hook:?}")),
                    }
                }
                let _ = fs::remove_dir(marker);
            }
        }
        Ok(())
    }
}

/// The loaded programs and what they are attached to.
pub struct Programs {
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: PathBuf,
    links_dir: PathBuf,
    pub(super) attachments: BTreeMap<Hook, Attachment>,
    /// Attachments a previous agent left, still running its programs until
    /// [`Programs::swap_adopted`].
    pub(super) adopted: BTreeSet<Hook>,
}

impl Programs {
    /// Loads every program into the kernel (the verifier runs here), after
    /// checking that the kernel has what they use. Links are pinned under
    /// `pin_dir`/links.
    pub fn load(mut ebpf: Ebpf, pin_dir: &Path) -> Result<Programs> {
        kernel::check_features()?;
        kernel::tc_attach();
        for name in TC_PROGRAMS {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name}"))?;
        }
        for name in XDP_PROGRAMS {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name}"))?;
        }
        let links_dir = pin_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        let mut programs = Programs {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            links_dir,
            attachments: BTreeMap::new(),
            adopted: BTreeSet::new(),
        };
        // A previous agent's pinned programs are its way back until the swap;
        // on a fresh dataplane ours go there now.
        let fresh = fs::read_dir(&programs.links_dir).map_or(true, |mut d| d.next().is_none());
        if fresh {
            programs.pin_programs()?;
        }
        Ok(programs)
    }

    /// Pins this agent's programs under `programs/`, replacing a previous
    /// agent's.
    pub(super) fn pin_programs(&mut self) -> Result<()> {
        let dir = self.pin_dir.join(PROGRAMS_DIR);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for name in TC_PROGRAMS.into_iter().chain(XDP_PROGRAMS) {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
                _ => {}
            }
            let program = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?;
            program
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    /// Whether a previous agent left an attachment at `hook`: a pinned link, or
    /// the directory of a netlink filter. Such a hook is taken over as it is and
    /// swapped later, with all others at once ([`Programs::swap_adopted`]).
    fn adopt(&mut self, hook: &Hook) -> bool {
        if self.attachments.contains_key(hook) || self.adopted.contains(hook) {
            return true;
        }
        if !self.links_dir.join(hook.pin_name()).exists() {
            return false;
        }
        self.adopted.insert(hook.clone());
        true
    }

    pub(super) fn link_path(&self, hook: &Hook) -> PathBuf {
        self.links_dir.join(hook.pin_name())
    }

    fn pin(&mut self, hook: Hook, link: Result<FdLink, SchedClassifierLink>) -> Result<()> {
        let path = self.link_path(&hook);
        let attachment = match link {
            Ok(fd_link) => Attachment::Pinned(
                fd_link
                    .pin(&path)
                    .with_context(|| format!("pinning link {}", path.display()))?,
            ),
            Err(netlink) => {
                if let Err(e) = fs::create_dir(&path)
                    && e.kind() != ErrorKind::AlreadyExists
                {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
                Attachment::TcNetlink(netlink, path)
            }
        };
        self.attachments.insert(hook, attachment);
        Ok(())
    }

    pub fn attach_endpoint(&mut self, host_ifname: &str) -> Result<()> {
        let hook = Hook::Endpoint(host_ifname.to_owned());
        if self.adopt(&hook) {
            return Ok(());
        }
        let program = classifier(&mut self.ebpf, program_names::ENDPOINT_INGRESS)?;
        let id = attach_tc_ingress(
            program,
            program_names::ENDPOINT_INGRESS,
            host_ifname,
            kernel::endpoint_tc_attach(),
        )
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
        if self.adopt(&hook) {
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
        if self.adopt(&hook) {
            return Ok(());
        }
        let link = match mode {
            DecapMode::Tc => {
                let program = classifier(&mut self.ebpf, program_names::UNDERLAY_INGRESS_TC)?;
                let id = attach_tc_ingress(
                    program,
                    program_names::UNDERLAY_INGRESS_TC,
                    underlay,
                    kernel::tc_attach(),
                )
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
        if self.adopted.remove(hook) {
            return detach_left(&self.link_path(hook), hook);
        }
        match self.attachments.remove(hook) {
            Some(a) => a.detach(hook),
            None => Ok(()),
        }
    }

    /// Attachments a previous agent left that nothing adopted: what it attached
    /// for endpoints or modes that are gone. Detaches them.
    pub fn detach_unadopted(&mut self) -> Vec<String> {
        let wanted: Vec<String> = self
            .attachments
            .keys()
            .chain(&self.adopted)
            .map(Hook::pin_name)
            .collect();
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if wanted.contains(&name) {
                continue;
            }
            let gone = if entry.path().is_dir() {
                // A netlink filter's directory.
                Hook::from_pin_name(&name).is_some_and(|h| detach_left(&entry.path(), &h).is_ok())
            } else {
                fs::remove_file(entry.path()).is_ok()
            };
            if gone {
                removed.push(name);
            }
        }
        removed
    }

    /// Detaches everything. Links whose interface is already gone detach as
    /// no-ops. Returns the first error after trying them all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first_err = None;
        while let Some((hook, attachment)) = self.attachments.pop_last() {
            if let Err(e) = attachment.detach(&hook) {
                first_err.get_or_insert(e);
            }
        }
        for hook in std::mem::take(&mut self.adopted) {
            if let Err(e) = detach_left(&self.link_path(&hook), &hook) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Leaves every attachment in place for a later agent: pinned links stay
    /// pinned, netlink attachments stay attached.
    pub fn keep_all(&mut self) {
        self.adopted.clear();
        for (_, attachment) in std::mem::take(&mut self.attachments) {
            match attachment {
                Attachment::Pinned(_) => {}
                // Dropping these would detach them.
                Attachment::TcNetlink(l, _) => std::mem::forget(l),
            }
        }
    }

    /// The underlying object, for tests that run programs directly.
    #[cfg(feature = "test-doors")]
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// The priority and handle of every netlink filter of ours: fixed, so the next
/// agent can replace the filter in place (`tc filter replace`), which is atomic.
pub(super) const NL_PRIORITY: u16 = 0x4f56;
pub(super) const NL_HANDLE: TcHandle = TcHandle::new(0, 0x4f56);

/// Attaches classifier `name` at `ifname`'s ingress as `how` says. A netlink
/// filter needs the clsact qdisc first; one already there (another TC user's,
/// or ours for an earlier hook) is shared, and stays when the agent leaves, as
/// `tc` leaves it. Under a qdisc that was there, a filter of ours that an agent
/// left without saying so (before filters had a fixed priority) is replaced
/// rather than doubled; a qdisc just added has no filters to look for, which
/// spares a new endpoint's veth the dump.
fn attach_tc_ingress(
    program: &mut SchedClassifier,
    name: &str,
    ifname: &str,
    how: TcAttach,
) -> Result<SchedClassifierLinkId> {
    let options = match how {
        TcAttach::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        TcAttach::NetlinkClsact => {
            if ensure_clsact(ifname)? == Clsact::WasThere {
                remove_unmarked_filter(ifname, name)?;
            }
            TcAttachOptions::Netlink(NlOptions {
                priority: NL_PRIORITY,
                handle: NL_HANDLE,
                ..NlOptions::default()
            })
        }
    };
    Ok(program.attach_with_options(ifname, TcAttachType::Ingress, options)?)
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Clsact {
    Added,
    WasThere,
}

pub(super) fn ensure_clsact(ifname: &str) -> Result<Clsact> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(Clsact::Added),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
            Ok(Clsact::WasThere)
        }
        Err(e) => Err(e).with_context(|| format!("adding a clsact qdisc to {ifname}")),
    }
}

fn remove_unmarked_filter(ifname: &str, name: &str) -> Result<()> {
    match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, name) {
        Ok(()) => {
            log::info!("replaced the {name} filter a previous agent left on {ifname}");
            Ok(())
        }
        Err(TcError::IoError(e)) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing a stale {name} filter from {ifname}")),
    }
}

/// Detaches an attachment a previous agent left at `hook`: unpinning its link,
/// or removing its netlink filter and the directory that marks it.
fn detach_left(path: &Path, hook: &Hook) -> Result<()> {
    if path.is_dir() {
        if let Some(ifname) = hook.tc_ifname() {
            match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, hook.program()) {
                Ok(()) => {}
                Err(TcError::IoError(e)) if e.kind() == ErrorKind::NotFound => {}
                // The interface went, and its filters with it.
                Err(_) if ifindex(ifname)?.is_none() => {}
                Err(e) => return Err(e).with_context(|| format!("detaching from {ifname}")),
            }
        }
        let _ = fs::remove_dir(path);
        return Ok(());
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("unpinning {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn tc_fd_link(link: SchedClassifierLink) -> Result<FdLink, SchedClassifierLink> {
    // Only a TCX attachment is a bpf_link; try_from consumes the link, so check first.
    if <&FdLink>::try_from(&link).is_ok() {
        Ok(FdLink::try_from(link).expect("checked above"))
    } else {
        Err(link)
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
