//! The agent: validate, load (or adopt), plumb, fill, attach, join the cluster,
//! serve the local API, and on exit undo it all (or, with --keep, leave the
//! dataplane running for the next agent).
//!
//! - [`node`]: the node's state and the one path a change takes (commit, sync);
//! - [`handlers`]: the local API's requests;
//! - [`endpoints`]: the local endpoints' veths and attachments;
//! - [`membership`]: gossip and the resolved cluster view;
//! - [`state_file`]: what the API made, on disk; [`lock`]: one agent per node.

pub mod endpoints;
pub mod handlers;
pub mod lock;
pub mod membership;
pub mod node;
pub mod state_file;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::{
    handlers::Reply,
    lock::RunLock,
    node::{Node, Teardown},
    state_file::{Change, RuntimeState, StateFile},
};
use crate::{
    api::{self, proto::Call},
    config::ClusterConfig,
    dataplane::pins,
    docker::DockerPlugin,
    gossip::key::Keyring,
    host::{netlink::Netlink, plan},
    metrics,
    monitor::{self, Monitor},
};

/// How the agent was started.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub pin_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub reconcile_interval: Duration,
    /// Leave programs, maps and veths in place on exit, for the next agent.
    pub keep: bool,
}

pub const DEFAULT_STATE_ROOT: &str = "/var/lib/overlay";

pub async fn run(opts: AgentOptions) -> Result<()> {
    // Take over SIGINT/SIGTERM before touching anything, so a signal during setup
    // cannot kill us half-way; it is acted on once setup is done or undone.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    // Nothing is changed until every check has passed.
    let config = ClusterConfig::load(&opts.config)?;
    // SIGHUP re-reads the cluster key file: a key rotation's step.
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let keys = config
        .cluster
        .as_ref()
        .map(|c| Keyring::load(&c.key_file))
        .transpose()?;
    let socket = opts
        .socket
        .clone()
        .unwrap_or_else(|| api::default_socket(&config.node));
    let _lock = RunLock::acquire(&socket.with_extension("lock"), &config.node)?;
    let pin_dir = opts
        .pin_dir
        .clone()
        .unwrap_or_else(|| pins::default_pin_dir(&config.node));
    pins::ensure_on_bpffs(&pin_dir)?;
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_STATE_ROOT).join(&config.node));
    let state_file = StateFile::new(&state_dir);
    let docker_section = config.docker.clone();
    let runtime = drop_queued_detaches(&state_file, state_file.load()?, &socket)?;
    // Written whole, its journal folded in and emptied, before the first
    // change appends to it (this also makes the directory).
    state_file.save(&runtime)?;
    let nl = Netlink::current_with_conf_dirs()?;
    let plan = plan::plan(config, pin_dir, &nl).await?;

    let mut node = Node::new(plan, runtime, state_file);
    let monitor = Monitor::new();
    let mut listeners = monitor.listeners();
    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let started = async {
        node.start(&nl, keys).await?;
        let docker = docker_section
            .as_ref()
            .map(|d| DockerPlugin::start(d, &state_dir, calls_tx.clone()))
            .transpose()?;
        let served = async {
            let metrics = match node.plan.config.metrics_listen {
                Some(listen) => Some(
                    metrics::server::serve(
                        listen,
                        &node.plan.pin_dir,
                        node.metrics(),
                        monitor.listeners(),
                    )
                    .await?,
                ),
                None => None,
            };
            let server = match api::server::serve(&socket, calls_tx, monitor.clone()) {
                Ok(server) => server,
                Err(e) => {
                    // A dropped JoinHandle leaves its task running: the
                    // metrics server would hold its port after the agent gave up.
                    if let Some(metrics) = metrics {
                        metrics.abort();
                    }
                    return Err(e);
                }
            };
            anyhow::Ok((server, metrics))
        }
        .await;
        match served {
            Ok((server, metrics)) => Ok((server, metrics, docker)),
            Err(e) => {
                if let Some(docker) = docker {
                    docker.stop();
                }
                Err(e)
            }
        }
    }
    .await;
    let (server, metrics, docker) = match started {
        Ok(started) => started,
        Err(e) => {
            let note = if node.adopted() {
                "; the dataplane the previous agent left is untouched"
            } else {
                "; everything it had done was undone"
            };
            node.teardown(&nl, node.teardown_after_failed_setup()).await;
            return Err(e.context(format!("setup failed{note}")));
        }
    };
    let relay = node.take_drop_events().map(|events| {
        tokio::spawn(monitor::relay(
            events,
            monitor.clone(),
            node.plan.pin_dir.clone(),
        ))
    });
    node.sync().await;
    announce_ready(&node, &socket);

    let (retry_tx, mut retries) = mpsc::unbounded_channel::<(Call, u32)>();
    let mut ticker = tokio::time::interval(opts.reconcile_interval);
    ticker.tick().await;
    let mut warmup_check = tokio::time::interval(Duration::from_millis(250));
    loop {
        let (call, attempt) = tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                node.reload_keys();
                continue;
            }
            Some(call) = calls.recv() => (call, 0),
            Some(retry) = retries.recv() => retry,
            () = node.membership.changed() => {
                node.sync().await;
                continue;
            }
            _ = warmup_check.tick(), if !node.membership.is_warm() => {
                node.sync().await;
                continue;
            }
            Ok(()) = listeners.changed() => {
                let observe = listeners.borrow_and_update().observe();
                node.observe(observe);
                continue;
            }
            _ = ticker.tick() => {
                node.detach_queued(&nl, &socket).await;
                node.reconcile_all().await;
                continue;
            }
        };
        let (request, reply) = call;
        match node.handle(&nl, &request, attempt).await {
            Reply::Now(response) => {
                let _ = reply.send(response);
            }
            Reply::Later { after, attempt } => {
                let retry_tx = retry_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = retry_tx.send(((request, reply), attempt));
                });
            }
        }
    }
    server.abort();
    if let Err(e) = node.compact_state_file() {
        warn!("saving the state file whole at stop: {e:#}");
    }
    for task in [metrics, relay].into_iter().flatten() {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(docker) = docker {
        docker.stop();
    }
    info!(
        "shutting down{}",
        if opts.keep {
            "; --keep: the dataplane stays up for the next agent"
        } else {
            ""
        }
    );
    let how = if opts.keep {
        Teardown::Keep
    } else {
        Teardown::All
    };
    node.teardown(&nl, how).await;
    Ok(())
}

/// Drops from the saved state the attachments runtimes detached while no
/// agent ran (see [`api::offline`]), before anything is made again from it.
fn drop_queued_detaches(
    state_file: &StateFile,
    mut runtime: RuntimeState,
    socket: &Path,
) -> Result<RuntimeState> {
    let queued = api::offline::queued(socket);
    if queued.is_empty() {
        return Ok(runtime);
    }
    for (_, key) in &queued {
        let saved = runtime.endpoints.iter().find(|e| {
            e.container_id.as_deref() == Some(key.container_id.as_str())
                && e.container_ifname == key.ifname
        });
        if let Some(e) = saved {
            info!(
                "container {} attachment {} ({} in network {}) was detached while no agent ran; dropped",
                key.container_id, key.ifname, e.ip, e.network
            );
            runtime = runtime.with(&Change::RemoveEndpoint {
                network: e.network.clone(),
                netns: e.netns.clone(),
            });
        }
    }
    state_file.save(&runtime)?;
    for (path, _) in queued {
        api::offline::done(&path);
    }
    Ok(runtime)
}

/// Logs what is up and what to watch out for, and prints `ready`.
fn announce_ready(node: &Node, socket: &Path) {
    let plan = &node.plan;
    info!(
        "node {} up: VTEP {} on {} (MTU {}), decap {}, {} local endpoint(s), maps pinned in {}, API on {}{}{}{}",
        plan.config.node,
        plan.underlay.vtep,
        plan.underlay.name,
        plan.underlay.mtu,
        plan.config.decap,
        node.endpoints.count(),
        plan.pin_dir.display(),
        socket.display(),
        match &plan.config.cluster {
            Some(c) => format!(", gossip on {} (seeds {:?})", c.listen, c.seeds),
            None => String::new(),
        },
        match &plan.config.metrics_listen {
            Some(listen) => format!(", metrics on http://{listen}/metrics"),
            None => String::new(),
        },
        if node.adopted() {
            ", adopted the running dataplane"
        } else {
            ""
        },
    );
    for warning in plan.host_warnings() {
        warn!("{warning}");
    }
    println!("ready");
    std::io::stdout().flush().ok();
}
