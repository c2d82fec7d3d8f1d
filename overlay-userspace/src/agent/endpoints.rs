//! This node's endpoints: each one's veth pair, the programs attached to it,
//! and where it came from. Creating one attaches it; removing one detaches and
//! deletes it; nothing is left half-made on failure.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::Result;
use log::warn;

use crate::{
    api::proto::AttachmentKey,
    dataplane::Dataplane,
    host::{
        ifname,
        netlink::Netlink,
        netns::{self, NetnsId},
        plan::PlannedEndpoint,
        veth::{self, CreatedEndpoint},
    },
    model::PortMapping,
};

/// Where a local endpoint was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An `[[endpoint]]` of the cluster file: only the file removes it.
    File,
    /// The local API (or the state file that remembers its requests).
    Api,
}

/// A local endpoint whose veth exists and whose programs are attached.
pub struct Attached {
    pub veth: CreatedEndpoint,
    pub origin: Origin,
    /// Made by this agent rather than adopted from a previous one: a failed
    /// setup deletes it.
    pub made_here: bool,
    /// Its namespace's identity, taken once: finding an endpoint by namespace
    /// would otherwise stat every endpoint's namespace file, an add's largest
    /// cost at 2,000 endpoints (a sixth of the agent's CPU).
    netns_id: Option<NetnsId>,
    /// Its namespace's path, made once for the same reason.
    netns_path: PathBuf,
}

impl Attached {
    pub fn network(&self) -> &str {
        &self.veth.plan.network
    }
    pub fn netns(&self) -> &str {
        &self.veth.plan.netns
    }
    fn new(veth: CreatedEndpoint, origin: Origin, made_here: bool) -> Attached {
        let netns_id = netns::netns_id(&veth.plan.netns);
        let netns_path = netns::netns_path(&veth.plan.netns);
        Attached {
            veth,
            origin,
            made_here,
            netns_id,
            netns_path,
        }
    }
    /// Whether this is the endpoint of `network` in namespace `netns` (a name
    /// or a path of the same namespace, whose identity is `id`).
    fn is(&self, network: &str, netns: &Path, id: Option<NetnsId>) -> bool {
        self.network() == network
            // As bytes: a Path compares component by component, a tenth of
            // an add at 2,000 endpoints.
            && (self.netns_path.as_os_str() == netns.as_os_str()
                || id.is_some_and(|id| self.netns_id == Some(id)))
    }
    /// Whether this is the runtime attachment `key`.
    pub fn has_key(&self, key: &AttachmentKey) -> bool {
        let plan = &self.veth.plan;
        plan.container_id.as_deref() == Some(key.container_id.as_str())
            && plan.container_ifname == key.ifname
    }
}

#[derive(Default)]
pub struct Endpoints {
    list: Vec<Attached>,
    /// (network, netns) of adds waiting for an address block claim to settle.
    in_flight: BTreeSet<(String, String)>,
}

impl Endpoints {
    pub fn iter(&self) -> impl Iterator<Item = &Attached> {
        self.list.iter()
    }

    pub fn count(&self) -> usize {
        self.list.len()
    }

    pub fn find(&self, network: &str, netns: &str) -> Option<&Attached> {
        let (path, id) = (netns::netns_path(netns), netns::netns_id(netns));
        self.list.iter().find(|a| a.is(network, &path, id))
    }

    pub fn find_key(&self, key: &AttachmentKey) -> Option<&Attached> {
        self.list.iter().find(|a| a.has_key(key))
    }

    /// Replaces the published ports of the attachment `key`; the ports it had.
    pub fn set_ports(&mut self, key: &AttachmentKey, ports: Vec<PortMapping>) -> Vec<PortMapping> {
        self.list
            .iter_mut()
            .find(|a| a.has_key(key))
            .map(|a| std::mem::replace(&mut a.veth.plan.ports, ports))
            .unwrap_or_default()
    }

    /// The veths, for the desired state.
    pub fn veths(&self) -> impl Iterator<Item = &CreatedEndpoint> {
        self.list.iter().map(|a| &a.veth)
    }

    /// Marks an add of (network, netns) as under way; false if one already is.
    pub fn begin_add(&mut self, network: &str, netns: &str) -> bool {
        self.in_flight
            .insert((network.to_owned(), netns.to_owned()))
    }

    pub fn end_add(&mut self, network: &str, netns: &str) {
        self.in_flight
            .remove(&(network.to_owned(), netns.to_owned()));
    }

    /// Adopts the veth pair a previous agent left for `planned`, or creates it,
    /// and records it. Programs are attached later, once the maps hold it
    /// (see [`Endpoints::attach_all`]).
    pub async fn ensure(
        &mut self,
        nl: &Netlink,
        planned: &PlannedEndpoint,
        origin: Origin,
    ) -> Result<()> {
        let (veth, made_here) = veth::ensure_endpoint(nl, planned).await?;
        self.list.push(Attached::new(veth, origin, made_here));
        Ok(())
    }

    /// Adopts the veth pair a previous agent left for `planned` and records
    /// it; false (and nothing recorded) if there is none.
    pub async fn adopt(
        &mut self,
        nl: &Netlink,
        planned: &PlannedEndpoint,
        origin: Origin,
    ) -> Result<bool> {
        let Some(veth) = veth::adopt_endpoint(nl, planned).await? else {
            return Ok(false);
        };
        self.list.push(Attached::new(veth, origin, false));
        Ok(true)
    }

    pub fn attach_all(&self, dataplane: &mut Dataplane) -> Result<()> {
        for a in &self.list {
            dataplane.attach_endpoint(&a.veth)?;
        }
        Ok(())
    }

    /// Creates the veth pair for `planned` (through `inside`, a connection
    /// into its namespace, if the caller has one) and attaches the programs to
    /// it. On failure nothing of it is left.
    pub async fn create(
        &mut self,
        nl: &Netlink,
        dataplane: &mut Dataplane,
        planned: &PlannedEndpoint,
        inside: Option<&Netlink>,
    ) -> Result<&Attached> {
        let veth = veth::create_endpoint(nl, planned, inside).await?;
        if let Err(e) = dataplane.attach_endpoint(&veth) {
            let _ = remove(nl, dataplane, &veth).await;
            return Err(e);
        }
        self.list.push(Attached::new(veth, Origin::Api, true));
        Ok(self.list.last().expect("just pushed"))
    }

    /// Takes an endpoint out of the list, leaving its veth and programs; put it
    /// back with [`Endpoints::restore`], or finish with [`remove`].
    pub fn take(&mut self, network: &str, netns: &str) -> Option<Attached> {
        let (path, id) = (netns::netns_path(netns), netns::netns_id(netns));
        let at = self.list.iter().position(|a| a.is(network, &path, id))?;
        Some(self.list.remove(at))
    }

    pub fn restore(&mut self, attached: Attached) {
        self.list.push(attached);
    }

    /// Takes out every endpoint whose veth has vanished (its namespace was
    /// deleted, typically) and detaches its programs; they are returned.
    pub fn forget_vanished(&mut self, dataplane: &mut Dataplane) -> Vec<Attached> {
        let mut kept = Vec::with_capacity(self.list.len());
        let mut gone = Vec::new();
        for a in self.list.drain(..) {
            match ifname::ifindex(&a.veth.plan.host_ifname) {
                Ok(Some(index)) if index == a.veth.host_ifindex => kept.push(a),
                Ok(_) => gone.push(a),
                Err(e) => {
                    warn!("checking {}: {e:#}", a.veth.plan.host_ifname);
                    kept.push(a);
                }
            }
        }
        self.list = kept;
        for a in &gone {
            let _ = dataplane.detach_endpoint(&a.veth.plan.host_ifname);
        }
        gone
    }

    /// Deletes every endpoint's veth pair (their programs are detached with the
    /// dataplane), carrying on past errors.
    pub async fn delete_all(&mut self, nl: &Netlink) {
        for a in self.list.drain(..).rev() {
            if let Err(e) = veth::delete_endpoint(nl, &a.veth).await {
                warn!("{e:#}");
            }
        }
    }

    /// After a failed setup on an adopted dataplane: removes only what this
    /// agent made, leaving the rest running.
    pub async fn remove_made_here(&mut self, nl: &Netlink, dataplane: &mut Dataplane) {
        for a in self.list.drain(..).filter(|a| a.made_here) {
            if let Err(e) = remove(nl, dataplane, &a.veth).await {
                warn!("{e:#}");
            }
        }
    }
}

/// Detaches an endpoint's programs and deletes its veth pair, trying both; the
/// first error.
pub async fn remove(nl: &Netlink, dataplane: &mut Dataplane, veth: &CreatedEndpoint) -> Result<()> {
    let detached = dataplane.detach_endpoint(&veth.plan.host_ifname);
    let deleted = veth::delete_endpoint(nl, veth).await;
    detached.and(deleted)
}
