//! The command line's end of the socket: finding the agent and asking it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::{
    DEFAULT_RUN_DIR, default_socket,
    proto::{ErrorCode, Request, Response, api_error},
};

/// Sends one request to the agent behind `socket` and returns its data. Every
/// failure carries an [`ApiError`] with its code: what the agent answered, or
/// [`ErrorCode::Unavailable`] when no agent answers.
pub async fn call(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let exchange = async {
        let (read, mut write) = connect(socket).await?.into_split();
        send(&mut write, request).await?;
        answer(&mut BufReader::new(read)).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        api_error(
            ErrorCode::Unavailable,
            format!("the agent did not answer within {timeout:?}"),
        )
    })?
}

/// Connects to the agent behind `socket`, or says that none answers
/// ([`ErrorCode::Unavailable`]).
pub async fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).await.map_err(|e| {
        api_error(
            ErrorCode::Unavailable,
            format!(
                "no agent answers on {} ({e}); is `overlay agent` running for this node?",
                socket.display()
            ),
        )
    })
}

/// Writes `request` as one line.
pub async fn send(write: &mut OwnedWriteHalf, request: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Reads the agent's answer line: its data, or its error with its code.
pub async fn answer(read: &mut BufReader<OwnedReadHalf>) -> Result<serde_json::Value> {
    let mut line = String::new();
    read.read_line(&mut line).await?;
    if line.is_empty() {
        return Err(api_error(
            ErrorCode::Unavailable,
            "the agent closed the connection without answering",
        ));
    }
    let response: Response =
        serde_json::from_str(&line).context("the agent's answer is not valid")?;
    match response.error {
        Some(e) => Err(api_error(response.code.unwrap_or(ErrorCode::Failed), e)),
        None => Ok(response.data),
    }
}

/// The socket a command talks to: `--socket`, else the node's default, else the
/// only agent socket in the run directory. When it cannot pick one, the error
/// carries [`ErrorCode::Unavailable`] (none there) or [`ErrorCode::Invalid`]
/// (several).
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
        [] => Err(api_error(
            ErrorCode::Unavailable,
            format!(
                "no agent socket in {DEFAULT_RUN_DIR}; is `overlay agent` running? (or name its socket: --node/--socket, or `socket` in a CNI configuration)"
            ),
        )),
        many => Err(api_error(
            ErrorCode::Invalid,
            format!(
                "several agents run here ({}); pick one with --node or --socket (`socket` in a CNI configuration)",
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
