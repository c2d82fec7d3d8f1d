//! The swap: every attachment a previous agent left is pointed at this agent's
//! programs in one pass, each atomically, and the whole pass is rolled back if
//! one of them fails, so the node never runs half of one version and half of
//! the other.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp,
    links::{FdLink, PinnedLink},
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};
use log::{info, warn};

use super::{
    pins::PROGRAMS_DIR,
    programs::{
        Attachment, Hook, NL_HANDLE, NL_PRIORITY, Programs, classifier, ensure_clsact, xdp,
    },
};

/// A program to point attachments at: this agent's, or the previous agent's
/// (opened from its pin) for a rollback.
enum Source<'a> {
    Tc(&'a mut SchedClassifier),
    Xdp(&'a mut Xdp),
}

/// The previous agent's programs, from their pins.
struct Previous {
    tc: Vec<(&'static str, SchedClassifier)>,
    xdp: Vec<(&'static str, Xdp)>,
}

impl Previous {
    fn open(pin_dir: &Path, hooks: &[Hook]) -> Result<Previous> {
        let dir = pin_dir.join(PROGRAMS_DIR);
        let mut previous = Previous {
            tc: Vec::new(),
            xdp: Vec::new(),
        };
        for hook in hooks {
            let name = hook.program();
            if previous.tc.iter().any(|(n, _)| *n == name)
                || previous.xdp.iter().any(|(n, _)| *n == name)
            {
                continue;
            }
            let path = dir.join(name);
            if hook.tc_ifname().is_some() {
                previous.tc.push((name, SchedClassifier::from_pin(&path)?));
            } else {
                let program = Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface)?;
                previous.xdp.push((name, program));
            }
        }
        Ok(previous)
    }

    fn source(&mut self, hook: &Hook) -> Option<Source<'_>> {
        let name = hook.program();
        if let Some((_, p)) = self.tc.iter_mut().find(|(n, _)| *n == name) {
            return Some(Source::Tc(p));
        }
        self.xdp
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| Source::Xdp(p))
    }
}

impl Programs {
    /// Points every adopted attachment at this agent's programs, then pins them
    /// in place of the previous agent's. All or nothing: on a failure the hooks
    /// already swapped go back to the previous programs. Returns how many
    /// attachments were swapped.
    pub fn swap_adopted(&mut self) -> Result<usize> {
        let hooks: Vec<Hook> = self.adopted.iter().cloned().collect();
        // Opened before anything changes: without them there is no way back.
        let previous = Previous::open(&self.pin_dir, &hooks);
        if let Err(e) = &previous {
            warn!(
                "the previous agent's programs are not pinned ({e:#}); a swap that fails half-way \
                 cannot be rolled back"
            );
        }
        let mut swapped: Vec<(Hook, Attachment)> = Vec::new();
        for hook in &hooks {
            let path = self.link_path(hook);
            let source = source_of(&mut self.ebpf, hook)?;
            match repoint(source, &path, hook) {
                Ok(attachment) => swapped.push((hook.clone(), attachment)),
                Err(e) => {
                    let back = match previous {
                        Ok(mut previous) => roll_back(&mut previous, &self.pin_dir, swapped),
                        Err(_) => Err(anyhow::anyhow!("no pinned previous programs")),
                    };
                    let what = match back {
                        Ok(()) => "every hook runs the previous agent's programs again".to_owned(),
                        Err(b) => format!("rolling back failed too: {b:#}"),
                    };
                    return Err(e.context(format!(
                        "swapping the program at {} to this agent's; {what}",
                        hook.pin_name()
                    )));
                }
            }
        }
        let n = swapped.len();
        for (hook, attachment) in swapped {
            self.adopted.remove(&hook);
            self.attachments.insert(hook, attachment);
        }
        self.pin_programs()?;
        if n > 0 {
            info!("swapped {n} attachment(s) to this agent's programs, each atomically");
        }
        Ok(n)
    }
}

fn source_of<'a>(ebpf: &'a mut aya::Ebpf, hook: &Hook) -> Result<Source<'a>> {
    Ok(if hook.tc_ifname().is_some() {
        Source::Tc(classifier(ebpf, hook.program())?)
    } else {
        Source::Xdp(xdp(ebpf, hook.program())?)
    })
}

fn roll_back(
    previous: &mut Previous,
    pin_dir: &Path,
    swapped: Vec<(Hook, Attachment)>,
) -> Result<()> {
    let mut first_err = None;
    for (hook, attachment) in swapped {
        let path = pin_dir.join(super::pins::LINKS_DIR).join(hook.pin_name());
        let result = match previous.source(&hook) {
            Some(source) => repoint(source, &path, &hook),
            None => Err(anyhow::anyhow!(
                "no previous program for {}",
                hook.pin_name()
            )),
        };
        match result {
            // The previous program's netlink filter must outlive this agent.
            Ok(Attachment::TcNetlink(link, _)) => std::mem::forget(link),
            Ok(Attachment::Pinned(_)) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        if let Attachment::TcNetlink(link, _) = attachment {
            // Replaced again above: the filter at our priority is the previous
            // program's now, and dropping this handle would remove it.
            std::mem::forget(link);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Points the attachment at `hook` (pinned at `path`) to `source`: a
/// `bpf_link_update` for a pinned link, a filter replace at our priority and
/// handle for a netlink filter (its `path` is a directory).
fn repoint(source: Source<'_>, path: &Path, hook: &Hook) -> Result<Attachment> {
    if path.is_dir() {
        let Some(ifname) = hook.tc_ifname() else {
            bail!(
                "{} is a netlink filter's, but not a TC hook",
                path.display()
            );
        };
        let Source::Tc(program) = source else {
            bail!("a netlink filter needs a classifier");
        };
        let existing = SchedClassifierLink::attached(
            ifname,
            TcAttachType::Ingress,
            NL_PRIORITY,
            NL_HANDLE,
            None,
        )
        .with_context(|| format!("interface {ifname}"))?;
        let id = match program.attach_to_link(existing) {
            Ok(id) => id,
            // Gone (removed by hand), or an older agent's at another priority:
            // attach at ours, ahead of it.
            Err(_) => {
                ensure_clsact(ifname)?;
                program
                    .attach_with_options(
                        ifname,
                        TcAttachType::Ingress,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: NL_PRIORITY,
                            handle: NL_HANDLE,
                            ..NlOptions::default()
                        }),
                    )
                    .with_context(|| format!("attaching to {ifname}"))?
            }
        };
        return Ok(Attachment::TcNetlink(
            program.take_link(id)?,
            path.to_owned(),
        ));
    }
    let link: FdLink = PinnedLink::from_pin(path)
        .with_context(|| format!("opening pinned link {}", path.display()))?
        .into();
    match source {
        Source::Tc(program) => {
            let id = program.attach_to_link(SchedClassifierLink::try_from(link)?)?;
            // Dropping our handle closes a descriptor; the pin keeps the link.
            drop(program.take_link(id)?);
        }
        Source::Xdp(program) => {
            let id = program.attach_to_link(XdpLink::try_from(link)?)?;
            drop(program.take_link(id)?);
        }
    }
    Ok(Attachment::Pinned(PinnedLink::from_pin(path)?))
}
