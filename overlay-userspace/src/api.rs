//! The agent's local API: one JSON request and one JSON response per connection,
//! each a line, over a unix socket only root can open.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{gossip::transport::TransportCounts, membership::Member};

pub const DEFAULT_RUN_DIR: &str = "/run/overlay";
const MAX_REQUEST: usize = 64 * 1024;

pub fn default_socket(node: &str) -> PathBuf {
    Path::new(DEFAULT_RUN_DIR).join(format!("{node}.sock"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    NetworkCreate {
        name: String,
        vni: u32,
        subnet: String,
    },
    NetworkLs,
    NetworkRm {
        name: String,
    },
    EndpointAdd {
        network: String,
        netns: String,
        ip: Option<Ipv4Addr>,
        mac: Option<String>,
    },
    EndpointRm {
        network: String,
        netns: String,
    },
    EndpointLs,
    Members,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Response {
        Response {
            error: None,
            data: serde_json::to_value(data).expect("API types serialize"),
        }
    }
    pub fn err(e: &anyhow::Error) -> Response {
        Response {
            error: Some(format!("{e:#}")),
            data: serde_json::Value::Null,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub origin: String,
    pub from_config: bool,
    pub endpoints: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkList {
    pub networks: Vec<NetworkInfo>,
    pub conflicts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub node: String,
    /// Local endpoints only.
    pub netns: Option<String>,
    pub host_ifname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    pub node: String,
    pub gossip: bool,
    pub members: Vec<Member>,
    pub transport: Option<TransportCounts>,
    pub conflicts: Vec<String>,
}

/// A request on its way to the agent, with where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// Binds the socket (replacing a stale one: the caller holds the node's lock, so
/// no live agent owns it) and forwards each request to `calls`.
pub fn serve(socket: &Path, calls: mpsc::Sender<Call>) -> Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let _ = answer(stream, calls).await;
            });
        }
    }))
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<Call>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if calls.send((request, tx)).await.is_err() {
                Response::err(&anyhow::anyhow!("the agent is shutting down"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::err(&anyhow::anyhow!("the agent dropped the request"))
                })
            }
        }
        Err(e) => Response::err(&anyhow::anyhow!("not a valid request: {e}")),
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Sends one request to the agent behind `socket` and returns its data.
pub async fn call(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let exchange = async {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            anyhow::anyhow!(
                "no agent answers on {} ({e}); is `overlay agent` running for this node?",
                socket.display()
            )
        })?;
        let (read, mut write) = stream.into_split();
        let mut text = serde_json::to_string(request)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        if line.is_empty() {
            bail!("the agent closed the connection without answering");
        }
        let response: Response =
            serde_json::from_str(&line).context("the agent's answer is not valid")?;
        match response.error {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(response.data),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the agent did not answer within {timeout:?}"))?
}

/// The socket a command talks to: `--socket`, else the node's default, else the
/// only agent socket in the run directory.
pub fn resolve_socket(node: Option<&str>, socket: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    if let Some(n) = node {
        return Ok(default_socket(n));
    }
    let sockets: Vec<PathBuf> = std::fs::read_dir(DEFAULT_RUN_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match sockets.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no agent socket in {DEFAULT_RUN_DIR}; is `overlay agent` running? (or pass --node/--socket)"
        ),
        many => bail!(
            "several agents run here ({}); pick one with --node or --socket",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
