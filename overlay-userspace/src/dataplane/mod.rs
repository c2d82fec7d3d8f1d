//! The last floor: the eBPF object, its maps and programs, and bringing the maps
//! to a desired state.
//!
//! - [`pins`]: the node's pin directory, and adopting what a previous agent left;
//! - [`maps`]: typed handles on the maps; [`reconcile`]: desired state → map
//!   diff, applied; `batch`: whole-map reads;
//! - [`programs`]: loading and attaching the programs; [`kernel`]: what the
//!   running kernel offers them;
//! - [`upgrade`] and `swap`: taking over from an agent of another version
//!   (maps migrated, programs swapped atomically under the live maps).
//! - [`usage`]: counters and occupancy as the maps hold them; [`events`]: the
//!   drop events of the monitor; [`logs`]: the programs' log records.

mod batch;
pub mod events;
pub mod kernel;
pub mod logs;
pub mod maps;
pub mod pins;
pub mod programs;
pub mod reconcile;
mod swap;
pub mod upgrade;
pub mod usage;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use overlay_common::{CONFIG_F_MONITOR, CONFIG_F_TRACE, TraceFlow};

use self::{
    events::DropEvents,
    maps::Maps,
    programs::{Hook, Programs},
    reconcile::{Changes, Prune, Tables},
    upgrade::MapChange,
};
use crate::{
    config::DecapMode,
    desired::DesiredState,
    host::{netns::netns_path, veth::CreatedEndpoint},
    model::Plumbing,
};

/// The compiled eBPF object, embedded at build time.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay"))
}

/// What the programs are asked to report besides counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observe {
    /// A monitor listens: drops write events.
    pub monitor: bool,
    /// The flow whose decisions are logged.
    pub trace: Option<TraceFlow>,
}

impl Observe {
    fn flags(self) -> u32 {
        (if self.monitor { CONFIG_F_MONITOR } else { 0 })
            | (if self.trace.is_some() {
                CONFIG_F_TRACE
            } else {
                0
            })
    }
}

/// One node's loaded dataplane: its maps, its programs and where they attach.
pub struct Dataplane {
    maps: Maps,
    programs: Programs,
    decap: DecapMode,
    pin_dir: PathBuf,
    /// A previous agent's dataplane is still running: its attachments are to
    /// be swapped to this agent's programs, and these maps migrated, once the
    /// desired state is complete.
    takeover: Option<Vec<MapChange>>,
    /// Maps found full, each reported once until it has room again.
    full: BTreeSet<&'static str>,
    /// What the maps held after the last pass, if that pass wrote all of the
    /// desired state: the next pass diffs against it instead of reading them.
    written: Option<Tables>,
    observe: Observe,
    /// Until the agent takes them to its monitor.
    events: Option<DropEvents>,
    /// Reads the programs' log records into the agent's log.
    logs: tokio::task::JoinHandle<()>,
}

impl Dataplane {
    /// Loads the programs with every map pinned under `pin_dir`, reusing the
    /// maps a previous agent left there (see [`pins::load_adopting`]), and
    /// starts reading their logs.
    pub fn load(pin_dir: &Path, decap: DecapMode) -> Result<Dataplane> {
        let adopting = pins::holds_pins(pin_dir);
        let (mut ebpf, maps, changes) = pins::load_adopting(pin_dir)?;
        // The readers hold this object's maps, which the programs swapped in
        // write to: a takeover keeps them working.
        let events = DropEvents::take(&mut ebpf)?;
        let logs = logs::start(&mut ebpf)?;
        let programs = match Programs::load(ebpf, pin_dir) {
            Ok(programs) => programs,
            Err(e) => {
                logs.abort();
                return Err(e);
            }
        };
        Ok(Dataplane {
            maps,
            programs,
            decap,
            pin_dir: pin_dir.to_owned(),
            takeover: adopting.then_some(changes),
            full: BTreeSet::new(),
            written: None,
            observe: Observe::default(),
            events: Some(events),
            logs,
        })
    }

    /// Brings every map to what `desired` implies. `read` reads what the maps
    /// hold (the periodic pass, which repairs what others changed); otherwise
    /// the pass diffs against what the previous one wrote. The first time the
    /// state is complete (`Prune::All`: the cluster view is warm), a previous
    /// agent's dataplane is taken over: its attachments swapped to this
    /// agent's programs, and the migrated maps pinned in place of the old ones.
    pub fn apply(&mut self, desired: &DesiredState, prune: Prune, read: bool) -> Result<Changes> {
        let mut want = Tables::from_desired(desired);
        want.config.flags |= self.observe.flags();
        let written = self.written.take().filter(|_| !read);
        let changes = reconcile::reconcile_with(&mut self.maps, &want, prune, written.as_ref())?;
        // Only a pass that installed all of the desired state knows what the
        // maps hold; kept stale entries or refused ones need a read.
        if prune == Prune::All && changes.refused.is_empty() {
            self.written = Some(want);
        }
        self.report_full(&changes);
        if prune == Prune::All
            && let Some(migrated) = &self.takeover
        {
            self.programs.swap_adopted()?;
            upgrade::promote_migrated(&self.pin_dir, migrated)?;
            if !migrated.is_empty() {
                let names: Vec<String> = migrated.iter().map(ToString::to_string).collect();
                info!("migrated map(s) now in use: {}", names.join(", "));
            }
            self.takeover = None;
        }
        Ok(changes)
    }

    /// Logs a map that refused entries for want of room once, naming it, and
    /// once more when it has room again. `overlay stats` shows the same from
    /// the pins.
    fn report_full(&mut self, changes: &Changes) {
        for (&name, &refused) in &changes.refused {
            if self.full.insert(name) {
                let max = self.maps.max_entries(name).unwrap_or(0);
                warn!(
                    "map {name} is full ({max} entries): {refused} entr{} the desired state holds \
                     could not be installed; the rest of the dataplane is unaffected. This node's \
                     own endpoints and gateways go in first; traffic to the missing remote ones is dropped \
                     (drop_no_fdb) until entries are freed",
                    if refused == 1 { "y" } else { "ies" }
                );
            }
        }
        self.full.retain(|name| {
            let still = changes.refused.contains_key(name);
            if !still {
                info!("map {name} has room again: every entry of the desired state is installed");
            }
            still
        });
    }

    /// Whether the previous agent's programs still run, waiting for the swap.
    pub fn swap_pending(&self) -> bool {
        self.takeover.is_some()
    }

    /// Asks the programs to report what `observe` says, at once: the flow
    /// first, then the flags in CONFIG that make them look at it.
    pub fn set_observe(&mut self, observe: Observe) -> Result<()> {
        // CONFIG changes here, behind the reconciler.
        self.written = None;
        if let Some(flow) = observe.trace {
            self.maps.trace.set(0, flow, 0).context("writing TRACE")?;
        }
        let mut config = self.maps.config.get(&0, 0).context("reading CONFIG")?;
        config.flags = (config.flags & !(CONFIG_F_MONITOR | CONFIG_F_TRACE)) | observe.flags();
        self.maps
            .config
            .set(0, config, 0)
            .context("writing CONFIG")?;
        self.observe = observe;
        Ok(())
    }

    /// The drop events, for the one reader there may be.
    pub fn take_drop_events(&mut self) -> Option<DropEvents> {
        self.events.take()
    }

    /// The maps, to read the counters and occupancy from.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn attach_underlay(&mut self, underlay: &str) -> Result<()> {
        self.programs.attach_underlay(underlay, self.decap)
    }

    /// Attaches the endpoint program to the host side of an endpoint's veth and,
    /// for XDP decap, the XDP_PASS program its container side needs to accept
    /// redirected frames.
    pub fn attach_endpoint(&mut self, e: &CreatedEndpoint) -> Result<()> {
        self.programs.attach_endpoint(&e.plan.host_ifname)?;
        if self.decap == DecapMode::Xdp {
            // A caller-plumbed end is still in this namespace: it gets the
            // program here, before the caller moves it.
            let (netns, ifname) = match e.plan.plumbing {
                Plumbing::Agent => (netns_path(&e.plan.netns), e.plan.container_ifname.clone()),
                Plumbing::Caller => ("/proc/thread-self/ns/net".into(), e.plan.peer_ifname()),
            };
            self.programs
                .attach_peer_xdp(&e.plan.host_ifname, &netns, &ifname)?;
        }
        Ok(())
    }

    /// Detaches both of an endpoint's hooks, trying the second when the first
    /// fails; the first error, if any.
    pub fn detach_endpoint(&mut self, host_ifname: &str) -> Result<()> {
        let endpoint = self
            .programs
            .detach(&Hook::Endpoint(host_ifname.to_owned()));
        let peer = self.programs.detach(&Hook::PeerXdp(host_ifname.to_owned()));
        endpoint.and(peer)
    }

    /// Detaches the links a previous agent pinned that nothing adopted; their names.
    pub fn detach_unadopted(&mut self) -> Vec<String> {
        self.programs.detach_unadopted()
    }

    /// Leaves programs, links and maps in place for the next agent. Nobody
    /// listens any more, so the programs stop writing events. Maps of a
    /// migration that was not swapped in yet are removed: the previous
    /// agent's maps still serve its programs, and the next agent starts over.
    pub fn keep(mut self) {
        if self.observe != Observe::default()
            && let Err(e) = self.set_observe(Observe::default())
        {
            log::warn!("clearing the monitor flags before leaving: {e:#}");
        }
        self.programs.keep_all();
        if self.takeover.is_some()
            && let Err(e) = upgrade::clear_migrating(&self.pin_dir)
        {
            log::warn!("{e:#}");
        }
    }

    /// Detaches every program and removes the pins. Carries on past errors and
    /// returns the first.
    pub fn remove(mut self, pin_dir: &Path) -> Result<()> {
        let detached = self.programs.detach_all();
        drop(self);
        let unpinned = pins::unpin(pin_dir);
        detached.and(unpinned)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.logs.abort();
    }
}
