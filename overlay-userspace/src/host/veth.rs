//! An endpoint's veth pair that connects a container to the dataplane,
//! set up as Docker sets up an overlay endpoint (MAC, MTU, address, eth0 inside).

use anyhow::{Context as _, Result};

use super::{
    netlink::Netlink,
    netns::{NetnsGuard, disable_ipv6, netns_path, open_netns},
    plan::PlannedEndpoint,
};

/// An endpoint whose veth exists.
#[derive(Clone, Debug)]
pub struct CreatedEndpoint {
    pub plan: PlannedEndpoint,
    pub host_ifindex: u32,
    pub container_ifindex: u32,
}

/// Creates the veth pair, moves one end into the container's namespace as
/// eth0 (or ethN) and configures both ends. Leaves nothing behind on failure.
pub async fn create_endpoint(nl: &Netlink, plan: &PlannedEndpoint) -> Result<CreatedEndpoint> {
    let peer = format!("{}p", plan.host_ifname);
    let host_ifindex = nl.add_veth(&plan.host_ifname, &peer).await?;
    match configure(nl, plan, &peer, host_ifindex).await {
        Ok(container_ifindex) => Ok(CreatedEndpoint {
            plan: plan.clone(),
            host_ifindex,
            container_ifindex,
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
) -> Result<u32> {
    let peer_index = nl
        .link_by_name(peer)
        .await?
        .context("veth peer vanished")?
        .index;
    disable_ipv6(&plan.host_ifname)?;
    nl.set_mtu_up(host_ifindex, plan.mtu).await?;

    let netns = open_netns(&plan.netns)?;
    nl.move_to_netns(peer_index, &netns).await?;
    let path = netns_path(&plan.netns);
    let inside = Netlink::in_netns(&path)?;
    let moved = inside
        .link_by_name(peer)
        .await?
        .context("veth peer not found after the move")?;
    {
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
    Ok(moved.index)
}

/// Takes over an endpoint's veth pair left by an earlier agent, if both ends
/// exist where planned. A pair with only its host end (the container side was
/// lost) is deleted, so it can be made again.
pub async fn adopt_endpoint(
    nl: &Netlink,
    plan: &PlannedEndpoint,
) -> Result<Option<CreatedEndpoint>> {
    let Some(host) = nl.link_by_name(&plan.host_ifname).await? else {
        return Ok(None);
    };
    let inside = Netlink::in_netns(&netns_path(&plan.netns))?;
    match inside.link_by_name(&plan.container_ifname).await? {
        Some(container) if container.is_veth => Ok(Some(CreatedEndpoint {
            plan: plan.clone(),
            host_ifindex: host.index,
            container_ifindex: container.index,
        })),
        _ => {
            nl.delete_link(host.index).await?;
            Ok(None)
        }
    }
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
