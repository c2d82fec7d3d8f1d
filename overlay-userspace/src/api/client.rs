//! The command line's end of the socket: finding the agent and asking it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
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
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            api_error(
                ErrorCode::Unavailable,
                format!(
                    "no agent answers on {} ({e}); is `overlay agent` running for this node?",
                    socket.display()
                ),
            )
        })?;
        let (read, mut write) = stream.into_split();
        let mut text = serde_json::to_string(request)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
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
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        api_error(
            ErrorCode::Unavailable,
            format!("the agent did not answer within {timeout:?}"),
        )
    })?
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
