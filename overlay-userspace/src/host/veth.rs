//! An endpoint's veth pair that connects a container to the dataplane,
//! set up as Docker sets up an overlay endpoint (MAC, MTU, address, eth0 inside).
//!
//! The host end is the same in both plumbing modes: the programs attach to it,
//! and on a network with a way out it carries the gateway's MAC and address and
//! the route back to the container, so the host stack takes what the container
//! sends to its gateway and can answer it.

use anyhow::{Context as _, Result};

use super::{
    netlink::Netlink,
    netns::{NetnsGuard, disable_ipv6, enable_forwarding, netns_path, open_netns},
    plan::PlannedEndpoint,
};
use crate::model::{Plumbing, gateway_mac};

/// An endpoint whose veth exists.
#[derive(Clone, Debug)]
pub struct CreatedEndpoint {
    pub plan: PlannedEndpoint,
    pub host_ifindex: u32,
}

/// Creates the veth pair and configures its host end; then either moves the
/// other end into the container's namespace as its `container_ifname` and
/// configures it ([`Plumbing::Agent`]), or leaves it in this namespace for the
/// caller ([`Plumbing::Caller`]). Leaves nothing behind on failure.
pub async fn create_endpoint(nl: &Netlink, plan: &PlannedEndpoint) -> Result<CreatedEndpoint> {
    let peer = plan.peer_ifname();
    let host_ifindex = nl.add_veth(&plan.host_ifname, &peer).await?;
    match configure(nl, plan, &peer, host_ifindex).await {
        Ok(()) => Ok(CreatedEndpoint {
            plan: plan.clone(),
            host_ifindex,
        }),
        Err(e) => {
            // Deleting one end deletes the pair, wherever the other end is.
            let _ = nl.delete_link(host_ifindex).await;
            Err(e.context(format!(
                "setting up endpoint {} in namespace {}",
                plan.ip, plan.netns
            )))
        }
    }
}

async fn configure(
    nl: &Netlink,
    plan: &PlannedEndpoint,
    peer: &str,
    host_ifindex: u32,
) -> Result<()> {
    let peer_index = nl
        .link_by_name(peer)
        .await?
        .context("veth peer vanished")?
        .index;
    configure_host_end(nl, plan, host_ifindex).await?;
    match plan.plumbing {
        Plumbing::Agent => configure_container_end(nl, plan, peer, peer_index).await,
        // Docker moves it, renames it and sets the address and routes; the MTU
        // set here is kept.
        Plumbing::Caller => nl.set_mac_mtu(peer_index, plan.mac.0, plan.mtu).await,
    }
}

/// MTU and up; on a network with a way out also the gateway's MAC and
/// address, forwarding, and the route to the container. Idempotent, so that
/// an adopted endpoint is brought to what this agent plans.
async fn configure_host_end(nl: &Netlink, plan: &PlannedEndpoint, index: u32) -> Result<()> {
    disable_ipv6(&plan.host_ifname)?;
    let Some(gateway) = plan.gateway else {
        return nl.set_mtu_up(index, plan.mtu).await;
    };
    nl.set_mac_mtu(index, gateway_mac(gateway).0, plan.mtu)
        .await?;
    enable_forwarding(&plan.host_ifname)?;
    // The gateway's address on every host end of the network: the container
    // reaches the host's services at it, and the host answers from it.
    nl.ensure_ipv4(index, gateway, 32).await?;
    nl.set_up(index).await?;
    nl.replace_host_route(plan.ip, index, gateway).await
}

async fn configure_container_end(
    nl: &Netlink,
    plan: &PlannedEndpoint,
    peer: &str,
    peer_index: u32,
) -> Result<()> {
    let netns = open_netns(&plan.netns)?;
    nl.move_to_netns(peer_index, &netns).await?;
    let path = netns_path(&plan.netns);
    let inside = Netlink::in_netns(&path)?;
    let moved = inside
        .link_by_name(peer)
        .await?
        .context("veth peer not found after the move")?;
    {
        // The namespace's own IPv6 settings apply once moved.
        let _inside = NetnsGuard::enter(&path)?;
        disable_ipv6(peer)?;
    }
    inside
        .configure(moved.index, &plan.container_ifname, plan.mac.0, plan.mtu)
        .await?;
    inside
        .add_ipv4(moved.index, plan.ip, plan.prefix_len)
        .await
        .with_context(|| format!("in namespace {}", plan.netns))?;
    if let Some(gateway) = plan.gateway {
        inside
            .add_default_route(gateway)
            .await
            .with_context(|| format!("in namespace {}", plan.netns))?;
    }
    Ok(())
}

/// Takes over an endpoint's veth pair left by an earlier agent, if both ends
/// exist where planned, and brings its host end to the plan. A pair with only
/// its host end (the container side was lost) is deleted, so it can be made
/// again. With [`Plumbing::Caller`] the container end is wherever the caller
/// put it, under a name only it knows: the host end is enough.
pub async fn adopt_endpoint(
    nl: &Netlink,
    plan: &PlannedEndpoint,
) -> Result<Option<CreatedEndpoint>> {
    let Some(host) = nl.link_by_name(&plan.host_ifname).await? else {
        return Ok(None);
    };
    let whole = match plan.plumbing {
        Plumbing::Caller => host.is_veth,
        Plumbing::Agent => {
            let inside = Netlink::in_netns(&netns_path(&plan.netns))?;
            inside
                .link_by_name(&plan.container_ifname)
                .await?
                .is_some_and(|c| c.is_veth)
        }
    };
    if !whole {
        nl.delete_link(host.index).await?;
        return Ok(None);
    }
    configure_host_end(nl, plan, host.index).await?;
    Ok(Some(CreatedEndpoint {
        plan: plan.clone(),
        host_ifindex: host.index,
    }))
}

/// Adopts the endpoint's veth pair if it exists, else creates it. The flag says
/// which: only a created pair is deleted when setup fails.
pub async fn ensure_endpoint(
    nl: &Netlink,
    plan: &PlannedEndpoint,
) -> Result<(CreatedEndpoint, bool)> {
    if let Some(adopted) = adopt_endpoint(nl, plan).await? {
        return Ok((adopted, false));
    }
    Ok((create_endpoint(nl, plan).await?, true))
}

/// Deletes an endpoint's veth pair; one already gone is fine.
pub async fn delete_endpoint(nl: &Netlink, endpoint: &CreatedEndpoint) -> Result<()> {
    nl.delete_link(endpoint.host_ifindex)
        .await
        .with_context(|| format!("deleting {}", endpoint.plan.host_ifname))
}
