//! This node's dockerd, through its Engine API (bollard): the names of the
//! networks made here, and the cluster's networks kept in it, as swarm keeps
//! Docker's overlay networks on every node. A cluster network is created in
//! dockerd when it is missing (its CreateNetwork then binds to the cluster's
//! network instead of making one), and a Docker network of this driver whose
//! cluster network is gone is removed.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bollard::{
    Docker,
    models::{Ipam, IpamConfig, NetworkCreateRequest},
    query_parameters::ListNetworksOptions,
};
use log::{info, warn};

use super::{
    Plugin,
    driver::short,
    store::{Binding, Store},
};
use crate::{api::proto::NetworkInfo, config::DOCKER_PLUGIN, model::Subnet};

/// Docker 20.10's API; newer daemons answer it too.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// How often the cluster's networks are compared with dockerd's.
const TICK: Duration = Duration::from_millis(250);

pub struct Engine {
    socket: PathBuf,
    client: tokio::sync::Mutex<Option<Docker>>,
}

/// A network of this driver in dockerd.
struct DockerNetwork {
    id: String,
    name: String,
    subnet: Option<Subnet>,
}

impl Engine {
    pub fn new(socket: &Path) -> Engine {
        Engine {
            socket: socket.to_owned(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// A client, connected on first use (dockerd may start after the agent).
    async fn client(&self) -> Result<Docker> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let path = self.socket.display().to_string();
        let c = Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, &API_VERSION)
            .with_context(|| format!("connecting to dockerd at unix://{path}"))?;
        let c = c
            .negotiate_version()
            .await
            .with_context(|| format!("asking dockerd at unix://{path} for its API version"))?;
        info!("dockerd answers at unix://{path}");
        *client = Some(c.clone());
        Ok(c)
    }

    /// Forgets the client after a failure, so the next call connects again.
    async fn failed<T>(&self, result: Result<T, bollard::errors::Error>) -> Result<T> {
        if result.is_err() {
            *self.client.lock().await = None;
        }
        Ok(result?)
    }

    /// The name of network `id`, once dockerd has stored it.
    pub async fn network_name(&self, id: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        match client.inspect_network(id, None).await {
            Ok(n) => Ok(n.name),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => self.failed(Err(e)).await,
        }
    }

    async fn networks(&self) -> Result<Vec<DockerNetwork>> {
        let client = self.client().await?;
        let filters = HashMap::from([("driver".to_owned(), vec![DOCKER_PLUGIN.to_owned()])]);
        let list = client
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await;
        Ok(self
            .failed(list)
            .await?
            .into_iter()
            .filter_map(|n| {
                let subnet = n
                    .ipam
                    .and_then(|i| i.config)
                    .and_then(|c| c.into_iter().next())
                    .and_then(|c| c.subnet)
                    .and_then(|s| s.parse().ok());
                Some(DockerNetwork {
                    id: n.id?,
                    name: n.name?,
                    subnet,
                })
            })
            .collect())
    }

    /// Creates the cluster network `n` in dockerd, under its name.
    async fn create(&self, n: &NetworkInfo) -> Result<()> {
        let client = self.client().await?;
        let aux = n
            .aux_addresses
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("aux{i}"), ip.to_string()))
            .collect();
        let request = NetworkCreateRequest {
            name: n.name.clone(),
            driver: Some(DOCKER_PLUGIN.to_owned()),
            internal: Some(n.internal),
            ipam: Some(Ipam {
                driver: Some(DOCKER_PLUGIN.to_owned()),
                config: Some(vec![IpamConfig {
                    subnet: Some(n.subnet.clone()),
                    gateway: Some(n.gateway.to_string()),
                    auxiliary_addresses: Some(aux),
                    ip_range: None,
                }]),
                options: None,
            }),
            options: Some(HashMap::from([
                ("vni".to_owned(), n.vni.to_string()),
                ("mtu".to_owned(), n.mtu.to_string()),
            ])),
            ..NetworkCreateRequest::default()
        };
        let created = client.create_network(request).await;
        self.failed(created).await?;
        Ok(())
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let client = self.client().await?;
        let removed = client.remove_network(id).await;
        self.failed(removed).await
    }
}

/// Runs [`Plugin::step`] every [`TICK`], and at once when woken.
pub async fn keep_in_step(plugin: Arc<Plugin>) {
    let mut memory = StepMemory::default();
    let mut failing = false;
    loop {
        match plugin.step(&mut memory).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                warn!("keeping dockerd in step with the cluster: {e:#} (retrying every {TICK:?})");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = plugin.resync.notified() => {}
        }
    }
}

/// What one step leaves the next.
#[derive(Default)]
pub struct StepMemory {
    /// Docker networks of this driver the plugin did not know.
    unknown: BTreeSet<String>,
    /// Cluster networks dockerd refused to create, and when: tried again
    /// after [`RETRY`].
    refused: HashMap<String, Instant>,
}

const RETRY: Duration = Duration::from_secs(5);

impl Plugin {
    /// One comparison of the cluster's networks with dockerd's. A Docker
    /// network of this driver the plugin does not know is adopted if a
    /// cluster network has its name and subnet, and removed if it is still
    /// unknown at the next step.
    async fn step(&self, memory: &mut StepMemory) -> Result<()> {
        let unknown_before = &mut memory.unknown;
        let cluster = self.cluster_networks().await?;
        let mut missing = Vec::new();
        let mut stale = Vec::new();
        {
            // dockerd's list is read under the lock: no binding can be made
            // between reading it and deciding on it.
            let mut store = self.store.lock().await;
            let docker = self.engine.networks().await?;
            let mut unknown = BTreeSet::new();
            for d in &docker {
                let in_cluster = |name: &str| cluster.iter().find(|n| n.name == name);
                match store.binding(&d.id).cloned() {
                    Some(Binding::Unnamed(_)) => {}
                    Some(Binding::Named(name)) if in_cluster(&name).is_some() => {}
                    Some(Binding::Named(_)) => stale.push(d.id.clone()),
                    None => match in_cluster(&d.name) {
                        Some(n)
                            if store.bound_to(&n.name).is_none()
                                && d.subnet.is_some_and(|s| s.to_string() == n.subnet) =>
                        {
                            store.bind(&d.id, Binding::Named(n.name.clone()))?;
                            info!("docker network {} adopted as the cluster's", d.name);
                        }
                        _ if unknown_before.contains(&d.id) => stale.push(d.id.clone()),
                        _ => {
                            unknown.insert(d.id.clone());
                        }
                    },
                }
            }
            *unknown_before = unknown;
            forget_gone(&mut store, &docker)?;
            for n in &cluster {
                let in_docker = docker.iter().any(|d| d.name == n.name);
                if store.bound_to(&n.name).is_none() && !in_docker {
                    missing.push(n.clone());
                }
            }
        }
        for id in stale {
            match self.engine.remove(&id).await {
                Ok(()) => info!(
                    "docker network {} removed: its overlay network is gone",
                    short(&id)
                ),
                Err(e) => warn!("removing docker network {}: {e:#}", short(&id)),
            }
        }
        memory.refused.retain(|_, at| at.elapsed() < RETRY);
        for n in missing {
            if !memory.refused.contains_key(&n.name) && !self.mirror(&n).await {
                memory.refused.insert(n.name.clone(), Instant::now());
            }
        }
        Ok(())
    }

    /// Creates the cluster network `n` in this dockerd; whether it did.
    async fn mirror(&self, n: &NetworkInfo) -> bool {
        let Ok(subnet) = n.subnet.parse::<Subnet>() else {
            return false;
        };
        self.store
            .lock()
            .await
            .mirrors
            .insert(subnet, n.name.clone());
        let created = self.engine.create(n).await;
        self.store.lock().await.mirrors.remove(&subnet);
        match created {
            Ok(()) => {
                info!(
                    "docker network {} created for the cluster's network (VNI {}, {})",
                    n.name, n.vni, n.subnet
                );
                true
            }
            Err(e) => {
                warn!(
                    "creating docker network {}: {e:#} (trying again in {RETRY:?})",
                    n.name
                );
                false
            }
        }
    }
}

/// Bindings of networks dockerd no longer has (removed while no agent
/// listened): forgotten, so the cluster's network is created again.
fn forget_gone(store: &mut Store, docker: &[DockerNetwork]) -> Result<()> {
    let gone: Vec<String> = store
        .bindings()
        .filter(|(id, b)| matches!(b, Binding::Named(_)) && !docker.iter().any(|d| &&d.id == id))
        .map(|(id, _)| id.clone())
        .collect();
    for id in gone {
        store.unbind(&id)?;
    }
    Ok(())
}
