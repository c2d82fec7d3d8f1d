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
    state_file::StateFile,
};
use crate::{
    api::{self, proto::Call},
    config::ClusterConfig,
    dataplane::pins,
    gossip::key::ClusterKey,
    host::{netlink::Netlink, plan},
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
    let key = config
        .cluster
        .as_ref()
        .map(|c| ClusterKey::load(&c.key_file))
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
    let runtime = state_file.load()?;
    let nl = Netlink::current()?;
    let plan = plan::plan(config, pin_dir, &nl).await?;

    let mut node = Node::new(plan, runtime, state_file);
    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let started = async {
        node.start(&nl, key.as_ref()).await?;
        api::server::serve(&socket, calls_tx)
    }
    .await;
    let server = match started {
        Ok(server) => server,
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
            _ = ticker.tick() => {
                node.reconcile_all(&nl).await;
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
    let _ = std::fs::remove_file(&socket);
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

/// Logs what is up and what to watch out for, and prints `ready`.
fn announce_ready(node: &Node, socket: &Path) {
    let plan = &node.plan;
    info!(
        "node {} up: VTEP {} on {} (MTU {}), decap {}, {} local endpoint(s), maps pinned in {}, API on {}{}{}",
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
