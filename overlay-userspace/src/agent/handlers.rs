//! The local API's requests. Each checks against the resolved cluster, makes
//! its side effects (a veth), and hands its [`Change`] to [`Node::commit`],
//! undoing the side effects if the commit fails.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use log::info;

use super::{
    endpoints::{self, Attached, Origin},
    node::Node,
    state_file::{Change, SavedEndpoint},
};
use crate::{
    api::proto::{EndpointInfo, NetworkInfo, NetworkList, Request, Response},
    cluster::{
        ipam::{self, Allocation},
        record::{BlockClaim, NetworkDef},
    },
    config::rules,
    desired::addresses_in_use,
    gossip::now_ms,
    host::{netlink::Netlink, netns, plan::next_container_ifname},
    model::Mac,
};

/// How many times an address allocation claims a new block before giving up.
const MAX_CLAIMS: u32 = 4;

/// How a request was answered.
pub enum Reply {
    Now(Response),
    /// An address block claim was announced: ask again after it has settled,
    /// as attempt `attempt`.
    Later {
        after: Duration,
        attempt: u32,
    },
}

impl Node {
    /// Answers one request; `attempt` counts the block claims an endpoint add
    /// has made so far.
    pub async fn handle(&mut self, nl: &Netlink, request: &Request, attempt: u32) -> Reply {
        let result = match request {
            Request::NetworkCreate { name, vni, subnet } => self
                .network_create(name, *vni, subnet)
                .await
                .map(Response::ok),
            Request::NetworkLs => Ok(Response::ok(self.network_list())),
            Request::NetworkRm { name } => self
                .network_rm(name)
                .await
                .map(|()| Response::ok(serde_json::json!({ "removed": name }))),
            Request::EndpointAdd {
                network,
                netns,
                ip,
                mac,
            } => match self
                .endpoint_add(nl, network, netns, *ip, mac.as_deref(), attempt)
                .await
            {
                Ok(Pending::Ready(info)) => Ok(Response::ok(info)),
                Ok(Pending::AfterClaim(after)) => {
                    return Reply::Later {
                        after,
                        attempt: attempt + 1,
                    };
                }
                Err(e) => Err(e),
            },
            Request::EndpointRm { network, netns } => {
                self.endpoint_rm(nl, network, netns).await.map(Response::ok)
            }
            Request::EndpointLs => Ok(Response::ok(self.endpoint_list())),
            Request::Members => Ok(Response::ok(self.membership.member_list(self.name()))),
        };
        Reply::Now(result.unwrap_or_else(|e| Response::err(&e)))
    }

    async fn network_create(&mut self, name: &str, vni: u32, subnet: &str) -> Result<NetworkInfo> {
        rules::network_name(name).map_err(anyhow::Error::msg)?;
        let vni = rules::vni(i64::from(vni)).map_err(|p| anyhow::anyhow!("VNI {p}"))?;
        let subnet = rules::network_subnet(subnet).map_err(anyhow::Error::msg)?;
        let resolved = self.membership.resolved();
        if let Some(existing) = resolved
            .networks
            .get(name)
            .or(self.own_networks().get(name))
        {
            bail!(
                "network {name} already exists (VNI {}, {}, from {})",
                existing.vni,
                existing.subnet,
                existing.origin
            );
        }
        if let Some(other) = resolved.networks.values().find(|n| n.vni == vni) {
            bail!("VNI {vni} is already network {}'s", other.name);
        }
        let def = NetworkDef {
            name: name.to_owned(),
            vni,
            subnet,
            created_ms: now_ms().max(1),
            origin: self.name().to_owned(),
        };
        self.commit(Change::CreateNetwork(def.clone())).await?;
        info!("network {name} created: VNI {vni}, {subnet}");
        Ok(self.network_info(&def))
    }

    async fn network_rm(&mut self, name: &str) -> Result<()> {
        let def = self
            .membership
            .resolved()
            .networks
            .get(name)
            .cloned()
            .with_context(|| format!("no network named {name}"))?;
        if def.from_config() {
            bail!(
                "network {name} is defined in {}'s cluster file; remove it there",
                def.origin
            );
        }
        let mut users: BTreeSet<&str> = BTreeSet::new();
        if self.endpoints.iter().any(|a| a.network() == name) {
            users.insert(self.name());
        }
        users.extend(
            self.membership
                .resolved()
                .remote
                .iter()
                .filter(|r| r.network == name)
                .map(|r| r.node.as_str()),
        );
        if !users.is_empty() {
            bail!(
                "network {name} still has endpoints (on {}); remove them first",
                users.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        // Wall clocks: a node whose clock lags by more than the time to the next
        // `create` would hide that new network.
        self.commit(Change::RemoveNetwork {
            name: name.to_owned(),
            removed_ms: now_ms().max(def.created_ms),
        })
        .await?;
        info!("network {name} removed");
        Ok(())
    }

    async fn endpoint_add(
        &mut self,
        nl: &Netlink,
        network: &str,
        netns: &str,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
        attempt: u32,
    ) -> Result<Pending<EndpointInfo>> {
        let def = self
            .membership
            .resolved()
            .networks
            .get(network)
            .cloned()
            .with_context(|| format!("no network named {network} (see `overlay network ls`)"))?;
        netns::existing(netns).map_err(anyhow::Error::msg)?;
        if self.endpoints.find(network, netns).is_some() {
            bail!("namespace {netns} already has an endpoint in network {network}");
        }
        if attempt == 0 && !self.endpoints.begin_add(network, netns) {
            bail!("an endpoint for namespace {netns} in network {network} is already being added");
        }
        let added = self
            .endpoint_add_now(nl, &def, netns, ip, mac, attempt)
            .await;
        if !matches!(added, Ok(Pending::AfterClaim(_))) {
            self.endpoints.end_add(network, netns);
        }
        added
    }

    async fn endpoint_add_now(
        &mut self,
        nl: &Netlink,
        def: &NetworkDef,
        netns: &str,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
        attempt: u32,
    ) -> Result<Pending<EndpointInfo>> {
        let network = def.name.as_str();
        let ip = match ip {
            Some(ip) => self.check_address(def, ip)?,
            None => match self.allocate(def, attempt).await? {
                Pending::Ready(ip) => ip,
                Pending::AfterClaim(after) => return Ok(Pending::AfterClaim(after)),
            },
        };
        let mac: Mac = match mac {
            Some(m) => m.parse().map_err(anyhow::Error::msg)?,
            None => Mac::from_ipv4(ip),
        };
        if self
            .membership
            .resolved()
            .used_macs
            .contains(&(network.to_owned(), mac))
        {
            bail!("MAC {mac} is already in use in network {network}");
        }
        let inside = Netlink::in_netns(&netns::netns_path(netns))?;
        let container_ifname = next_container_ifname(&inside).await?;
        let planned = self.plan_endpoint(def, netns, ip, mac, container_ifname.clone());
        if nl.link_by_name(&planned.host_ifname).await?.is_some() {
            bail!("interface {} already exists", planned.host_ifname);
        }
        let dataplane = self
            .dataplane
            .as_mut()
            .context("the dataplane is not loaded")?;
        self.endpoints.create(nl, dataplane, &planned).await?;
        let saved = SavedEndpoint {
            network: network.to_owned(),
            netns: netns.to_owned(),
            ip,
            mac,
            container_ifname,
        };
        if let Err(e) = self.commit(Change::AddEndpoint(saved)).await {
            self.undo_add(nl, network, netns).await;
            return Err(e);
        }
        info!("endpoint {ip} ({mac}) added in network {network}, namespace {netns}");
        let added = self.endpoints.find(network, netns).expect("added above");
        Ok(Pending::Ready(self.local_info(added)))
    }

    /// An address the caller chose: a free host address of the network.
    fn check_address(&self, def: &NetworkDef, ip: Ipv4Addr) -> Result<Ipv4Addr> {
        rules::host_address(ip, &def.name, def.subnet).map_err(anyhow::Error::msg)?;
        if addresses_in_use(&self.plan.config, self.membership.resolved(), &def.name).contains(&ip)
        {
            bail!("{ip} is already in use in network {}", def.name);
        }
        Ok(ip)
    }

    /// The next free address in this node's blocks, claiming a new block when
    /// they are full. With gossip the claim must settle first; alone it holds
    /// at once.
    async fn allocate(&mut self, def: &NetworkDef, mut attempt: u32) -> Result<Pending<Ipv4Addr>> {
        let network = def.name.as_str();
        loop {
            let used = addresses_in_use(&self.plan.config, self.membership.resolved(), network);
            let allocation = ipam::allocate(
                network,
                def.subnet,
                self.name(),
                &self.membership.resolved().claims,
                &used,
            );
            match allocation {
                Allocation::Address(ip) => return Ok(Pending::Ready(ip)),
                Allocation::Claim(index) if attempt < MAX_CLAIMS => {
                    self.commit(Change::ClaimBlock(BlockClaim {
                        network: network.to_owned(),
                        index,
                        claimed_ms: now_ms(),
                    }))
                    .await?;
                    match self.membership.claim_settle() {
                        Some(after) => return Ok(Pending::AfterClaim(after)),
                        None => attempt += 1,
                    }
                }
                Allocation::Claim(_) => bail!(
                    "could not claim an address block in network {network}: other nodes kept winning the claims"
                ),
                Allocation::Exhausted => bail!(
                    "network {network} ({}) has no free address block left",
                    def.subnet
                ),
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

    async fn endpoint_rm(
        &mut self,
        nl: &Netlink,
        network: &str,
        netns: &str,
    ) -> Result<EndpointInfo> {
        let attached = self.endpoints.find(network, netns).with_context(|| {
            format!("namespace {netns} has no endpoint in network {network} on this node")
        })?;
        if attached.origin == Origin::File {
            bail!(
                "the endpoint of namespace {netns} in network {network} is defined in the cluster file {}; remove it there",
                self.plan.config.path.display()
            );
        }
        let attached = self.endpoints.take(network, netns).expect("found above");
        let info = self.local_info(&attached);
        // Withdrawn from the maps and the cluster before the veth goes.
        let change = Change::RemoveEndpoint {
            network: network.to_owned(),
            netns: netns.to_owned(),
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
            info.ip
        );
        Ok(info)
    }

    fn local_info(&self, a: &Attached) -> EndpointInfo {
        EndpointInfo {
            network: a.network().to_owned(),
            ip: a.veth.plan.ip,
            mac: a.veth.plan.mac.to_string(),
            node: self.name().to_owned(),
            netns: Some(a.netns().to_owned()),
            host_ifname: Some(a.veth.plan.host_ifname.clone()),
        }
    }

    fn endpoint_list(&self) -> Vec<EndpointInfo> {
        let mut list: Vec<EndpointInfo> =
            self.endpoints.iter().map(|a| self.local_info(a)).collect();
        list.extend(
            self.membership
                .resolved()
                .remote
                .iter()
                .map(|r| EndpointInfo {
                    network: r.network.clone(),
                    ip: r.ip,
                    mac: r.mac.to_string(),
                    node: r.node.clone(),
                    netns: None,
                    host_ifname: None,
                }),
        );
        list.sort_by(|a, b| (&a.network, a.ip).cmp(&(&b.network, b.ip)));
        list
    }

    fn network_info(&self, def: &NetworkDef) -> NetworkInfo {
        let local = self
            .endpoints
            .iter()
            .filter(|a| a.network() == def.name)
            .count();
        let remote = self
            .membership
            .resolved()
            .remote
            .iter()
            .filter(|r| r.network == def.name)
            .count();
        NetworkInfo {
            name: def.name.clone(),
            vni: def.vni,
            subnet: def.subnet.to_string(),
            origin: def.origin.clone(),
            from_config: def.from_config(),
            endpoints: local + remote,
        }
    }

    fn network_list(&self) -> NetworkList {
        let resolved = self.membership.resolved();
        NetworkList {
            networks: resolved
                .networks
                .values()
                .map(|d| self.network_info(d))
                .collect(),
            conflicts: resolved.conflicts.clone(),
        }
    }
}

/// An answer now, or once an address block claim has settled.
enum Pending<T> {
    Ready(T),
    AfterClaim(Duration),
}
