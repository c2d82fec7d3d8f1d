//! The last floor: the eBPF object, its maps and programs, and bringing the maps
//! to a desired state.
//!
//! - [`pins`]: the node's pin directory, and adopting what a previous agent left;
//! - [`maps`]: typed handles on the maps; [`reconcile`]: desired state → map
//!   diff, applied; `batch`: whole-map reads;
//! - [`programs`]: loading and attaching the programs; [`kernel`]: what the
//!   running kernel offers them.

mod batch;
pub mod kernel;
pub mod maps;
pub mod pins;
pub mod programs;
pub mod reconcile;

use std::path::Path;

use anyhow::Result;

use self::{
    maps::Maps,
    programs::{Hook, Programs},
    reconcile::{Changes, Prune, Tables},
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

/// One node's loaded dataplane: its maps, its programs and where they attach.
pub struct Dataplane {
    maps: Maps,
    programs: Programs,
    decap: DecapMode,
}

impl Dataplane {
    /// Loads the programs with every map pinned under `pin_dir`, reusing the
    /// maps a previous agent left there (see [`pins::load_adopting`]).
    pub fn load(pin_dir: &Path, decap: DecapMode) -> Result<Dataplane> {
        let (ebpf, maps) = pins::load_adopting(pin_dir)?;
        let programs = Programs::load(ebpf, pin_dir)?;
        Ok(Dataplane {
            maps,
            programs,
            decap,
        })
    }

    /// Brings every map to what `desired` implies.
    pub fn apply(&mut self, desired: &DesiredState, prune: Prune) -> Result<Changes> {
        reconcile::reconcile_with(&mut self.maps, &Tables::from_desired(desired), prune)
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

    /// Leaves programs, links and maps in place for the next agent.
    pub fn keep(mut self) {
        self.programs.keep_all();
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
