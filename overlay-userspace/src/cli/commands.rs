//! The API commands: build a request, ask the agent, print its answer.

use std::time::Duration;

use anyhow::Result;

use super::{
    args::{ApiArgs, EndpointCommand, NetworkCommand},
    tables::format_table,
};
use crate::{
    api::{
        client,
        proto::{
            AttachRequest, AttachmentKey, EndpointInfo, MemberList, NetworkCreate, NetworkInfo,
            NetworkList, Request,
        },
    },
    model::Plumbing,
};

/// What both an [`EndpointInfo`] and an attachment answer have, to print.
#[derive(serde::Deserialize)]
struct EndpointShown {
    network: String,
    ip: std::net::Ipv4Addr,
    mac: String,
    #[serde(default)]
    netns: String,
}

/// Long enough for an address allocation that has to claim a block or two.
const TIMEOUT: Duration = Duration::from_secs(30);

pub async fn network(command: &NetworkCommand) -> Result<String> {
    match command {
        NetworkCommand::Create {
            name,
            subnet,
            vni,
            gateway,
            aux_addresses,
            mtu,
            internal,
            api,
        } => {
            let request = Request::NetworkCreate(NetworkCreate {
                name: name.clone(),
                vni: *vni,
                subnet: subnet.clone(),
                gateway: *gateway,
                aux_addresses: aux_addresses.clone(),
                mtu: *mtu,
                internal: *internal,
            });
            let data = ask(api, &request).await?;
            render(api, &data, |n: NetworkInfo| {
                format!(
                    "network {} created: VNI {}, {}, gateway {}{}\n",
                    n.name,
                    n.vni,
                    n.subnet,
                    n.gateway,
                    if n.internal {
                        " (internal: no way out)"
                    } else {
                        ""
                    }
                )
            })
        }
        NetworkCommand::Ls(api) => {
            let data = ask(api, &Request::NetworkLs).await?;
            render(api, &data, |list: NetworkList| {
                let rows: Vec<Vec<String>> = list
                    .networks
                    .iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.vni.to_string(),
                            n.subnet.clone(),
                            if n.internal {
                                "internal".to_owned()
                            } else {
                                n.gateway.to_string()
                            },
                            n.mtu.to_string(),
                            if n.from_config {
                                format!("{} (file)", n.origin)
                            } else {
                                n.origin.clone()
                            },
                            n.endpoints.to_string(),
                        ]
                    })
                    .collect();
                let mut out = format_table(
                    &[
                        "NAME",
                        "VNI",
                        "SUBNET",
                        "GATEWAY",
                        "MTU",
                        "DEFINED BY",
                        "ENDPOINTS",
                    ],
                    &rows,
                );
                for c in &list.conflicts {
                    out += &format!("conflict: {c}\n");
                }
                out
            })
        }
        NetworkCommand::Rm { name, api } => {
            ask(api, &Request::NetworkRm { name: name.clone() }).await?;
            Ok(if api.json {
                serde_json::json!({ "removed": name }).to_string() + "\n"
            } else {
                format!("network {name} removed\n")
            })
        }
    }
}

pub async fn endpoint(command: &EndpointCommand) -> Result<String> {
    match command {
        EndpointCommand::Add {
            network,
            netns,
            ip,
            mac,
            container_id,
            ifname,
            api,
        } => {
            let request = match (container_id, ifname) {
                (Some(container_id), Some(ifname)) => Request::Attach(AttachRequest {
                    container_id: container_id.clone(),
                    ifname: ifname.clone(),
                    network: network.clone(),
                    netns: netns.clone(),
                    ip: *ip,
                    mac: mac
                        .as_deref()
                        .map(str::parse)
                        .transpose()
                        .map_err(anyhow::Error::msg)?,
                    plumbing: Plumbing::Agent,
                    reserved: false,
                }),
                _ => Request::EndpointAdd {
                    network: network.clone(),
                    netns: netns.clone(),
                    ip: *ip,
                    mac: mac.clone(),
                },
            };
            let data = ask(api, &request).await?;
            render(api, &data, |e: EndpointShown| {
                format!(
                    "endpoint {} ({}) added to network {} in namespace {}\n",
                    e.ip, e.mac, e.network, e.netns
                )
            })
        }
        EndpointCommand::Rm {
            network,
            netns,
            container_id,
            ifname,
            api,
        } => {
            let request = match (network, netns, container_id, ifname) {
                (_, _, Some(container_id), Some(ifname)) => Request::Detach(AttachmentKey {
                    container_id: container_id.clone(),
                    ifname: ifname.clone(),
                }),
                (Some(network), Some(netns), _, _) => Request::EndpointRm {
                    network: network.clone(),
                    netns: netns.clone(),
                },
                _ => anyhow::bail!(
                    "name the endpoint: --network and --netns, or --container-id and --ifname"
                ),
            };
            let data = ask(api, &request).await?;
            render(api, &data, |e: EndpointShown| {
                format!("endpoint {} removed from network {}\n", e.ip, e.network)
            })
        }
        EndpointCommand::Ls(api) => {
            let data = ask(api, &Request::EndpointLs).await?;
            render(api, &data, |list: Vec<EndpointInfo>| {
                let rows: Vec<Vec<String>> = list
                    .into_iter()
                    .map(|e| {
                        vec![
                            e.network,
                            e.ip.to_string(),
                            e.mac,
                            e.node,
                            e.netns.unwrap_or_else(|| "-".into()),
                            e.host_ifname.unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                format_table(&["NETWORK", "IP", "MAC", "NODE", "NETNS", "VETH"], &rows)
            })
        }
    }
}

pub async fn members(api: &ApiArgs) -> Result<String> {
    let data = ask(api, &Request::Members).await?;
    render(api, &data, |m: MemberList| {
        let rows: Vec<Vec<String>> = m
            .members
            .iter()
            .map(|n| {
                vec![
                    if n.is_self {
                        format!("{} (self)", n.name)
                    } else {
                        n.name.clone()
                    },
                    n.vtep.map_or_else(|| "-".into(), |v| v.to_string()),
                    if n.live { "live" } else { "dead" }.into(),
                    n.endpoints.to_string(),
                    n.gossip_addr.map_or_else(|| "-".into(), |a| a.to_string()),
                    n.refused.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let mut out = format_table(
            &["NODE", "VTEP", "STATE", "ENDPOINTS", "GOSSIP", "REFUSED"],
            &rows,
        );
        match m.transport {
            Some(t) => {
                out += &format!(
                    "gossip datagrams: {} sent (largest {} B), {} accepted, {} rejected (failed authentication or misaddressed), {} replayed, {} stale (outside the replay window)\n",
                    t.sent, t.largest_sent, t.accepted, t.rejected, t.replayed, t.stale
                );
                out += &format!(
                    "gossip messages: {} incomplete (a chunk never came), {} too large\n",
                    t.incomplete, t.oversized
                );
            }
            None => out += "gossip: off (no [cluster] section); members are this node only\n",
        }
        for c in &m.conflicts {
            out += &format!("conflict: {c}\n");
        }
        out
    })
}

async fn ask(api: &ApiArgs, request: &Request) -> Result<serde_json::Value> {
    let socket = client::resolve_socket(api.node.as_deref(), api.socket.clone())?;
    client::call(&socket, request, TIMEOUT).await
}

fn render<T: serde::de::DeserializeOwned>(
    api: &ApiArgs,
    data: &serde_json::Value,
    text: impl FnOnce(T) -> String,
) -> Result<String> {
    if api.json {
        return Ok(serde_json::to_string_pretty(data)? + "\n");
    }
    let value: T = serde_json::from_value(data.clone())
        .map_err(|e| anyhow::anyhow!("unexpected answer from the agent: {e}"))?;
    Ok(text(value))
}
