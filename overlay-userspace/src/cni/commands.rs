//! The commands, each one request to the agent (or, for DEL while the agent is
//! down, the least the plugin can do alone).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

use super::{
    conf::NetConf,
    error::{
        AGENT_FAILED, CniError, IO_FAILURE, NOT_AS_ADDED, NOT_AVAILABLE, NOT_AVAILABLE_LIMITED,
        TRY_AGAIN_LATER, UNKNOWN_CONTAINER,
    },
    invocation::{Invocation, Target},
    records::Records,
    result::{add_result, matches, reported},
    version::{Version, supported_list},
};
use crate::{
    api::{
        client::{call, resolve_socket},
        offline,
        proto::{
            ApiError, AttachRequest, Attachment, AttachmentKey, ErrorCode, NetworkList, Request,
        },
    },
    host::netlink::Netlink,
    model::Plumbing,
};

/// How long the agent may take. An attach may wait for an address block
/// claim to settle in the cluster (about a second each).
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one checked invocation; the result to print, if the command has one.
pub async fn execute(invocation: &Invocation) -> Result<Option<Value>, CniError> {
    match invocation {
        Invocation::Version { asked } => Ok(Some(json!({
            "cniVersion": asked.as_deref().unwrap_or(Version::NEWEST.as_str()),
            "supportedVersions": supported_list(),
        }))),
        Invocation::Add { conf, target } => add(conf, target).await.map(Some),
        Invocation::Del { conf, target } => del(conf, target).await.map(|()| None),
        Invocation::Check { conf, target } => check(conf, target).await.map(|()| None),
        Invocation::Status { conf } => status(conf).await.map(|()| None),
        Invocation::Gc { conf, valid } => gc(conf, valid).await.map(|()| None),
    }
}

/// The agent's socket: the configuration's, else the only one in
/// `/run/overlay`.
fn socket(conf: &NetConf) -> Result<PathBuf, CniError> {
    resolve_socket(None, conf.socket.clone()).map_err(|e| CniError::from_agent(&e))
}

async fn ask<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &Request,
) -> anyhow::Result<T> {
    let data = call(socket, request, AGENT_TIMEOUT).await?;
    serde_json::from_value(data).map_err(|e| {
        anyhow::Error::new(ApiError {
            code: ErrorCode::Failed,
            message: format!("the agent's answer is not what this plugin expects: {e}"),
        })
    })
}

fn code_of(e: &anyhow::Error) -> ErrorCode {
    e.chain()
        .find_map(|c| c.downcast_ref::<ApiError>())
        .map_or(ErrorCode::Failed, |a| a.code)
}

/// The container's namespace, which ADD and CHECK need to exist.
fn existing_netns(target: &Target) -> Result<&str, CniError> {
    let netns = target.netns.as_deref().unwrap_or_default();
    if Path::new(netns).exists() {
        Ok(netns)
    } else {
        Err(CniError::new(
            UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            format!("CNI_NETNS={netns}"),
        ))
    }
}

async fn add(conf: &NetConf, target: &Target) -> Result<Value, CniError> {
    let netns = existing_netns(target)?;
    let socket = socket(conf)?;
    let request = Request::Attach(AttachRequest {
        container_id: target.container_id.clone(),
        ifname: target.ifname.clone(),
        network: conf.network.clone(),
        netns: netns.to_owned(),
        ip: target.ip,
        mac: target.mac,
        plumbing: Plumbing::Agent,
        reserved: false,
    });
    let attachment: Attachment = ask(&socket, &request)
        .await
        .map_err(|e| CniError::from_agent(&e))?;
    let recorded = Records::new(&socket, &conf.name).save(&target.key(), &attachment);
    let result = recorded
        .map_err(|e| {
            CniError::new(
                IO_FAILURE,
                "recording the attachment failed",
                format!("{e:#}"),
            )
        })
        .and_then(|()| {
            add_result(
                conf.cni_version,
                &attachment,
                netns,
                conf.dns.as_ref(),
                conf.prev_result.as_ref(),
            )
        });
    if result.is_err() {
        // Nothing half-made: the attachment goes again.
        let _ = call(&socket, &Request::Detach(target.key()), AGENT_TIMEOUT).await;
        let _ = Records::new(&socket, &conf.name).remove(&target.key());
    }
    result
}

/// Idempotent: an attachment the agent does not know is gone already. With
/// no agent, the plugin deletes the container's interface itself and queues
/// the detach for the agent.
async fn del(conf: &NetConf, target: &Target) -> Result<(), CniError> {
    let key = target.key();
    let socket = match socket(conf) {
        Ok(socket) => socket,
        Err(e) if e.code == TRY_AGAIN_LATER => {
            // No socket to queue beside: no agent ever ran here since boot,
            // so nothing of this attachment is left but its interface.
            delete_inside(target).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match call(&socket, &Request::Detach(key.clone()), AGENT_TIMEOUT).await {
        Ok(_) => {}
        Err(e) if code_of(&e) == ErrorCode::NotFound => {}
        Err(e) if code_of(&e) == ErrorCode::Unavailable => {
            delete_inside(target).await?;
            offline::queue(&socket, &key).map_err(|q| {
                CniError::new(
                    IO_FAILURE,
                    "queueing the detach for the agent failed",
                    format!("{q:#} (after: {e:#})"),
                )
            })?;
            eprintln!(
                "overlay-cni: {e:#}; deleted {} and queued the detach for the agent",
                target.ifname
            );
        }
        Err(e) => return Err(CniError::from_agent(&e)),
    }
    if let Err(e) = Records::new(&socket, &conf.name).remove(&key) {
        eprintln!("overlay-cni: {e:#}");
    }
    Ok(())
}

/// Deletes the attachment's interface inside the container (its veth pair
/// with it), if the namespace and the interface are still there.
async fn delete_inside(target: &Target) -> Result<(), CniError> {
    let Some(netns) = target.netns.as_deref().filter(|n| Path::new(n).exists()) else {
        return Ok(());
    };
    let failed = |e: anyhow::Error| {
        CniError::new(
            AGENT_FAILED,
            format!("deleting {} in {netns} failed", target.ifname),
            format!("{e:#}"),
        )
    };
    let inside = Netlink::in_netns(Path::new(netns)).map_err(failed)?;
    if let Some(link) = inside.link_by_name(&target.ifname).await.map_err(failed)?
        && link.is_veth
    {
        inside.delete_link(link.index).await.map_err(failed)?;
    }
    Ok(())
}

/// The chain's result must still hold: the agent checks the attachment
/// against the system, the plugin checks it against the result.
async fn check(conf: &NetConf, target: &Target) -> Result<(), CniError> {
    let netns = existing_netns(target)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs prevResult, the result of the ADD"))?;
    let reported = reported(prev, &target.ifname, netns)?;
    let socket = socket(conf)?;
    let attachment: Attachment =
        ask(&socket, &Request::Check(target.key()))
            .await
            .map_err(|e| match code_of(&e) {
                ErrorCode::NotFound | ErrorCode::Failed => CniError::new(
                    NOT_AS_ADDED,
                    "the attachment is not as ADD left it",
                    format!("{e:#}"),
                ),
                _ => CniError::from_agent(&e),
            })?;
    if attachment.network != conf.network || attachment.netns != netns {
        return Err(CniError::new(
            NOT_AS_ADDED,
            "the attachment is not as ADD left it",
            format!(
                "the agent has it in network {} and namespace {}, not {} and {netns}",
                attachment.network, attachment.netns, conf.network
            ),
        ));
    }
    matches(&reported, &attachment)
}

/// Ready when the agent answers and knows the network.
async fn status(conf: &NetConf) -> Result<(), CniError> {
    let down = |e: &anyhow::Error| {
        CniError::new(
            NOT_AVAILABLE_LIMITED,
            "the overlay agent is not available: no ADD can be served, and other nodes withdraw this node's containers",
            format!("{e:#}"),
        )
    };
    let socket = resolve_socket(None, conf.socket.clone()).map_err(|e| down(&e))?;
    let list: NetworkList =
        ask(&socket, &Request::NetworkLs)
            .await
            .map_err(|e| match code_of(&e) {
                ErrorCode::Unavailable => down(&e),
                _ => CniError::from_agent(&e),
            })?;
    if list.networks.iter().any(|n| n.name == conf.network) {
        Ok(())
    } else {
        Err(CniError::new(
            NOT_AVAILABLE,
            format!("the overlay has no network {}", conf.network),
            format!(
                "create it: overlay network create {} --subnet CIDR",
                conf.network
            ),
        ))
    }
}

/// Detaches what ADD recorded under this configuration and `valid` does not
/// list, carrying on past failures.
async fn gc(conf: &NetConf, valid: &[AttachmentKey]) -> Result<(), CniError> {
    let socket = socket(conf)?;
    let records = Records::new(&socket, &conf.name);
    let keys = records.keys().map_err(|e| {
        CniError::new(
            IO_FAILURE,
            "reading the plugin's records failed",
            format!("{e:#}"),
        )
    })?;
    let mut problems = Vec::new();
    for key in keys.iter().filter(|k| !valid.contains(k)) {
        match call(&socket, &Request::Detach(key.clone()), AGENT_TIMEOUT).await {
            Ok(_) => {}
            Err(e) if code_of(&e) == ErrorCode::NotFound => {}
            Err(e) if code_of(&e) == ErrorCode::Unavailable => {
                return Err(CniError::from_agent(&e));
            }
            Err(e) => {
                problems.push(format!("{}/{}: {e:#}", key.container_id, key.ifname));
                continue;
            }
        }
        if let Err(e) = records.remove(key) {
            problems.push(format!("{e:#}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            AGENT_FAILED,
            "some stale attachments could not be removed",
            problems.join("; "),
        ))
    }
}
