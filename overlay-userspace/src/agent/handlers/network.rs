//! Networks through the API: created and removed cluster-wide, listed as the
//! cluster agrees on them. Every option is checked by `config::rules`, as the
//! file's are, and the error names the option.

use std::collections::BTreeSet;

use anyhow::Result;
use log::info;

use crate::{
    agent::{node::Node, state_file::Change},
    api::proto::{ErrorCode, NetworkCreate, NetworkInfo, NetworkList, api_error},
    cluster::record::NetworkDef,
    config::rules,
    gossip::now_ms,
};

fn invalid(option: &str, problem: impl std::fmt::Display) -> anyhow::Error {
    api_error(ErrorCode::Invalid, format!("{option}: {problem}"))
}

impl Node {
    pub(super) async fn network_create(&mut self, c: &NetworkCreate) -> Result<NetworkInfo> {
        if c.name.is_empty() {
            return Err(invalid("name", "a network needs a name"));
        }
        let def = self.check_network(c)?;
        self.commit(Change::CreateNetwork(def.clone())).await?;
        info!(
            "network {} created: VNI {}, {}, gateway {}{}",
            def.name,
            def.vni,
            def.subnet,
            def.gateway(),
            if def.internal { " (internal)" } else { "" }
        );
        Ok(self.network_info(&def))
    }

    /// Docker's CreateNetwork, which knows everything but the name: what a
    /// create would make, making nothing. An empty name skips the name's
    /// checks.
    pub(super) fn network_check(&self, c: &NetworkCreate) -> Result<NetworkInfo> {
        Ok(self.network_info(&self.check_network(c)?))
    }

    /// The definition `c` asks for, or why not; nothing is changed either way.
    /// An empty name is only checked by [`Node::network_check`].
    fn check_network(&self, c: &NetworkCreate) -> Result<NetworkDef> {
        let name = c.name.as_str();
        let own = self.own_networks();
        let resolved = &self.membership.resolved().networks;
        let known = || resolved.values().chain(own.values());
        if !name.is_empty() {
            rules::network_name(name).map_err(|p| invalid("name", p))?;
            if let Some(existing) = resolved.get(name).or(own.get(name)) {
                return Err(api_error(
                    ErrorCode::Exists,
                    format!(
                        "network {name} already exists (VNI {}, {}, from {})",
                        existing.vni, existing.subnet, existing.origin
                    ),
                ));
            }
        }
        let subnet = rules::network_subnet(&c.subnet).map_err(|p| invalid("subnet", p))?;
        let vni = match c.vni {
            Some(vni) => {
                let vni =
                    rules::vni(i64::from(vni)).map_err(|p| invalid("vni", format!("VNI {p}")))?;
                if let Some(other) = known().find(|n| n.vni == vni) {
                    return Err(invalid(
                        "vni",
                        format!("VNI {vni} is already network {}'s", other.name),
                    ));
                }
                vni
            }
            None => rules::allocate_vni(name, |v| known().any(|n| n.vni == v))
                .map_err(|p| invalid("vni", p))?,
        };
        rules::subnet_free(subnet, known().map(|n| (n.name.as_str(), n.subnet)))
            .map_err(|p| invalid("subnet", p))?;
        let gateway = rules::network_addresses(name, subnet, c.gateway, &c.aux_addresses)
            .map_err(|(option, p)| invalid(&option, p))?;
        if let Some(mtu) = c.mtu {
            self.plan.check_mtu(mtu).map_err(|p| invalid("mtu", p))?;
        }
        Ok(NetworkDef {
            name: name.to_owned(),
            vni,
            subnet,
            created_ms: now_ms().max(1),
            origin: self.name().to_owned(),
            // The default is left out, as records before gateways had it.
            gateway: (gateway != subnet.first_host()).then_some(gateway),
            aux: c.aux_addresses.clone(),
            mtu: c.mtu,
            internal: c.internal,
        })
    }

    pub(super) async fn network_rm(&mut self, name: &str) -> Result<()> {
        let def = self
            .membership
            .resolved()
            .networks
            .get(name)
            .cloned()
            .ok_or_else(|| api_error(ErrorCode::NotFound, format!("no network named {name}")))?;
        if def.from_config() {
            return Err(invalid(
                "name",
                format!(
                    "network {name} is defined in {}'s cluster file; remove it there",
                    def.origin
                ),
            ));
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
            return Err(api_error(
                ErrorCode::Exists,
                format!(
                    "network {name} still has endpoints (on {}); remove them first",
                    users.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
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

    pub(super) fn network_info(&self, def: &NetworkDef) -> NetworkInfo {
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
            gateway: def.gateway(),
            aux_addresses: def.aux.clone(),
            mtu: self.plan.mtu_for(def.mtu),
            internal: def.internal,
            origin: def.origin.clone(),
            from_config: def.from_config(),
            endpoints: local + remote,
        }
    }

    pub(super) fn network_list(&self) -> NetworkList {
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
