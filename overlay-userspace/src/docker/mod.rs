//! The Docker network driver and IPAM driver, `overlay-ebpf`, served by the
//! agent on one unix socket as a legacy plugin (the `[docker]` section). Docker
//! calls become the agent's own requests, sent through the same channel as
//! the local API's, so they take the one path every change takes (a `Change`,
//! then `Node::commit`):
//!
//! | Docker | the agent |
//! |---|---|
//! | `network create` (RequestPool, RequestAddress ×, CreateNetwork) | `network_check`, then, once Docker tells the name, `network_create` |
//! | `network rm` (ReleaseAddress ×, ReleasePool, DeleteNetwork) | `network_rm` |
//! | `run` (RequestAddress, CreateEndpoint, Join, ProgramExternalConnectivity) | `reserve_address`, `attach` (plumbing `caller`), `publish` |
//! | `rm` (RevokeExternalConnectivity, Leave, DeleteEndpoint, ReleaseAddress) | `publish` (none), `detach`, `release_address` |
//!
//! Every other node's agent creates the same network in its own dockerd
//! ([`engine`]), as swarm does for Docker's overlay.
//!
//! - [`protocol`]: what Docker sends and expects; [`server`]: the HTTP side;
//! - [`driver`]: the network driver; [`ipam`]: the IPAM driver;
//! - [`options`]: Docker's options in the agent's terms;
//! - [`store`]: NetworkID → network, saved; [`engine`]: this node's dockerd.

mod driver;
mod engine;
mod ipam;
pub mod options;
pub mod protocol;
mod server;
mod store;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Result;
use serde::de::DeserializeOwned;
use tokio::{
    sync::{Mutex, Notify, mpsc, oneshot},
    task::JoinHandle,
};

use self::{engine::Engine, store::Store};
use crate::{
    api::proto::{ApiError, Call, ErrorCode, NetworkInfo, NetworkList, Request},
    config::DockerSection,
};

/// The plugin while the agent runs: its server and its engine sync.
pub struct DockerPlugin {
    socket: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl DockerPlugin {
    /// Serves the drivers on the section's socket and keeps this node's
    /// dockerd in step with the cluster's networks. Docker's calls go to the
    /// agent's loop through `calls`.
    pub fn start(
        section: &DockerSection,
        state_dir: &Path,
        calls: mpsc::Sender<Call>,
    ) -> Result<DockerPlugin> {
        let plugin = Arc::new(Plugin {
            agent: AgentLink(calls),
            store: Mutex::new(Store::load(state_dir)?),
            engine: Engine::new(&section.engine),
            resync: Notify::new(),
        });
        let server = server::serve(&section.plugin_socket, plugin.clone())?;
        let sync = tokio::spawn(engine::keep_in_step(plugin.clone()));
        let naming = tokio::spawn(async move { plugin.name_unnamed().await });
        Ok(DockerPlugin {
            socket: section.plugin_socket.clone(),
            tasks: vec![server, sync, naming],
        })
    }

    /// Stops serving; Docker's calls fail until the next agent serves again.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What the handlers and the engine sync share.
pub(crate) struct Plugin {
    agent: AgentLink,
    store: Mutex<Store>,
    engine: Engine,
    /// Wakes the engine sync early (a network Docker removed that stays).
    resync: Notify,
}

/// The agent's loop, as the local API's server reaches it.
struct AgentLink(mpsc::Sender<Call>);

/// How long a Docker call waits for the agent: an address block claim takes
/// a few gossip rounds.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

impl AgentLink {
    async fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ApiError> {
        let unavailable = |message: &str| ApiError {
            code: ErrorCode::Unavailable,
            message: message.to_owned(),
        };
        let (tx, rx) = oneshot::channel();
        self.0
            .send((request, tx))
            .await
            .map_err(|_| unavailable("the agent is shutting down"))?;
        let response = tokio::time::timeout(AGENT_TIMEOUT, rx)
            .await
            .map_err(|_| unavailable("the agent did not answer in time"))?
            .map_err(|_| unavailable("the agent dropped the request"))?;
        if let Some(message) = response.error {
            return Err(ApiError {
                code: response.code.unwrap_or(ErrorCode::Failed),
                message,
            });
        }
        serde_json::from_value(response.data).map_err(|e| ApiError {
            code: ErrorCode::Failed,
            message: format!("the agent's answer is not valid: {e}"),
        })
    }
}

impl Plugin {
    /// The cluster's networks, as this node resolves them.
    async fn cluster_networks(&self) -> Result<Vec<NetworkInfo>, ApiError> {
        let list: NetworkList = self.agent.call(Request::NetworkLs).await?;
        Ok(list.networks)
    }
}

/// Whether an agent error says there was nothing to undo: Docker's removals
/// are idempotent.
fn not_found(e: &ApiError) -> bool {
    e.code == ErrorCode::NotFound
}
