//! One node's agent state, and the one way it changes: a request's [`Change`]
//! goes through [`Node::commit`] (saved, or nothing happens), then
//! [`Node::sync`] resolves the cluster, announces this node's record and brings
//! the maps to the desired state.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};

use super::{
    endpoints::{Endpoints, Origin},
    membership::Membership,
    state_file::{Change, RuntimeState, SavedEndpoint, StateFile},
};
use crate::{
    cluster::record::{EndpointRecord, NetworkDef, NodeRecord},
    config::DecapMode,
    dataplane::{Dataplane, Observe, events::DropEvents, pins, reconcile::Prune},
    desired::desired_state,
    gossip::{key::Keyring, now_ms},
    host::{
        egress::WayOut,
        netlink::Netlink,
        netns,
        plan::{NodePlan, PlannedEndpoint, host_ifname},
        tunnel_gro,
    },
    metrics::{AgentMetrics, ClusterView, thread_cpu_time},
    model::Plumbing,
};

pub struct Node {
    pub(super) plan: NodePlan,
    pub(super) runtime: RuntimeState,
    state_file: StateFile,
    /// Loaded by [`Node::start`]; gone once torn down.
    pub(super) dataplane: Option<Dataplane>,
    /// The pin directory held a previous agent's dataplane when this one
    /// started: a failed setup must leave it running.
    adopting: bool,
    pub(super) endpoints: Endpoints,
    pub(super) membership: Membership,
    metrics: Arc<AgentMetrics>,
    /// The way out: the agent's nftables table (and DOCKER-USER rules).
    way_out: WayOut,
}

/// What to leave behind when the agent stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// Detach every program, delete every veth, remove the pins.
    All,
    /// `--keep`: leave programs, links, maps and veths for the next agent.
    Keep,
    /// Setup failed after adopting a running dataplane: remove only what this
    /// agent added to it.
    KeepAdopted,
}

impl Node {
    pub fn new(plan: NodePlan, runtime: RuntimeState, state_file: StateFile) -> Node {
        let metrics = AgentMetrics::new(plan.config.decap);
        Node {
            way_out: WayOut::new(&plan.config.node),
            plan,
            runtime,
            state_file,
            dataplane: None,
            adopting: false,
            endpoints: Endpoints::default(),
            membership: Membership::alone(),
            metrics,
        }
    }

    /// What the agent reports to the metrics endpoint.
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    /// The drop events of the loaded dataplane, for the monitor's one reader.
    pub fn take_drop_events(&mut self) -> Option<DropEvents> {
        self.dataplane.as_mut()?.take_drop_events()
    }

    /// Asks the programs to report what the connected monitors and traces need.
    pub fn observe(&mut self, observe: Observe) {
        if let Some(dataplane) = self.dataplane.as_mut()
            && let Err(e) = dataplane.set_observe(observe)
        {
            warn!("asking the programs to report drops and traces: {e:#}");
        }
    }

    pub fn name(&self) -> &str {
        &self.plan.config.node
    }

    /// Whether this agent took over a dataplane a previous one left running.
    pub fn adopted(&self) -> bool {
        self.adopting
    }

    /// Loads (or adopts) the dataplane, makes (or adopts) the endpoints, fills
    /// the tables, attaches the programs, then joins the cluster. On error the
    /// caller tears down with [`Node::teardown_after_failed_setup`].
    pub async fn start(&mut self, nl: &Netlink, keys: Option<Keyring>) -> Result<()> {
        let vtep = self.plan.underlay.vtep;
        if self.runtime.vtep.map(|(ip, _)| ip) != Some(vtep) {
            self.save(&Change::Vtep(vtep, now_ms()))?;
        }
        self.adopting = pins::holds_pins(&self.plan.pin_dir);
        self.dataplane = Some(Dataplane::load(&self.plan.pin_dir, self.plan.config.decap)?);
        for planned in self.plan.endpoints.clone() {
            self.endpoints.ensure(nl, &planned, Origin::File).await?;
        }
        for saved in self.runtime.endpoints.clone() {
            let ensured = match self.plan_saved_endpoint(&saved) {
                Ok(planned) if planned.plumbing == Plumbing::Caller => {
                    // Its container end is wherever the caller put it: the
                    // host end left behind says whether the container lives.
                    if self.endpoints.adopt(nl, &planned, Origin::Api).await? {
                        Ok(())
                    } else {
                        Err(anyhow::anyhow!(
                            "its veth {} is gone (the container with it?)",
                            planned.host_ifname
                        ))
                    }
                }
                Ok(planned) => self.endpoints.ensure(nl, &planned, Origin::Api).await,
                Err(e) => Err(e),
            };
            if let Err(e) = ensured {
                warn!(
                    "endpoint {} in network {} (namespace {}) from the state file is dropped: {e:#}",
                    saved.ip, saved.network, saved.netns
                );
                self.save(&Change::RemoveEndpoint {
                    network: saved.network,
                    netns: saved.netns,
                })?;
            }
        }
        // The view of this node alone (its own networks) before the first
        // fill: an empty one would withdraw the adopted dataplane's networks
        // and endpoints until the next pass (found by the upgrade suite).
        let own = self.own_record();
        self.membership.resolve_own(&own);
        // Tables and the way out first, with the programs not yet attached to
        // new hooks.
        self.apply(Prune::KeepStaleRemote, true)?;
        let dataplane = self.dataplane.as_mut().expect("loaded above");
        dataplane.attach_underlay(&self.plan.underlay.name)?;
        // XDP decap runs before GRO, so the socket would only serve others.
        match self.plan.config.decap {
            DecapMode::Tc => tunnel_gro::ensure(nl, self.plan.config.vxlan_port).await,
            DecapMode::Xdp => tunnel_gro::remove(nl, self.plan.config.vxlan_port).await,
        }
        self.endpoints.attach_all(dataplane)?;
        for stale in dataplane.detach_unadopted() {
            info!("detached {stale}, left by the previous agent and no longer wanted");
        }
        if let (Some(section), Some(keys)) = (self.plan.config.cluster.clone(), keys) {
            let record = self.own_record();
            self.membership
                .join(&self.plan.config.node, &section, keys, &record)
                .await?;
            if let Some(stats) = self.membership.transport_stats() {
                self.metrics.set_transport(stats);
            }
        }
        Ok(())
    }

    /// Re-reads the cluster key file (on SIGHUP). A file that does not read
    /// changes nothing: the keys in use stay.
    pub fn reload_keys(&self) {
        let Some(section) = &self.plan.config.cluster else {
            info!("SIGHUP: no [cluster] section, no key to reload");
            return;
        };
        match Keyring::load(&section.key_file) {
            Ok(keys) => {
                let n = keys.len();
                if self.membership.replace_keys(keys) {
                    info!(
                        "reloaded the cluster key file {}: {n} key(s), sealing with the first",
                        section.key_file.display()
                    );
                }
            }
            Err(e) => log::error!("{e:#}; the keys in use stay"),
        }
    }

    fn plan_saved_endpoint(&self, saved: &SavedEndpoint) -> Result<PlannedEndpoint> {
        let def = self
            .own_networks()
            .remove(&saved.network)
            .with_context(|| format!("network {} is not known", saved.network))?;
        if saved.plumbing == Plumbing::Agent && netns::existing(&saved.netns).is_err() {
            bail!("namespace {} is gone", saved.netns);
        }
        Ok(self.plan_endpoint(&def, saved))
    }

    /// Every name and number of an endpoint of network `def`, as `saved` asks.
    pub(super) fn plan_endpoint(&self, def: &NetworkDef, saved: &SavedEndpoint) -> PlannedEndpoint {
        PlannedEndpoint {
            network: def.name.clone(),
            vni: def.vni,
            netns: saved.netns.clone(),
            container_id: saved.container_id.clone(),
            plumbing: saved.plumbing,
            gateway: def.way_out(),
            ip: saved.ip,
            prefix_len: def.subnet.prefix_len,
            mac: saved.mac,
            mtu: self.plan.mtu_for(def.mtu),
            host_ifname: host_ifname(self.name(), def.vni, saved.ip),
            container_ifname: saved.container_ifname.clone(),
            ports: saved.ports.clone(),
        }
    }

    /// This node's own network definitions: its file's (created 0), then those
    /// created here or copied from the cluster.
    pub(super) fn own_networks(&self) -> BTreeMap<String, NetworkDef> {
        let mut networks = self.runtime.networks.clone();
        for n in &self.plan.config.networks {
            networks.insert(
                n.name.clone(),
                NetworkDef {
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: n.subnet,
                    created_ms: 0,
                    origin: self.name().to_owned(),
                    // The default is left out, as records before gateways had it.
                    gateway: (n.gateway != n.subnet.first_host()).then_some(n.gateway),
                    aux: n.aux.clone(),
                    mtu: n.mtu,
                    internal: n.internal,
                },
            );
        }
        networks
    }

    /// What this node announces.
    fn own_record(&self) -> NodeRecord {
        let mut endpoints: Vec<_> = self
            .endpoints
            .veths()
            .map(|e| EndpointRecord {
                network: e.plan.network.clone(),
                ip: e.plan.ip,
                mac: e.plan.mac,
            })
            .collect();
        endpoints.sort();
        let mut blocks = self.runtime.blocks.clone();
        blocks.sort();
        NodeRecord {
            name: self.name().to_owned(),
            generation: self.membership.generation(),
            live: true,
            gossip_addr: self.plan.config.cluster.as_ref().map(|c| c.advertise),
            vtep: Some(self.plan.underlay.vtep),
            vtep_since_ms: self.runtime.vtep.map_or(0, |(_, since)| since),
            networks: self.own_networks(),
            removed: self.runtime.removed.clone(),
            endpoints,
            blocks,
            malformed: Vec::new(),
        }
    }

    /// Saves the runtime state after `change`; only once that worked does the
    /// node hold the new state.
    fn save(&mut self, change: &Change) -> Result<()> {
        self.state_file.commit(&mut self.runtime, change)
    }

    /// Writes the state file whole, its journal emptied (see `state_file`):
    /// at a clean stop, so that the next start, of whatever build, finds
    /// everything in the snapshot.
    pub fn compact_state_file(&self) -> Result<()> {
        self.state_file.save(&self.runtime)
    }

    /// The one way a request changes the node: saved first (a failed save
    /// changes nothing), then announced and applied.
    pub async fn commit(&mut self, change: Change) -> Result<()> {
        self.save(&change)?;
        self.sync().await;
        Ok(())
    }

    /// Resolves the cluster, takes over network definitions and removals it has
    /// not got yet, announces this node's record, and brings the maps to the
    /// result. Called after every change and every gossip event, and
    /// periodically, so a missed event heals itself.
    pub async fn sync(&mut self) {
        self.sync_and_reconcile(false).await;
    }

    /// [`Node::sync`], its reconcile pass periodic or not (see [`Node::apply`]).
    async fn sync_and_reconcile(&mut self, periodic: bool) {
        let own = self.own_record();
        let resolved = self.membership.resolve(&own).await;
        let config = &self.plan.config;
        let in_file = |name: &str| config.networks.iter().any(|n| n.name == name);
        let record = match self.runtime.taken_over(resolved, in_file) {
            Some(next) => {
                match self.state_file.save(&next) {
                    Ok(()) => self.runtime = next,
                    Err(e) => warn!("saving {}: {e:#}", self.state_file.path().display()),
                }
                self.own_record()
            }
            // Built once per sync when nothing was taken over: it copies every
            // endpoint.
            None => own,
        };
        self.membership.publish(&record).await;
        self.reconcile(self.prune(), periodic);
    }

    /// The periodic pass: withdraws vanished endpoints, syncs, then reads every
    /// map whole and repairs what differs (the passes after a change only diff
    /// against what they wrote), and re-applies the way out even if unchanged
    /// (which also meets a dockerd started since).
    pub async fn reconcile_all(&mut self) {
        self.forget_vanished_endpoints();
        self.sync_and_reconcile(true).await;
    }

    fn prune(&self) -> Prune {
        if self.membership.is_warm() {
            Prune::All
        } else {
            Prune::KeepStaleRemote
        }
    }

    fn reconcile(&mut self, prune: Prune, periodic: bool) {
        match self.apply(prune, periodic) {
            Ok(changes) if !changes.is_empty() => info!("maps: {changes}"),
            Ok(_) => {}
            Err(e) => warn!("reconcile failed: {e:#}"),
        }
    }

    /// Brings the maps and the way out to the desired state; `periodic` reads
    /// the maps whole and re-applies the way out. The pass is timed and
    /// counted for the metrics.
    fn apply(
        &mut self,
        prune: Prune,
        periodic: bool,
    ) -> Result<crate::dataplane::reconcile::Changes> {
        let started = Instant::now();
        let cpu_before = thread_cpu_time();
        let desired = desired_state(
            &self.plan,
            self.membership.resolved(),
            self.endpoints.veths(),
        );
        let applied = self
            .dataplane
            .as_mut()
            .context("the dataplane is not loaded")
            .and_then(|d| d.apply(&desired, prune, periodic))
            .and_then(|changes| {
                if let Some(what) = self.way_out.apply(&desired.egress, periodic)? {
                    info!("{what}");
                }
                Ok(changes)
            });
        self.metrics.reconciled(
            started.elapsed(),
            thread_cpu_time().saturating_sub(cpu_before),
            applied.as_ref().ok(),
        );
        self.metrics
            .set_view(ClusterView::of(self.membership.resolved(), &desired));
        applied
    }

    /// A container's veth disappears with its namespace. Such an endpoint is
    /// withdrawn instead of being reconciled forever.
    pub fn forget_vanished_endpoints(&mut self) {
        let Some(dataplane) = self.dataplane.as_mut() else {
            return;
        };
        for gone in self.endpoints.forget_vanished(dataplane) {
            let e = &gone.veth.plan;
            warn!(
                "endpoint {} ({}) vanished with its veth {} (namespace {} deleted?); withdrawing it",
                e.ip, e.mac, e.host_ifname, e.netns
            );
            if gone.origin == Origin::Api
                && let Err(err) = self.save(&Change::RemoveEndpoint {
                    network: e.network.clone(),
                    netns: e.netns.clone(),
                })
            {
                warn!("saving {}: {err:#}", self.state_file.path().display());
            }
        }
    }

    pub fn teardown_after_failed_setup(&self) -> Teardown {
        if self.adopted() {
            Teardown::KeepAdopted
        } else {
            Teardown::All
        }
    }

    /// Undoes everything, in reverse order, carrying on past errors; or leaves
    /// the dataplane (maps, programs, veths, nftables table) for the next agent. The state file stays either way: it is
    /// this node's configuration.
    pub async fn teardown(&mut self, nl: &Netlink, how: Teardown) {
        self.membership.leave().await;
        let dataplane = self.dataplane.take();
        match (how, dataplane) {
            (Teardown::Keep, Some(dataplane)) => dataplane.keep(),
            (Teardown::KeepAdopted, Some(mut dataplane)) => {
                self.endpoints.remove_made_here(nl, &mut dataplane).await;
                dataplane.keep();
            }
            // Loading failed: no endpoint was made, and what a previous agent
            // left stays.
            (Teardown::Keep | Teardown::KeepAdopted, None) => {}
            (Teardown::All, dataplane) => {
                if let Err(e) = self.way_out.remove() {
                    warn!("removing the way out: {e:#}");
                }
                // A load that failed half-way may have pinned maps already.
                let removed = match dataplane {
                    Some(dataplane) => dataplane.remove(&self.plan.pin_dir),
                    None => pins::unpin(&self.plan.pin_dir),
                };
                if let Err(e) = removed {
                    warn!("removing the dataplane: {e:#}");
                }
                self.endpoints.delete_all(nl).await;
                tunnel_gro::remove(nl, self.plan.config.vxlan_port).await;
            }
        }
    }
}
