//! The IPAM driver: addresses from the cluster-wide block allocator, so two
//! nodes never hand out one address (Docker's default IPAM allocates per
//! node). A pool is the network's subnet (its PoolID is the subnet), and
//! an endpoint's address is reserved in the agent from RequestAddress until
//! ReleaseAddress.
//!
//! During `docker network create` the pool belongs to no network yet: its
//! gateway and auxiliary addresses come as RequestAddress calls, which are
//! answered as asked (CreateNetwork carries them again, and the agent checks
//! them there).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{Result, anyhow, bail};

use super::{
    Plugin,
    driver::promised,
    not_found,
    options::ipv6_refused,
    protocol::{
        Empty, GATEWAY_TYPE, REQUEST_ADDRESS_TYPE, ReleaseAddress, ReleasePool, RequestAddress,
        RequestAddressResponse, RequestPool, RequestPoolResponse,
    },
    store::{Binding, PendingPool},
};
use crate::{
    api::proto::{AddressReservation, NetworkInfo, Request},
    config::rules,
    model::Subnet,
};

/// How long an address request waits for its network's name (a `docker
/// run` right after `docker network create`).
const NAMED_TIMEOUT: Duration = Duration::from_secs(10);

fn pool_subnet(pool_id: &str) -> Result<Subnet> {
    pool_id
        .parse()
        .map_err(|_| anyhow!("pool {pool_id:?} was not handed out by the overlay-ebpf IPAM"))
}

fn address(text: &str) -> Result<Option<Ipv4Addr>> {
    if text.is_empty() {
        return Ok(None);
    }
    let ip = text.split_once('/').map_or(text, |(ip, _)| ip);
    ip.parse()
        .map(Some)
        .map_err(|_| anyhow!("{text:?} is not an IPv4 address"))
}

impl Plugin {
    pub(super) async fn request_pool(&self, r: RequestPool) -> Result<RequestPoolResponse> {
        if r.v6 {
            bail!(ipv6_refused());
        }
        if !r.sub_pool.is_empty() {
            bail!(
                "--ip-range: not supported; addresses come from the whole subnet, in blocks \
                 each node claims"
            );
        }
        if let Some(key) = r.options.keys().next() {
            bail!("--ipam-opt {key}: unknown option of the overlay-ebpf IPAM (it takes none)");
        }
        if r.pool.is_empty() {
            bail!(
                "--subnet: the overlay-ebpf IPAM needs the network's subnet, one that no other \
                 overlay network overlaps"
            );
        }
        let subnet = rules::network_subnet(&r.pool).map_err(|p| anyhow!("--subnet: {p}"))?;
        let mut store = self.store.lock().await;
        if !store.mirrors.contains_key(&subnet)
            && let Some(clash) = promised(&store, subnet)
        {
            bail!(clash);
        }
        let pool_id = subnet.to_string();
        store.pools.insert(pool_id.clone(), PendingPool { subnet });
        Ok(RequestPoolResponse {
            pool_id,
            pool: subnet.to_string(),
            data: BTreeMap::new(),
        })
    }

    pub(super) async fn release_pool(&self, r: ReleasePool) -> Result<Empty> {
        self.store.lock().await.pools.remove(&r.pool_id);
        Ok(Empty {})
    }

    pub(super) async fn request_address(
        &self,
        r: RequestAddress,
    ) -> Result<RequestAddressResponse> {
        let subnet = pool_subnet(&r.pool_id)?;
        let asked = address(&r.address)?;
        let gateway = r.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_TYPE);
        let cidr = |ip: Ipv4Addr| RequestAddressResponse {
            address: format!("{ip}/{}", subnet.prefix_len),
            data: BTreeMap::new(),
        };
        if self.store.lock().await.pools.contains_key(&r.pool_id) {
            // `docker network create`: the gateway, then each aux address.
            return match (gateway, asked) {
                (true, ip) => Ok(cidr(ip.unwrap_or_else(|| subnet.first_host()))),
                (false, Some(aux)) => Ok(cidr(aux)),
                (false, None) => bail!("no container can join a network still being created"),
            };
        }
        let network = self.network_of(subnet).await?;
        if gateway {
            return Ok(cidr(network.gateway));
        }
        let reserved: AddressReservation = self
            .agent
            .call(Request::ReserveAddress {
                network: network.name,
                ip: asked,
            })
            .await
            .map_err(|e| match asked {
                Some(ip) => anyhow!("--ip {ip}: {e}"),
                None => e.into(),
            })?;
        Ok(cidr(reserved.ip))
    }

    pub(super) async fn release_address(&self, r: ReleaseAddress) -> Result<Empty> {
        let subnet = pool_subnet(&r.pool_id)?;
        let Some(ip) = address(&r.address)? else {
            return Ok(Empty {});
        };
        if self.store.lock().await.pools.contains_key(&r.pool_id) {
            return Ok(Empty {});
        }
        // A network gone already took its reservations with it.
        let Ok(network) = self.network_of(subnet).await else {
            return Ok(Empty {});
        };
        if ip == network.gateway || network.aux_addresses.contains(&ip) {
            return Ok(Empty {});
        }
        match self
            .agent
            .call::<serde_json::Value>(Request::ReleaseAddress {
                network: network.name,
                ip,
            })
            .await
        {
            Err(e) if !not_found(&e) => Err(e.into()),
            _ => Ok(Empty {}),
        }
    }

    /// The cluster network whose subnet is `subnet`, waiting out the naming
    /// of one created here a moment ago.
    async fn network_of(&self, subnet: Subnet) -> Result<NetworkInfo> {
        let deadline = tokio::time::Instant::now() + NAMED_TIMEOUT;
        let wanted = subnet.to_string();
        loop {
            let naming =
                self.store.lock().await.bindings().any(
                    |(_, b)| matches!(b, Binding::Unnamed(c) if c.subnet.parse() == Ok(subnet)),
                );
            if !naming || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.cluster_networks()
            .await?
            .into_iter()
            .find(|n| n.subnet == wanted)
            .ok_or_else(|| {
                anyhow!(
                    "{wanted} is not the subnet of a network of the cluster (use -d overlay-ebpf)"
                )
            })
    }
}
