//! Endpoint addresses: checked when the caller picks one, allocated from this
//! node's blocks when it does not, and reserved ahead of the endpoint for a
//! runtime whose IPAM asks first (Docker's RequestAddress comes before its
//! Join). A reservation keeps the address from every other allocation and
//! explicit request on this node until it is released.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::Result;
use log::{info, warn};

use super::Pending;
use crate::{
    agent::{
        node::Node,
        state_file::{Change, Reservation},
    },
    api::proto::{AddressReservation, ErrorCode, api_error},
    cluster::{
        ipam::{self, Allocation},
        record::{BlockClaim, NetworkDef},
    },
    config::rules,
    desired::addresses_in_use,
    gossip::now_ms,
};

/// How many times an address allocation claims a new block before giving up.
const MAX_CLAIMS: u32 = 4;

/// Whose an explicitly requested address may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Claimant {
    /// Anyone's request: a reserved address is refused.
    Anyone,
    /// The holder of its reservation: it must be reserved.
    Reservation,
}

impl Node {
    /// An address the caller chose: a free host address of the network, not
    /// one it keeps for itself, and reserved only if `by` holds it.
    pub(super) fn check_address(
        &self,
        def: &NetworkDef,
        ip: Ipv4Addr,
        by: Claimant,
    ) -> Result<Ipv4Addr> {
        rules::host_address(ip, &def.name, def.subnet)
            .and_then(|()| rules::not_reserved(ip, &def.name, def.gateway(), &def.aux))
            .map_err(|p| api_error(ErrorCode::Invalid, p))?;
        let network = def.name.as_str();
        if addresses_in_use(&self.plan.config, self.membership.resolved(), network).contains(&ip) {
            return Err(api_error(
                ErrorCode::Exists,
                format!("{ip} is already in use in network {network}"),
            ));
        }
        match (self.is_reserved(network, ip), by) {
            (true, Claimant::Anyone) => Err(api_error(
                ErrorCode::Exists,
                format!("{ip} is reserved in network {network} for an endpoint to come"),
            )),
            (false, Claimant::Reservation) => Err(api_error(
                ErrorCode::Invalid,
                format!("{ip} is not reserved in network {network} on this node"),
            )),
            _ => Ok(ip),
        }
    }

    fn is_reserved(&self, network: &str, ip: Ipv4Addr) -> bool {
        self.runtime
            .reserved
            .iter()
            .any(|r| r.network == network && r.ip == ip)
    }

    /// The next free address in this node's blocks, claiming a new block when
    /// they are full. With gossip the claim must settle first; alone it holds
    /// at once.
    pub(super) async fn allocate(
        &mut self,
        def: &NetworkDef,
        mut attempt: u32,
    ) -> Result<Pending<Ipv4Addr>> {
        let network = def.name.as_str();
        loop {
            let mut used = addresses_in_use(&self.plan.config, self.membership.resolved(), network);
            used.extend(
                self.runtime
                    .reserved
                    .iter()
                    .filter(|r| r.network == network)
                    .map(|r| r.ip),
            );
            let allocation = ipam::allocate(
                network,
                def.subnet,
                self.name(),
                &self.membership.resolved().claims,
                &used,
                self.settle(),
            );
            match allocation {
                Allocation::Address(ip) => {
                    self.claim_ahead(def, used, ip).await;
                    return Ok(Pending::Ready(ip));
                }
                Allocation::Settling(ms) => {
                    return Ok(Pending::AfterClaim(Duration::from_millis(ms)));
                }
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
                Allocation::Claim(_) => anyhow::bail!(
                    "could not claim an address block in network {network}: other nodes kept winning the claims"
                ),
                Allocation::Exhausted => anyhow::bail!(
                    "network {network} ({}) has no free address block left",
                    def.subnet
                ),
            }
        }
    }

    fn settle(&self) -> ipam::Settle {
        ipam::Settle {
            now_ms: now_ms(),
            settle_ms: self
                .membership
                .claim_settle()
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// With `ip` taken, claims the next block if this node's blocks are
    /// running low, so that it has settled before it is needed. Alone a claim
    /// holds at once: nothing to gain. A failed claim is only logged: the
    /// attach has its address.
    async fn claim_ahead(&mut self, def: &NetworkDef, mut used: BTreeSet<Ipv4Addr>, ip: Ipv4Addr) {
        if self.membership.claim_settle().is_none() {
            return;
        }
        used.insert(ip);
        let claims = &self.membership.resolved().claims;
        let free = ipam::free_in_own_blocks(&def.name, def.subnet, self.name(), claims, &used);
        if free >= ipam::CLAIM_AHEAD {
            return;
        }
        let Some(index) = ipam::next_unclaimed(&def.name, def.subnet, claims) else {
            return;
        };
        let claim = BlockClaim {
            network: def.name.clone(),
            index,
            claimed_ms: now_ms(),
        };
        match self.commit(Change::ClaimBlock(claim)).await {
            Ok(()) => info!(
                "claimed address block {index} of network {} ahead of need ({free} addresses left)",
                def.name
            ),
            Err(e) => warn!("claiming a block of network {} ahead: {e:#}", def.name),
        }
    }

    /// Docker's RequestAddress: `ip`, or the next free address, reserved.
    pub(super) async fn reserve_address(
        &mut self,
        network: &str,
        ip: Option<Ipv4Addr>,
        attempt: u32,
    ) -> Result<Pending<AddressReservation>> {
        let def = self.network_def(network)?;
        let ip = match ip {
            Some(ip) => self.check_address(&def, ip, Claimant::Anyone)?,
            None => match self.allocate(&def, attempt).await? {
                Pending::Ready(ip) => ip,
                Pending::AfterClaim(after) => return Ok(Pending::AfterClaim(after)),
            },
        };
        self.commit(Change::Reserve(Reservation {
            network: network.to_owned(),
            ip,
        }))
        .await?;
        info!("address {ip} reserved in network {network}");
        Ok(Pending::Ready(AddressReservation {
            network: network.to_owned(),
            ip,
            prefix_len: def.subnet.prefix_len,
        }))
    }

    /// Docker's ReleaseAddress.
    pub(super) async fn release_address(&mut self, network: &str, ip: Ipv4Addr) -> Result<()> {
        if !self.is_reserved(network, ip) {
            return Err(api_error(
                ErrorCode::NotFound,
                format!("{ip} is not reserved in network {network} on this node"),
            ));
        }
        self.commit(Change::Release(Reservation {
            network: network.to_owned(),
            ip,
        }))
        .await?;
        info!("address {ip} released in network {network}");
        Ok(())
    }

    /// The cluster's definition of `network`, or `not_found`.
    pub(super) fn network_def(&self, network: &str) -> Result<NetworkDef> {
        self.membership
            .resolved()
            .networks
            .get(network)
            .cloned()
            .ok_or_else(|| {
                api_error(
                    ErrorCode::NotFound,
                    format!("no network named {network} (see `overlay network ls`)"),
                )
            })
    }
}
