//! Published ports (Docker's `-p`): an attachment's ports are DNATed to it by
//! the way out's table. They belong to the endpoint: saved with it, gone
//! with it.

use anyhow::Result;
use log::info;

use crate::{
    agent::{endpoints::Attached, node::Node, state_file::Change},
    api::proto::{AttachmentKey, ErrorCode, api_error},
    model::PortMapping,
};

impl Node {
    /// Replaces the published ports of the attachment `key` with `ports`.
    pub(super) async fn publish(
        &mut self,
        key: &AttachmentKey,
        ports: &[PortMapping],
    ) -> Result<&Attached> {
        let Some(a) = self.endpoints.find_key(key) else {
            return Err(api_error(
                ErrorCode::NotFound,
                format!(
                    "container {} has no attachment {} on this node",
                    key.container_id, key.ifname
                ),
            ));
        };
        let (network, netns) = (a.network().to_owned(), a.netns().to_owned());
        if !ports.is_empty() && a.veth.plan.gateway.is_none() {
            return Err(api_error(
                ErrorCode::Invalid,
                format!("-p: network {network} is internal: nothing reaches it from outside"),
            ));
        }
        for (i, p) in ports.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(api_error(
                    ErrorCode::Invalid,
                    format!("-p {p}: port 0 cannot be published; give the host port (-p 8080:80)"),
                ));
            }
            if ports[..i].iter().any(|q| q.clashes_with(p)) {
                return Err(api_error(
                    ErrorCode::Invalid,
                    format!("-p {p}: the port is listed twice"),
                ));
            }
            let taken = self
                .endpoints
                .iter()
                .filter(|other| !other.has_key(key))
                .find(|other| other.veth.plan.ports.iter().any(|q| q.clashes_with(p)));
            if let Some(other) = taken {
                return Err(api_error(
                    ErrorCode::Exists,
                    format!(
                        "-p {p}: the host port is already published by {} ({})",
                        other
                            .veth
                            .plan
                            .container_id
                            .as_deref()
                            .unwrap_or("an endpoint"),
                        other.veth.plan.ip
                    ),
                ));
            }
        }
        let before = self.endpoints.set_ports(key, ports.to_vec());
        let change = Change::SetPorts {
            network,
            netns,
            ports: ports.to_vec(),
        };
        if let Err(e) = self.commit(change).await {
            self.endpoints.set_ports(key, before);
            return Err(e);
        }
        let a = self.endpoints.find_key(key).expect("found above");
        if !ports.is_empty() || !before.is_empty() {
            info!(
                "endpoint {} publishes {}",
                a.veth.plan.ip,
                if ports.is_empty() {
                    "no port".to_owned()
                } else {
                    ports
                        .iter()
                        .map(PortMapping::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        Ok(a)
    }
}
