//! Endpoints added and removed: by the CLI (by network and namespace) and by
//! container runtimes (keyed by container ID and interface name). Both take
//! one path: check, pick an address (claiming a block first if need be), plan,
//! plumb and attach, then commit; a failed commit undoes the veth.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result};
use log::{info, warn};

use super::{Pending, addresses::Claimant};
use crate::{
    agent::{
        endpoints::{self, Attached, Origin},
        node::Node,
        state_file::{Change, SavedEndpoint},
    },
    api::{
        offline,
        proto::{ApiError, AttachRequest, AttachmentKey, ErrorCode, api_error},
    },
    cluster::record::NetworkDef,
    config::rules,
    host::{netlink::Netlink, netns, plan::next_container_ifname, veth},
    model::{Mac, Plumbing, gateway_mac},
};

/// One attach, however it was asked for.
pub(super) struct AttachSpec {
    pub network: String,
    pub netns: String,
    pub ip: Option<Ipv4Addr>,
    /// As typed (the CLI) or as sent (a runtime's, already a MAC).
    pub mac: Option<String>,
    /// A runtime's key; `None` for the CLI, whose endpoint gets the next `ethN`.
    pub key: Option<AttachmentKey>,
    pub plumbing: Plumbing,
    /// `ip` is a reservation the caller holds (Docker's IPAM).
    pub reserved: bool,
}

impl From<&AttachRequest> for AttachSpec {
    fn from(r: &AttachRequest) -> AttachSpec {
        AttachSpec {
            network: r.network.clone(),
            netns: r.netns.clone(),
            ip: r.ip,
            mac: r.mac.map(|m| m.to_string()),
            key: Some(AttachmentKey {
                container_id: r.container_id.clone(),
                ifname: r.ifname.clone(),
            }),
            plumbing: r.plumbing,
            reserved: r.reserved,
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|a| a.code == ErrorCode::NotFound)
}

fn invalid(problem: impl Into<String>) -> anyhow::Error {
    api_error(ErrorCode::Invalid, problem)
}

fn exists(problem: impl Into<String>) -> anyhow::Error {
    api_error(ErrorCode::Exists, problem)
}

impl Node {
    pub(super) async fn attach(
        &mut self,
        nl: &Netlink,
        spec: &AttachSpec,
        attempt: u32,
    ) -> Result<Pending<()>> {
        let (network, netns) = (spec.network.as_str(), spec.netns.as_str());
        let def = self.network_def(network)?;
        if let Some(key) = &spec.key {
            rules::container_id(&key.container_id).map_err(invalid)?;
            rules::interface_name(&key.ifname).map_err(invalid)?;
            if let Some(a) = self.endpoints.find_key(key) {
                return Err(exists(format!(
                    "container {} already has an attachment {} (network {}, {})",
                    key.container_id,
                    key.ifname,
                    a.network(),
                    a.veth.plan.ip
                )));
            }
        }
        // A caller that plumbs the container end itself may name a namespace
        // this agent cannot see (a dockerd in a mount namespace of its own).
        if spec.plumbing == Plumbing::Agent {
            netns::existing(netns).map_err(invalid)?;
            if netns::same_netns(netns, "/proc/self/ns/net") {
                return Err(invalid(format!(
                    "namespace {netns} is the agent's own, not a container's"
                )));
            }
        } else {
            rules::netns(netns).map_err(invalid)?;
        }
        if self.endpoints.find(network, netns).is_some() {
            return Err(exists(format!(
                "namespace {netns} already has an endpoint in network {network}"
            )));
        }
        if attempt == 0 && !self.endpoints.begin_add(network, netns) {
            return Err(exists(format!(
                "an endpoint for namespace {netns} in network {network} is already being added"
            )));
        }
        let added = self.attach_now(nl, &def, spec, attempt).await;
        if !matches!(added, Ok(Pending::AfterClaim(_))) {
            self.endpoints.end_add(network, netns);
        }
        added
    }

    async fn attach_now(
        &mut self,
        nl: &Netlink,
        def: &NetworkDef,
        spec: &AttachSpec,
        attempt: u32,
    ) -> Result<Pending<()>> {
        let network = def.name.as_str();
        let ip = match spec.ip {
            Some(ip) => {
                let by = if spec.reserved {
                    Claimant::Reservation
                } else {
                    Claimant::Anyone
                };
                self.check_address(def, ip, by)?
            }
            None if spec.reserved => return Err(invalid("a reserved attach needs its ip")),
            None => match self.allocate(def, attempt).await? {
                Pending::Ready(ip) => ip,
                Pending::AfterClaim(after) => return Ok(Pending::AfterClaim(after)),
            },
        };
        let mac: Mac = match &spec.mac {
            Some(m) => m.parse().map_err(invalid)?,
            None => Mac::from_ipv4(ip),
        };
        let taken = self.membership.resolved().mac_used(network, mac);
        if taken || def.way_out().is_some_and(|gw| gateway_mac(gw) == mac) {
            return Err(exists(format!(
                "MAC {mac} is already in use in network {network}"
            )));
        }
        let (container_ifname, inside) = self.container_ifname(spec).await?;
        let saved = SavedEndpoint {
            network: network.to_owned(),
            netns: spec.netns.clone(),
            ip,
            mac,
            container_ifname,
            container_id: spec.key.as_ref().map(|k| k.container_id.clone()),
            plumbing: spec.plumbing,
            ports: Vec::new(),
        };
        let planned = self.plan_endpoint(def, &saved);
        if nl.link_by_name(&planned.host_ifname).await?.is_some() {
            return Err(exists(format!(
                "interface {} already exists",
                planned.host_ifname
            )));
        }
        if spec.plumbing == Plumbing::Caller
            && nl.link_by_name(&planned.peer_ifname()).await?.is_some()
        {
            return Err(exists(format!(
                "interface {} already exists",
                planned.peer_ifname()
            )));
        }
        let dataplane = self
            .dataplane
            .as_mut()
            .context("the dataplane is not loaded")?;
        self.endpoints
            .create(nl, dataplane, &planned, inside.as_ref())
            .await?;
        let netns = saved.netns.clone();
        if let Err(e) = self.commit(Change::AddEndpoint(saved)).await {
            self.undo_add(nl, network, &netns).await;
            return Err(e);
        }
        info!(
            "endpoint {ip} ({mac}) added in network {network}, namespace {netns}{}",
            spec.key
                .as_ref()
                .map(|k| format!(", container {} {}", k.container_id, k.ifname))
                .unwrap_or_default()
        );
        Ok(Pending::Ready(()))
    }

    /// The container end's name: the one asked for, which must be free inside
    /// (the agent plumbs it), or the next free `ethN` (the CLI); with the
    /// connection into the namespace that found out, for the plumbing.
    async fn container_ifname(&self, spec: &AttachSpec) -> Result<(String, Option<Netlink>)> {
        match (&spec.key, spec.plumbing) {
            (Some(key), Plumbing::Caller) => Ok((key.ifname.clone(), None)),
            (Some(key), Plumbing::Agent) => {
                let inside = Netlink::in_netns(&netns::netns_path(&spec.netns))?;
                if inside.link_by_name(&key.ifname).await?.is_some() {
                    return Err(exists(format!(
                        "namespace {} already has an interface {}",
                        spec.netns, key.ifname
                    )));
                }
                Ok((key.ifname.clone(), Some(inside)))
            }
            (None, _) => {
                let inside = Netlink::in_netns(&netns::netns_path(&spec.netns))?;
                Ok((next_container_ifname(&inside).await?, Some(inside)))
            }
        }
    }

    /// Takes a just-created endpoint out again after its commit failed.
    async fn undo_add(&mut self, nl: &Netlink, network: &str, netns: &str) {
        if let (Some(attached), Some(dataplane)) =
            (self.endpoints.take(network, netns), self.dataplane.as_mut())
        {
            let _ = endpoints::remove(nl, dataplane, &attached.veth).await;
        }
    }

    /// The CLI's `endpoint rm`: by network and namespace.
    pub(super) async fn endpoint_rm(
        &mut self,
        nl: &Netlink,
        network: &str,
        netns: &str,
    ) -> Result<Attached> {
        if self.endpoints.find(network, netns).is_none() {
            return Err(api_error(
                ErrorCode::NotFound,
                format!("namespace {netns} has no endpoint in network {network} on this node"),
            ));
        }
        self.remove_endpoint(nl, network, netns).await
    }

    /// A runtime's attachment, by its key.
    fn by_key(&self, key: &AttachmentKey) -> Result<&Attached> {
        self.endpoints.find_key(key).ok_or_else(|| {
            api_error(
                ErrorCode::NotFound,
                format!(
                    "container {} has no attachment {} on this node",
                    key.container_id, key.ifname
                ),
            )
        })
    }

    /// A runtime's detach, by its key.
    pub(super) async fn detach(&mut self, nl: &Netlink, key: &AttachmentKey) -> Result<Attached> {
        let a = self.by_key(key)?;
        let (network, netns) = (a.network().to_owned(), a.netns().to_owned());
        self.remove_endpoint(nl, &network, &netns).await
    }

    /// Carries out the detaches runtimes queued while no agent answered (see
    /// [`offline`]); a failed one stays queued for the next pass.
    pub async fn detach_queued(&mut self, nl: &Netlink, socket: &Path) {
        for (path, key) in offline::queued(socket) {
            match self.detach(nl, &key).await {
                Ok(_) => info!(
                    "container {} attachment {} detached as queued while no agent answered",
                    key.container_id, key.ifname
                ),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    warn!("queued detach of {key:?}: {e:#}");
                    continue;
                }
            }
            offline::done(&path);
        }
    }

    /// A runtime's check: the attachment is there and as it was made.
    pub(super) async fn check(&self, nl: &Netlink, key: &AttachmentKey) -> Result<&Attached> {
        let a = self.by_key(key)?;
        veth::check_endpoint(nl, &a.veth).await.map_err(|problem| {
            api_error(
                ErrorCode::Failed,
                format!(
                    "container {} attachment {}: {problem}",
                    key.container_id, key.ifname
                ),
            )
        })?;
        Ok(a)
    }

    /// Withdraws an endpoint from the maps and the cluster, then deletes its
    /// veth. The cluster file's endpoints are the file's to remove.
    async fn remove_endpoint(
        &mut self,
        nl: &Netlink,
        network: &str,
        netns: &str,
    ) -> Result<Attached> {
        let attached = self
            .endpoints
            .find(network, netns)
            .expect("checked by the caller");
        if attached.origin == Origin::File {
            return Err(invalid(format!(
                "the endpoint of namespace {netns} in network {network} is defined in the cluster file {}; remove it there",
                self.plan.config.path.display()
            )));
        }
        let attached = self.endpoints.take(network, netns).expect("found above");
        let change = Change::RemoveEndpoint {
            network: network.to_owned(),
            netns: attached.netns().to_owned(),
        };
        if let Err(e) = self.commit(change).await {
            self.endpoints.restore(attached);
            return Err(e);
        }
        let dataplane = self
            .dataplane
            .as_mut()
            .context("the dataplane is not loaded")?;
        endpoints::remove(nl, dataplane, &attached.veth).await?;
        info!(
            "endpoint {} removed from network {network}, namespace {netns}",
            attached.veth.plan.ip
        );
        Ok(attached)
    }
}
