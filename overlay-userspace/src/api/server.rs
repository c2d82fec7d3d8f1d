//! The agent's end of the socket: each connection's request goes to the agent's
//! loop, and its answer back.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{
    MAX_REQUEST,
    proto::{Call, Incoming, Response, StreamRequest},
    stream,
};
use crate::monitor::Monitor;

/// Binds the socket (replacing a stale one: the caller holds the node's lock, so
/// no live agent owns it) and forwards each request to `calls`, but monitors
/// and traces to `monitor`.
pub fn serve(
    socket: &Path,
    calls: mpsc::Sender<Call>,
    monitor: std::sync::Arc<Monitor>,
) -> Result<tokio::task::JoinHandle<()>> {
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
            let monitor = monitor.clone();
            tokio::spawn(async move {
                let _ = answer(stream, calls, &monitor).await;
            });
        }
    }))
}

async fn answer(
    stream: UnixStream,
    calls: mpsc::Sender<Call>,
    monitor: &std::sync::Arc<Monitor>,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let request = match Incoming::decode(&line) {
        Ok(Incoming::Stream(request)) => {
            let read = reader.into_inner().into_inner();
            return match request {
                StreamRequest::Monitor { filter } => {
                    stream::serve_monitor(monitor, &filter, read, write).await
                }
                StreamRequest::Trace { a, b, vni } => {
                    stream::serve_trace(monitor, (a, b, vni), read, write).await
                }
            };
        }
        Ok(Incoming::Call(request)) => Ok(request),
        Err(e) => Err(e),
    };
    let response = match request {
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
