//! The network driver: Docker networks as the cluster's overlay networks, and
//! Docker endpoints as the agent's attachments, plumbed by the caller
//! (Docker moves the veth end into the sandbox as `SrcName`).
//!
//! CreateNetwork does not carry the network's name: Docker's Engine API has
//! it once CreateNetwork has returned. So a network made here is checked by
//! the agent (`network_check`: everything but the name) and Docker is told
//! yes; then the name is read from dockerd and the network created in the
//! cluster under it. Should the cluster refuse it in that moment (another
//! node took the name), the Docker network is removed again, so nothing
//! stays half-made.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use log::{error, info, warn};

use super::{
    Plugin, not_found,
    options::{self, ipv6_refused},
    protocol::{
        CreateEndpoint, CreateEndpointResponse, CreateNetwork, Empty, EndpointInterface,
        EndpointRef, InterfaceName, Join, JoinResponse, ProgramExternalConnectivity,
    },
    store::{Binding, DockerEndpoint, Store},
};
use crate::{
    api::proto::{
        ApiError, AttachRequest, Attachment, AttachmentKey, NetworkCreate, NetworkInfo, Request,
    },
    config::rules,
    model::{Mac, Plumbing, Subnet},
};

/// The ifname of every Docker attachment's key: the EndpointID is unique
/// already, and Docker names the interface itself (`eth<n>`).
const IFNAME: &str = "eth";

/// How long the name of a new network may take to show in the Engine API.
const NAMING_TIMEOUT: Duration = Duration::from_secs(30);

fn key(endpoint_id: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: endpoint_id.to_owned(),
        ifname: IFNAME.to_owned(),
    }
}

/// The agent's option names, in an error, as Docker's command line spells
/// them.
fn docker_words(e: &ApiError) -> anyhow::Error {
    let message = &e.message;
    let renamed = [
        ("subnet: ", "--subnet: "),
        ("gateway: ", "--gateway: "),
        ("aux_addresses", "--aux-address"),
        ("vni: ", "-o vni: "),
        ("mtu: ", "-o mtu: "),
    ]
    .iter()
    .find_map(|(ours, docker)| {
        message
            .strip_prefix(ours)
            .map(|rest| format!("{docker}{rest}"))
    });
    anyhow!(renamed.unwrap_or_else(|| message.clone()))
}

/// A subnet this plugin has promised to a network not yet in the cluster.
pub(super) fn promised(store: &Store, subnet: Subnet) -> Option<String> {
    let unnamed = store.bindings().filter_map(|(id, b)| match b {
        Binding::Unnamed(c) => Some((id.as_str(), c.subnet.parse::<Subnet>().ok()?)),
        Binding::Named(_) => None,
    });
    let pending = store.pools.iter().map(|(id, p)| (id.as_str(), p.subnet));
    unnamed
        .chain(pending)
        .find(|(_, s)| s.overlaps(subnet))
        .map(|(_, s)| format!("--subnet: {subnet} overlaps {s}, of a network being created"))
}

impl Plugin {
    pub(super) async fn create_network(self: &Arc<Self>, r: CreateNetwork) -> Result<Empty> {
        let create = options::network_create(&r).map_err(|e| anyhow!(e))?;
        let subnet: Subnet = create
            .subnet
            .parse()
            .map_err(|e| anyhow!("--subnet: {e}"))?;
        let mut store = self.store.lock().await;
        store.pools.remove(&subnet.to_string());
        if store.binding(&r.network_id).is_some() {
            return Ok(Empty {});
        }
        if let Some(name) = store.mirrors.get(&subnet).cloned() {
            // The engine sync creating a cluster network in this dockerd.
            if let Some(other) = store.bound_to(&name) {
                bail!("network {name} is in this dockerd already (as {other})");
            }
            store.bind(&r.network_id, Binding::Named(name))?;
            return Ok(Empty {});
        }
        if let Some(clash) = promised(&store, subnet) {
            bail!(clash);
        }
        self.agent
            .call::<NetworkInfo>(Request::NetworkCheck(create.clone()))
            .await
            .map_err(|e| docker_words(&e))?;
        store.bind(&r.network_id, Binding::Unnamed(create))?;
        drop(store);
        let plugin = self.clone();
        tokio::spawn(async move { plugin.name_network(r.network_id).await });
        Ok(Empty {})
    }

    /// Once Docker tells the name of the network `id` made here, creates it
    /// in the cluster; if the cluster refuses, takes it out of dockerd.
    async fn name_network(&self, id: String) {
        let deadline = tokio::time::Instant::now() + NAMING_TIMEOUT;
        let name = loop {
            match self.engine.network_name(&id).await {
                Ok(Some(name)) => break Some(name),
                _ if tokio::time::Instant::now() > deadline => break None,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut store = self.store.lock().await;
        let Some(Binding::Unnamed(create)) = store.binding(&id).cloned() else {
            return;
        };
        let Some(name) = name else {
            error!(
                "docker network {}: dockerd did not tell its name within {NAMING_TIMEOUT:?}; forgotten",
                short(&id)
            );
            let _ = store.unbind(&id);
            return;
        };
        let create = NetworkCreate {
            name: name.clone(),
            ..create
        };
        match self
            .agent
            .call::<NetworkInfo>(Request::NetworkCreate(create))
            .await
        {
            Ok(info) => {
                if let Err(e) = store.bind(&id, Binding::Named(name.clone())) {
                    error!("docker network {name}: {e:#}");
                }
                info!(
                    "docker network {name} ({}) is the cluster's network {name}: VNI {}, {}, gateway {}",
                    short(&id),
                    info.vni,
                    info.subnet,
                    info.gateway
                );
            }
            Err(e) => {
                error!(
                    "docker network {name}: the cluster refused it ({e}); removing it from dockerd",
                    e = docker_words(&e)
                );
                let _ = store.unbind(&id);
                drop(store);
                if let Err(e) = self.engine.remove(&id).await {
                    warn!("removing docker network {name}: {e:#}");
                }
            }
        }
    }

    /// Networks made before a restart whose name was never learnt.
    pub(super) async fn name_unnamed(self: Arc<Self>) {
        let unnamed: Vec<String> = {
            let store = self.store.lock().await;
            store
                .bindings()
                .filter(|(_, b)| matches!(b, Binding::Unnamed(_)))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in unnamed {
            self.name_network(id).await;
        }
    }

    /// Docker removes the network from its own store whatever a remote
    /// driver answers (libnetwork honours only its built-in drivers'
    /// refusals), so a removal the cluster refuses (containers elsewhere, a
    /// network of a cluster file) is answered with the reason, for dockerd's
    /// log, and the engine sync puts the network back into this dockerd.
    pub(super) async fn delete_network(&self, r: EndpointRef) -> Result<Empty> {
        let mut store = self.store.lock().await;
        let Some(binding) = store.unbind(&r.network_id)? else {
            return Ok(Empty {});
        };
        let Binding::Named(name) = binding else {
            return Ok(Empty {});
        };
        match self
            .agent
            .call::<serde_json::Value>(Request::NetworkRm { name: name.clone() })
            .await
        {
            Ok(_) => {
                info!("docker network {name} removed: removed from the cluster");
                Ok(Empty {})
            }
            // Removed elsewhere already: this is the engine sync following.
            Err(e) if not_found(&e) => Ok(Empty {}),
            Err(e) => {
                warn!(
                    "docker network rm {name}: {e}; dockerd drops it regardless, and it is put back"
                );
                self.resync.notify_one();
                Err(anyhow!("{e}; it stays in the cluster and comes back"))
            }
        }
    }

    /// Named, or an error for a network the plugin does not know.
    async fn bound_network(&self, network_id: &str) -> Result<String> {
        match self.store.lock().await.binding(network_id) {
            Some(Binding::Named(name)) => Ok(name.clone()),
            Some(Binding::Unnamed(_)) => bail!("the network is still being created"),
            None => bail!(
                "network {} is not known to this agent (created while it used other state?)",
                short(network_id)
            ),
        }
    }

    pub(super) async fn create_endpoint(
        &self,
        r: CreateEndpoint,
    ) -> Result<CreateEndpointResponse> {
        self.bound_network(&r.network_id).await?;
        let iface = r.interface.unwrap_or_default();
        if !iface.address_ipv6.is_empty() {
            bail!(ipv6_refused());
        }
        let ip: Ipv4Addr = iface
            .address
            .split_once('/')
            .map_or(iface.address.as_str(), |(ip, _)| ip)
            .parse()
            .map_err(|_| {
                anyhow!(
                    "endpoint address {:?}: the network's IPAM must be overlay-ebpf",
                    iface.address
                )
            })?;
        let (mac, answer) = if iface.mac_address.is_empty() {
            let mac = Mac::from_ipv4(ip);
            let answer = EndpointInterface {
                mac_address: mac.to_string(),
                ..EndpointInterface::default()
            };
            (mac, Some(answer))
        } else {
            let mac = iface
                .mac_address
                .parse()
                .map_err(|e| anyhow!("--mac-address: {e}"))?;
            // Docker filled it: answering it again would be an error.
            (mac, None)
        };
        rules::container_id(&r.endpoint_id).map_err(|e| anyhow!(e))?;
        self.store
            .lock()
            .await
            .endpoints
            .insert(r.endpoint_id, DockerEndpoint { ip, mac });
        Ok(CreateEndpointResponse { interface: answer })
    }

    pub(super) async fn join(&self, r: Join) -> Result<JoinResponse> {
        let network = self.bound_network(&r.network_id).await?;
        let endpoint = self
            .store
            .lock()
            .await
            .endpoints
            .get(&r.endpoint_id)
            .cloned()
            .context("Join for an endpoint this agent did not create (it restarted in between?)")?;
        let attachment: Attachment = self
            .agent
            .call(Request::Attach(AttachRequest {
                container_id: r.endpoint_id.clone(),
                ifname: IFNAME.to_owned(),
                network,
                netns: r.sandbox_key,
                ip: Some(endpoint.ip),
                mac: Some(endpoint.mac),
                plumbing: Plumbing::Caller,
                reserved: true,
            }))
            .await?;
        Ok(JoinResponse {
            interface_name: InterfaceName {
                src_name: attachment.container_ifname,
                dst_prefix: IFNAME.to_owned(),
            },
            gateway: attachment
                .gateway
                .map(|g| g.to_string())
                .unwrap_or_default(),
            disable_gateway_service: attachment.gateway.is_none(),
        })
    }

    /// Detaches, if attached: Leave and DeleteEndpoint both end an endpoint.
    async fn detach(&self, endpoint_id: &str) -> Result<()> {
        match self
            .agent
            .call::<Attachment>(Request::Detach(key(endpoint_id)))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn leave(&self, r: EndpointRef) -> Result<Empty> {
        self.detach(&r.endpoint_id).await?;
        Ok(Empty {})
    }

    pub(super) async fn delete_endpoint(&self, r: EndpointRef) -> Result<Empty> {
        self.detach(&r.endpoint_id).await?;
        self.store.lock().await.endpoints.remove(&r.endpoint_id);
        Ok(Empty {})
    }

    pub(super) async fn program_external_connectivity(
        &self,
        r: ProgramExternalConnectivity,
    ) -> Result<Empty> {
        let ports = options::published_ports(&r.options).map_err(|e| anyhow!(e))?;
        if ports.is_empty() {
            return Ok(Empty {});
        }
        self.publish(&r.endpoint_id, ports).await?;
        Ok(Empty {})
    }

    pub(super) async fn revoke_external_connectivity(&self, r: EndpointRef) -> Result<Empty> {
        match self.publish(&r.endpoint_id, Vec::new()).await {
            Err(e) if not_found(&e) => Ok(Empty {}),
            other => other.map(|_| Empty {}).map_err(Into::into),
        }
    }

    async fn publish(
        &self,
        endpoint_id: &str,
        ports: Vec<crate::model::PortMapping>,
    ) -> Result<Attachment, ApiError> {
        let k = key(endpoint_id);
        self.agent
            .call(Request::Publish {
                container_id: k.container_id,
                ifname: k.ifname,
                ports,
            })
            .await
    }
}

/// Docker's short form of an ID.
pub(super) fn short(id: &str) -> &str {
    // By characters: dockerd's IDs are hex, but an ID is what the request
    // says, and a byte slice through a character would panic the handler.
    id.char_indices().nth(12).map_or(id, |(end, _)| &id[..end])
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn short_ids_cut_at_twelve_characters_never_inside_one() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("01234567890é-rest"), "01234567890é");
    }
}
