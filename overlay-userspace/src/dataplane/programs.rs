//! The loaded programs and their attachments (hooks), pinned as links so the
//! dataplane outlives an agent that is killed or exits with `--keep`.

use std::{
    collections::BTreeMap,
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
        },
        xdp::XdpLink,
    },
};
use overlay_common::program_names;

use super::{
    kernel::{self, TcAttach},
    pins::LINKS_DIR,
};
use crate::{config::DecapMode, host::netns::NetnsGuard};

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
    #[cfg(feature = "test-doors")]
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
                    log::info!("replaced the {name} filter a previous agent left on {ifname}");
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
