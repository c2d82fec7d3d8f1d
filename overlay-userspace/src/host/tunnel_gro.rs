//! Tunnel GRO for TC decapsulation.
//!
//! A NIC's GRO merges the frames of a TCP flow before the stack sees them, but it
//! merges UDP-tunnelled frames only on a UDP port that has a tunnel socket with a
//! GRO handler, as the kernel's VXLAN device has. TC decap has no socket, so
//! without one every 1450-byte segment reached the container on its own.
//!
//! So the agent holds a kernel VXLAN device on the VXLAN port for its socket
//! alone: `external` with an empty VNI filter, it accepts no packet itself (its
//! receive path drops every VNI), while its socket's GRO handler merges the
//! frames of one inner flow into one packet, which the TC program then
//! decapsulates (ONCache gets its merge the same way, from the VXLAN device of
//! the overlay it runs on). When the port already has a socket, such as another
//! kernel VXLAN device's, that one merges and the agent adds nothing.

use anyhow::Result;
use log::{info, warn};

use super::{netlink::Netlink, netns::disable_ipv6};

/// The device for `port`, e.g. `ovgro4789`.
pub fn device_name(port: u16) -> String {
    format!("ovgro{port}")
}

/// Makes sure the port has a tunnel socket: adopts the device a previous agent
/// left, or creates it. A failure only costs the merge, so it is logged, not
/// returned.
pub async fn ensure(nl: &Netlink, port: u16) {
    let name = device_name(port);
    match create(nl, &name, port).await {
        Ok(Created::New) => info!("{name}: tunnel GRO for UDP port {port}"),
        Ok(Created::Adopted) => {}
        Ok(Created::PortTaken) => info!(
            "UDP port {port} already has a socket; no {name}: a kernel VXLAN device's socket \
             merges tunnelled frames as well"
        ),
        Err(e) => warn!("{name}: {e:#}; decapsulated TCP reaches containers unmerged"),
    }
}

enum Created {
    New,
    Adopted,
    PortTaken,
}

async fn create(nl: &Netlink, name: &str, port: u16) -> Result<Created> {
    if let Some(link) = nl.link_by_name(name).await? {
        nl.set_up(link.index).await?;
        return Ok(Created::Adopted);
    }
    if !nl.add_vxlan_socket_holder(name, port).await? {
        return Ok(Created::PortTaken);
    }
    // It sends nothing, so it needs no IPv6 link-local address either.
    disable_ipv6(name)?;
    Ok(Created::New)
}

/// Deletes the device, if there is one.
pub async fn remove(nl: &Netlink, port: u16) {
    let name = device_name(port);
    let removed = async {
        if let Some(link) = nl.link_by_name(&name).await? {
            nl.delete_link(link.index).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = removed.await {
        warn!("{name}: {e:#}");
    }
}
