//! The agent's end of the socket: each connection's request goes to the agent's
//! loop, and its answer back.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{
    MAX_REQUEST, REQUEST_DEADLINE,
    proto::{Call, ErrorCode, Incoming, Response, StreamRequest, api_error},
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
    let mut reader = BufReader::new(read);
    let request = match tokio::time::timeout(REQUEST_DEADLINE, request_line(&mut reader)).await {
        Ok(line) => line?.and_then(|line| {
            Incoming::decode(&line)
                .map_err(|e| api_error(ErrorCode::Invalid, format!("not a valid request: {e}")))
        }),
        Err(_) => Err(api_error(
            ErrorCode::Invalid,
            format!(
                "the request did not arrive within {REQUEST_DEADLINE:?}: send it whole, as one \
                 line"
            ),
        )),
    };
    let response = match request {
        Ok(Incoming::Stream(request)) => {
            let read = reader.into_inner();
            return match request {
                StreamRequest::Monitor { filter } => {
                    stream::serve_monitor(monitor, &filter, read, write).await
                }
                StreamRequest::Trace { a, b, vni } => {
                    stream::serve_trace(monitor, (a, b, vni), read, write).await
                }
            };
        }
        Ok(Incoming::Call(request)) => {
            let (tx, rx) = oneshot::channel();
            if calls.send((request, tx)).await.is_err() {
                Response::err(&anyhow::anyhow!("the agent is shutting down"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::err(&anyhow::anyhow!("the agent dropped the request"))
                })
            }
        }
        Err(e) => Response::err(&e),
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// The request line without its newline (a client may also end it by closing
/// its end), or why it is refused: longer than [`MAX_REQUEST`], not UTF-8.
/// The outer error is the connection's.
async fn request_line(
    reader: &mut (impl AsyncBufRead + Unpin),
) -> std::io::Result<Result<String, anyhow::Error>> {
    let mut line = Vec::new();
    // One byte past the limit tells a line at the limit from a longer one.
    (&mut *reader)
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_REQUEST {
        return Ok(Err(api_error(
            ErrorCode::Invalid,
            format!(
                "the request is longer than {MAX_REQUEST} bytes, the limit of one request line"
            ),
        )));
    }
    Ok(String::from_utf8(line).map_err(|_| {
        api_error(
            ErrorCode::Invalid,
            "not a valid request: the line is not UTF-8",
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &[u8]) -> Result<String, String> {
        let mut reader = input;
        request_line(&mut reader)
            .await
            .unwrap()
            .map_err(|e| format!("{e:#}"))
    }

    #[tokio::test]
    async fn a_line_is_read_up_to_the_limit() {
        assert_eq!(
            read(b"{\"op\":\"members\"}\nrest").await.unwrap(),
            r#"{"op":"members"}"#
        );
        // A client may end its request by closing its end instead.
        assert_eq!(read(b"{}").await.unwrap(), "{}");
        let at_limit = [vec![b' '; MAX_REQUEST], b"\n".to_vec()].concat();
        assert_eq!(read(&at_limit).await.unwrap().len(), MAX_REQUEST);
        let over = vec![b' '; MAX_REQUEST + 1];
        let e = read(&over).await.unwrap_err();
        assert!(e.contains("longer than 65536 bytes"), "{e}");
        let e = read(b"{\"op\":\"\xff\"}\n").await.unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }
}
