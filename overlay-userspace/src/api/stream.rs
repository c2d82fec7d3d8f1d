//! The requests whose connection stays open: a monitor's, which receives a
//! JSON line per drop after the first answer, and a trace's, which holds the
//! traced flow. Either ends when the client closes its end.

use std::{net::Ipv4Addr, sync::Arc};

use anyhow::Result;
use overlay_common::TraceFlow;
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::broadcast::error::RecvError,
};

use super::{
    client,
    proto::{Response, StreamRequest},
};
use crate::{
    dataplane::logs,
    monitor::{Monitor, MonitorMessage, describe, record::Filter},
};

/// The agent's end of a monitor: every drop that matches `filter`, until the
/// client goes.
pub async fn serve_monitor(
    monitor: &Arc<Monitor>,
    filter: &Filter,
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
) -> Result<()> {
    let mut subscription = monitor.subscribe();
    line(
        &mut write,
        &Response::ok(serde_json::json!({ "listening": true })),
    )
    .await?;
    let mut byte = [0u8; 1];
    loop {
        let message = tokio::select! {
            // The client sends nothing more: this returns when it is gone.
            _ = read.read(&mut byte) => return Ok(()),
            m = subscription.messages.recv() => m,
        };
        match message {
            Ok(m) => {
                if let MonitorMessage::Drop(r) = &*m
                    && !filter.matches(r)
                {
                    continue;
                }
                line(&mut write, &*m).await?;
            }
            Err(RecvError::Lagged(n)) => {
                let missed = MonitorMessage::Missed {
                    rate_limited: 0,
                    lost: n,
                };
                line(&mut write, &missed).await?;
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// The agent's end of a trace: the flow is traced until the client goes.
pub async fn serve_trace(
    monitor: &Arc<Monitor>,
    request: (Ipv4Addr, Option<Ipv4Addr>, Option<u32>),
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
) -> Result<()> {
    let (a, b, vni) = request;
    let flow = TraceFlow {
        vni: vni.unwrap_or(0),
        a: a.octets(),
        b: b.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
    };
    if !logs::ebpf_debug_enabled() {
        let e = anyhow::anyhow!(
            "the agent's log hides the programs' debug records, where the trace goes: start it with \
             RUST_LOG=info,{}=debug",
            logs::EBPF_LOG_TARGET
        );
        return line(&mut write, &Response::err(&e)).await;
    }
    let tracing = match monitor.trace(flow) {
        Ok(tracing) => tracing,
        Err(e) => return line(&mut write, &Response::err(&e)).await,
    };
    log::info!("tracing {} for an `overlay trace`", describe(&flow));
    line(
        &mut write,
        &Response::ok(serde_json::json!({ "tracing": describe(&flow) })),
    )
    .await?;
    let mut byte = [0u8; 1];
    let _ = read.read(&mut byte).await;
    drop(tracing);
    log::info!("stopped tracing {}", describe(&flow));
    Ok(())
}

async fn line(write: &mut OwnedWriteHalf, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// The command line's end: the agent's first answer, then its lines.
pub struct Stream {
    lines: Lines<BufReader<OwnedReadHalf>>,
    /// Held open: closing it tells the agent that this client is gone.
    _write: OwnedWriteHalf,
}

impl Stream {
    /// Sends `request` to the agent behind `socket`; the stream and the data
    /// of its first answer, or its error.
    pub async fn open(
        socket: &std::path::Path,
        request: &StreamRequest,
    ) -> Result<(Stream, serde_json::Value)> {
        let (read, mut write) = client::connect(socket).await?.into_split();
        client::send(&mut write, request).await?;
        let mut read = BufReader::new(read);
        let data = client::answer(&mut read).await?;
        Ok((
            Stream {
                lines: read.lines(),
                _write: write,
            },
            data,
        ))
    }

    /// The next line, parsed; `None` once the agent has closed the connection.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.lines.next_line().await? {
            Some(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("unexpected line from the agent ({e}): {text}")
            })?)),
            None => Ok(None),
        }
    }
}
