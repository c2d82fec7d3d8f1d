//! `overlay monitor` and `overlay trace`: the command line's end of the
//! agent's event stream.

use std::io::Write as _;

use anyhow::{Result, bail};
use overlay_common::MONITOR_EVENTS_PER_SEC;

use super::args::{MonitorArgs, TraceArgs};
use crate::{
    api::{client, proto::StreamRequest, stream::Stream},
    monitor::{MonitorMessage, record::Filter},
};

/// Prints the drops the agent relays until Ctrl-C, `--count` drops, or the
/// agent stops.
pub async fn monitor(args: &MonitorArgs) -> Result<()> {
    let socket = client::resolve_socket(args.api.node.as_deref(), args.api.socket.clone())?;
    let request = StreamRequest::Monitor {
        filter: Filter {
            reasons: args.reason.clone(),
            vni: args.vni,
            ips: args.ip.clone(),
        },
    };
    let (mut stream, _) = Stream::open(&socket, &request).await?;
    // On stderr, so that stdout is only drops (and JSON with --json).
    eprintln!(
        "listening for drops on {} (Ctrl-C to stop)",
        socket.display()
    );
    let mut shown = 0;
    let mut out = std::io::stdout().lock();
    while args.count.is_none_or(|n| shown < n) {
        let message: MonitorMessage = tokio::select! {
            m = stream.next() => match m? {
                Some(m) => m,
                None => bail!("the agent closed the connection (stopped?)"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        if let MonitorMessage::Drop(_) = message {
            shown += 1;
        }
        if args.api.json {
            writeln!(out, "{}", serde_json::to_string(&message)?)?;
        } else {
            match &message {
                MonitorMessage::Drop(record) => writeln!(out, "{record}")?,
                MonitorMessage::Missed { rate_limited, lost } => writeln!(
                    out,
                    "... {rate_limited} drops held back by the programs' limit \
                     ({MONITOR_EVENTS_PER_SEC}/s per CPU), {lost} lost (read too slowly)"
                )?,
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// Holds a traced flow until Ctrl-C or the agent stops.
pub async fn trace(args: &TraceArgs) -> Result<()> {
    let socket = client::resolve_socket(args.api.node.as_deref(), args.api.socket.clone())?;
    let request = StreamRequest::Trace {
        a: args.a,
        b: args.b,
        vni: args.vni,
    };
    let (mut stream, data) = Stream::open(&socket, &request).await?;
    let flow = data["tracing"].as_str().unwrap_or_default().to_owned();
    if args.api.json {
        println!("{data}");
    } else {
        println!(
            "tracing {flow}: each packet's decisions go to the agent's log (target overlay_ebpf, debug); Ctrl-C stops"
        );
    }
    std::io::stdout().flush()?;
    tokio::select! {
        _ = stream.next::<serde_json::Value>() => bail!("the agent closed the connection (stopped?)"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
