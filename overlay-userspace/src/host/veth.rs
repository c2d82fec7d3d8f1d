//! An endpoint's veth pair that connects a container to the dataplane,
//! set up as Docker sets up an overlay endpoint (MAC, MTU, address, eth0 inside).
//!
//! The host end is the same in both plumbing modes: the programs attach to it,
//! and on a network with a way out it carries the gateway's MAC and address and
//! the route back to the container, so the host stack takes what the container
//! sends to its gateway and can answer it.

use anyhow::{Context as _, Result};

use super::{
    ethtool,
    netlink::Netlink,
    netns::{NetnsGuard, netns_path, open_netns},
    plan::PlannedEndpoint,
};
use crate::model::{Mac, Plumbing, gateway_mac};

/// An endpoint whose veth exists.
#[derive(Clone, Debug)]
pub struct CreatedEndpoint {
    pub plan: PlannedEndpoint,
    pub host_ifindex: u32,
}

/// Creates the veth pair and configures it: with [`Plumbing::Agent`] the
/// container end is born inside the container's namespace as its
/// `container_ifname` (with its MAC and MTU) and configured there, through
/// `inside` (a connection into that namespace; one is opened if `None`);
/// with [`Plumbing::Caller`] it stays in this namespace for the caller. The
/// host end is configured either way. Leaves nothing behind on failure.
pub async fn create_endpoint(
    nl: &Netlink,
    plan: &PlannedEndpoint,
    inside: Option<&Netlink>,
) -> Result<CreatedEndpoint> {
    let host_ifindex = match plan.plumbing {
        Plumbing::Agent => {
            let netns = open_netns(&plan.netns)?;
            nl.add_veth_into(
                &plan.host_ifname,
                &plan.container_ifname,
                &netns,
                plan.mac.0,
                plan.mtu,
            )
            .await?
        }
        Plumbing::Caller => nl.add_veth(&plan.host_ifname, &plan.peer_ifname()).await?,
    };
    match configure(nl, plan, host_ifindex, inside).await {
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
    host_ifindex: u32,
    inside: Option<&Netlink>,
) -> Result<()> {
    configure_host_end(nl, plan, host_ifindex).await?;
    match plan.plumbing {
        Plumbing::Agent => match inside {
            Some(inside) => configure_container_end(inside, plan).await,
            None => {
                let inside = Netlink::in_netns(&netns_path(&plan.netns))?;
                configure_container_end(&inside, plan).await
            }
        },
        // Docker moves it, renames it and sets the address and routes; the MTU
        // set here is kept.
        Plumbing::Caller => {
            let peer = plan.peer_ifname();
            let index = nl
                .link_by_name(&peer)
                .await?
                .context("veth peer vanished")?
                .index;
            ethtool::enable_gro(&peer)?;
            nl.set_mac_mtu(index, plan.mac.0, plan.mtu).await
        }
    }
}

/// MTU and up; on a network with a way out also the gateway's MAC and
/// address, forwarding, and the route to the container. Idempotent, so that
/// an adopted endpoint is brought to what this agent plans.
async fn configure_host_end(nl: &Netlink, plan: &PlannedEndpoint, index: u32) -> Result<()> {
    nl.disable_ipv6(&plan.host_ifname)?;
    let Some(gateway) = plan.gateway else {
        return nl.set_mtu_up(index, plan.mtu).await;
    };
    nl.set_mac_mtu(index, gateway_mac(gateway).0, plan.mtu)
        .await?;
    nl.enable_forwarding(&plan.host_ifname)?;
    // The gateway's address on every host end of the network: the container
    // reaches the host's services at it, and the host answers from it.
    nl.ensure_ipv4(index, gateway, 32).await?;
    nl.set_up(index).await?;
    nl.replace_host_route(plan.ip, index, gateway).await
}

/// The container end, born inside with its name, MAC and MTU: no IPv6
/// address of its own and GRO on (see [`ethtool`]) before it comes up, then
/// up, its address, and the default route.
async fn configure_container_end(inside: &Netlink, plan: &PlannedEndpoint) -> Result<()> {
    let ifname = &plan.container_ifname;
    let index = inside
        .link_by_name(ifname)
        .await?
        .with_context(|| format!("{ifname} not found in namespace {}", plan.netns))?
        .index;
    // Silent in IPv6 without /proc/sys: writing the end's `disable_ipv6`
    // inside its namespace crossed the `ipv6` dentries every namespace adds
    // (see `netns::ConfDirs`; a new namespace's directory is reached only
    // through that path), 17 % of the agent's CPU at 1,500 endpoints. With
    // `addrgenmode none` the end has no link-local address, so no DAD, no
    // router solicitation, no MLD report; IPv6 stays on, so an address the
    // container adds itself works (Docker writes disable_ipv6 instead).
    inside
        .set_no_ipv6_addresses(index)
        .await
        .with_context(|| format!("{ifname} in namespace {}", plan.netns))?;
    {
        // The ethtool ioctl goes through a socket of the namespace.
        let _inside = NetnsGuard::enter(&netns_path(&plan.netns))?;
        ethtool::enable_gro(ifname)?;
    }
    inside
        .set_up(index)
        .await
        .with_context(|| format!("bringing {ifname} up"))?;
    inside
        .add_ipv4(index, plan.ip, plan.prefix_len)
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
    Ok((create_endpoint(nl, plan, None).await?, true))
}

/// Whether an endpoint is still as it was made: its host end (the same
/// interface), and for [`Plumbing::Agent`] its container end inside with its
/// MAC and address. Routes are left out: a plugin chained after the agent's
/// attach may change them. The problem, in words.
pub async fn check_endpoint(nl: &Netlink, e: &CreatedEndpoint) -> Result<(), String> {
    let plan = &e.plan;
    let failed = |what: &str, err: anyhow::Error| format!("{what}: {err:#}");
    match nl.link_by_name(&plan.host_ifname).await {
        Ok(Some(host)) if host.index == e.host_ifindex => {}
        Ok(Some(_)) => return Err(format!("host interface {} was replaced", plan.host_ifname)),
        Ok(None) => return Err(format!("host interface {} is gone", plan.host_ifname)),
        Err(err) => return Err(failed("looking up the host interface", err)),
    }
    if plan.plumbing == Plumbing::Caller {
        return Ok(());
    }
    let inside = Netlink::in_netns(&netns_path(&plan.netns))
        .map_err(|err| failed(&format!("namespace {}", plan.netns), err))?;
    let ifname = &plan.container_ifname;
    let link = inside
        .link_by_name(ifname)
        .await
        .map_err(|err| failed(ifname, err))?
        .ok_or_else(|| format!("namespace {} has no interface {ifname}", plan.netns))?;
    if link.mac != Some(plan.mac.0) {
        return Err(format!(
            "{ifname} has MAC {}, not {}",
            link.mac.map_or("none".into(), |m| Mac(m).to_string()),
            plan.mac
        ));
    }
    let addresses = inside
        .ipv4_addresses(link.index)
        .await
        .map_err(|err| failed(ifname, err))?;
    if !addresses.contains(&plan.ip) {
        return Err(format!(
            "{ifname} lacks its address {}/{} (has {addresses:?})",
            plan.ip, plan.prefix_len
        ));
    }
    Ok(())
}

/// Deletes an endpoint's veth pair; one already gone is fine.
pub async fn delete_endpoint(nl: &Netlink, endpoint: &CreatedEndpoint) -> Result<()> {
    nl.delete_link(endpoint.host_ifindex)
        .await
        .with_context(|| format!("deleting {}", endpoint.plan.host_ifname))
}
