//! The local API's requests. Each checks against the resolved cluster, makes
//! its side effects (a veth), and hands its [`Change`] to [`Node::commit`],
//! undoing the side effects if the commit fails.
//!
//! - [`network`]: create, check, list and remove networks;
//! - [`attach`]: endpoints and runtime attachments, added and removed;
//! - [`addresses`]: endpoint addresses checked, allocated and reserved;
//! - [`publish`]: an attachment's published ports.
//!
//! [`Change`]: super::state_file::Change

mod addresses;
mod attach;
mod network;
mod publish;

use std::time::Duration;

use self::attach::AttachSpec;
use super::{endpoints::Attached, node::Node};
use crate::{
    api::proto::{Attachment, AttachmentKey, EndpointInfo, Request, Response, Route},
    host::netlink::Netlink,
    model::{Plumbing, gateway_mac},
};

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

/// An answer now, or once an address block claim has settled.
enum Pending<T> {
    Ready(T),
    AfterClaim(Duration),
}

impl Node {
    /// Answers one request; `attempt` counts the block claims an endpoint add
    /// has made so far.
    pub async fn handle(&mut self, nl: &Netlink, request: &Request, attempt: u32) -> Reply {
        let result = match request {
            Request::NetworkCreate(create) => self.network_create(create).await.map(Response::ok),
            Request::NetworkCheck(create) => self.network_check(create).map(Response::ok),
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
            } => {
                let spec = AttachSpec {
                    network: network.clone(),
                    netns: netns.clone(),
                    ip: *ip,
                    mac: mac.clone(),
                    key: None,
                    plumbing: Plumbing::Agent,
                    reserved: false,
                };
                match self.attach(nl, &spec, attempt).await {
                    Ok(Pending::Ready(())) => Ok(Response::ok(self.local_info(self.added(&spec)))),
                    Ok(Pending::AfterClaim(after)) => return later(after, attempt),
                    Err(e) => Err(e),
                }
            }
            Request::Attach(request) => {
                let spec = AttachSpec::from(request);
                match self.attach(nl, &spec, attempt).await {
                    Ok(Pending::Ready(())) => Ok(Response::ok(attachment(self.added(&spec)))),
                    Ok(Pending::AfterClaim(after)) => return later(after, attempt),
                    Err(e) => Err(e),
                }
            }
            Request::EndpointRm { network, netns } => self
                .endpoint_rm(nl, network, netns)
                .await
                .map(|removed| Response::ok(self.local_info(&removed))),
            Request::Detach(key) => self
                .detach(nl, key)
                .await
                .map(|removed| Response::ok(attachment(&removed))),
            Request::Check(key) => self
                .check(nl, key)
                .await
                .map(|checked| Response::ok(attachment(checked))),
            Request::Attachments => Ok(Response::ok(
                self.endpoints.iter().map(attachment).collect::<Vec<_>>(),
            )),
            Request::ReserveAddress { network, ip } => {
                match self.reserve_address(network, *ip, attempt).await {
                    Ok(Pending::Ready(reservation)) => Ok(Response::ok(reservation)),
                    Ok(Pending::AfterClaim(after)) => return later(after, attempt),
                    Err(e) => Err(e),
                }
            }
            Request::ReleaseAddress { network, ip } => self
                .release_address(network, *ip)
                .await
                .map(|()| Response::ok(serde_json::json!({ "released": ip }))),
            Request::Publish {
                container_id,
                ifname,
                ports,
            } => {
                let key = AttachmentKey {
                    container_id: container_id.clone(),
                    ifname: ifname.clone(),
                };
                self.publish(&key, ports)
                    .await
                    .map(|a| Response::ok(attachment(a)))
            }
            Request::EndpointLs => Ok(Response::ok(self.endpoint_list())),
            Request::Members => Ok(Response::ok(self.membership.member_list(self.name()))),
        };
        Reply::Now(result.unwrap_or_else(|e| Response::err(&e)))
    }

    /// The endpoint an attach just made.
    fn added(&self, spec: &AttachSpec) -> &Attached {
        self.endpoints
            .find(&spec.network, &spec.netns)
            .expect("an attach that succeeded recorded its endpoint")
    }

    fn local_info(&self, a: &Attached) -> EndpointInfo {
        EndpointInfo {
            network: a.network().to_owned(),
            ip: a.veth.plan.ip,
            mac: a.veth.plan.mac.to_string(),
            node: self.name().to_owned(),
            netns: Some(a.netns().to_owned()),
            host_ifname: Some(a.veth.plan.host_ifname.clone()),
            container_id: a.veth.plan.container_id.clone(),
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
                    container_id: None,
                }),
        );
        list.sort_by(|a, b| (&a.network, a.ip).cmp(&(&b.network, b.ip)));
        list
    }
}

fn later(after: Duration, attempt: u32) -> Reply {
    Reply::Later {
        after,
        attempt: attempt + 1,
    }
}

/// What a runtime reports about an attachment.
fn attachment(a: &Attached) -> Attachment {
    let p = &a.veth.plan;
    Attachment {
        container_id: p.container_id.clone(),
        ifname: p.container_ifname.clone(),
        network: p.network.clone(),
        vni: p.vni,
        netns: p.netns.clone(),
        plumbing: p.plumbing,
        host_ifname: p.host_ifname.clone(),
        host_mac: p.gateway.map(gateway_mac),
        container_ifname: match p.plumbing {
            Plumbing::Agent => p.container_ifname.clone(),
            Plumbing::Caller => p.peer_ifname(),
        },
        mac: p.mac,
        ip: p.ip,
        prefix_len: p.prefix_len,
        gateway: p.gateway,
        routes: p
            .routes()
            .into_iter()
            .map(|(dst, gateway)| Route { dst, gateway })
            .collect(),
        mtu: p.mtu,
        ports: p.ports.clone(),
    }
}
