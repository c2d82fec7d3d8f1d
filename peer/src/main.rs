//! `overlay-peer`: cluster members for the scale benchmark. One process runs
//! `--peers` members on consecutive addresses from `--first-addr`, each joining
//! with the cluster key through the agent's own gossip module and announcing
//! its share of `--endpoints` endpoints behind its VTEP (its address).
//!
//! It prints JSON lines on stdout: `ready` once every peer has joined, then
//! what the commands on stdin (one per line) ask for:
//!
//! - `watch IP [N]`: each peer (or the first N) prints `seen` (with `at_ms`, Unix
//!   milliseconds) when an endpoint at IP shows in another member's record. A
//!   watcher reads its whole view on each gossip event (about 30 ms at 20,000
//!   endpoints, on the one thread all peers share), so few watchers keep
//!   the times close to the arrivals;
//! - `add PEER IP`: peer PEER announces one more endpoint, IP (`published`);
//! - `view`: `view` with the fewest and most endpoints any peer sees.
//!
//! End of input (or `quit`) makes every peer leave.

mod announce;
mod peer;

use std::{
    io::{BufRead as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use overlay_userspace::{
    config::{ClusterSection, DEFAULT_GOSSIP_INTERVAL_MS, DEFAULT_GOSSIP_MTU},
    gossip::key::Keyring,
    model::Subnet,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::{
    announce::Layout,
    peer::{Command, Peer, peer_addr},
};

#[derive(Parser)]
#[command(
    name = "overlay-peer",
    about = "Cluster members that announce endpoints, for benchmarks"
)]
struct Args {
    /// The cluster key file.
    #[arg(long)]
    key: PathBuf,
    /// Gossip seeds (repeatable).
    #[arg(long = "seed", required = true)]
    seeds: Vec<SocketAddr>,
    /// The first peer's address; the others follow it. They must be on this host.
    #[arg(long)]
    first_addr: Ipv4Addr,
    #[arg(long, default_value_t = 7946)]
    port: u16,
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Endpoints announced by all the peers together.
    #[arg(long, default_value_t = 0)]
    endpoints: usize,
    /// The network the endpoints are in, as the agents' files define it.
    #[arg(long)]
    network: String,
    #[arg(long)]
    vni: u32,
    #[arg(long)]
    subnet: Subnet,
    /// The first endpoint's host number in the subnet.
    #[arg(long, default_value_t = 10)]
    first_endpoint: u32,
    /// The agent's default.
    #[arg(long, default_value_t = DEFAULT_GOSSIP_INTERVAL_MS)]
    gossip_interval_ms: u64,
    #[arg(long, default_value = "overlay")]
    cluster_id: String,
    /// Peer i is named `<prefix><i>`.
    #[arg(long, default_value = "peer")]
    name_prefix: String,
}

enum Line {
    Watch(Ipv4Addr, Option<usize>),
    Add(usize, Ipv4Addr),
    View,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let layout = Layout {
        network: args.network.clone(),
        vni: args.vni,
        subnet: args.subnet,
        first: args.first_endpoint,
        total: args.endpoints,
        peers: args.peers,
    };
    layout.check()?;
    let keys = Keyring::load(&args.key)?;
    // One thread: the peers together take at most one core from the agents
    // they are measured against.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(&args, &layout, &keys))
}

async fn serve(args: &Args, layout: &Layout, keys: &Keyring) -> Result<()> {
    let mut peers = Vec::new();
    let mut tasks = Vec::new();
    for index in 0..args.peers {
        let addr = peer_addr(args.first_addr, args.port, index);
        let section = ClusterSection {
            listen: addr,
            advertise: addr,
            seeds: args.seeds.iter().copied().filter(|s| *s != addr).collect(),
            key_file: args.key.clone(),
            gossip_interval: Duration::from_millis(args.gossip_interval_ms),
            cluster_id: args.cluster_id.clone(),
            mtu: DEFAULT_GOSSIP_MTU,
        };
        let name = format!("{}{index}", args.name_prefix);
        let peer = Peer::join(index, &name, &section, keys.clone(), layout)
            .await
            .with_context(|| format!("peer {name} on {addr}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(peer.run(rx)));
        peers.push(tx);
    }
    report(&json!({"event": "ready", "peers": args.peers, "endpoints": args.endpoints}));

    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || read_commands(&lines_tx));
    while let Some(line) = lines.recv().await {
        match line {
            Line::Watch(ip, watchers) => {
                for peer in peers.iter().take(watchers.unwrap_or(usize::MAX)) {
                    let _ = peer.send(Command::Watch(ip));
                }
                report(&json!({"event": "watching", "ip": ip}));
            }
            Line::Add(index, ip) => match peers.get(index) {
                Some(peer) => {
                    let _ = peer.send(Command::Add(layout.endpoint(ip)));
                }
                None => report(&json!({"event": "error", "what": format!("no peer {index}")})),
            },
            Line::View => {
                let mut counts = Vec::new();
                for peer in &peers {
                    let (tx, rx) = oneshot::channel();
                    let _ = peer.send(Command::View(tx));
                    counts.push(rx.await.unwrap_or(0));
                }
                report(&json!({
                    "event": "view",
                    "min": counts.iter().min(),
                    "max": counts.iter().max(),
                }));
            }
        }
    }
    drop(peers);
    for task in tasks {
        task.await.context("a peer's task failed")?;
    }
    Ok(())
}

/// Reads stdin until its end or `quit`; a line that is no command is reported
/// and skipped.
fn read_commands(lines: &mpsc::UnboundedSender<Line>) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "quit" {
            break;
        }
        match parse(line) {
            Ok(command) => {
                if lines.send(command).is_err() {
                    break;
                }
            }
            Err(e) => report(&json!({"event": "error", "what": format!("{line:?}: {e:#}")})),
        }
    }
}

fn parse(line: &str) -> Result<Line> {
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok(match words.as_slice() {
        ["watch", ip] => Line::Watch(ip.parse()?, None),
        ["watch", ip, n] => Line::Watch(ip.parse()?, Some(n.parse()?)),
        ["add", peer, ip] => Line::Add(peer.parse()?, ip.parse()?),
        ["view"] => Line::View,
        _ => bail!("expected `watch IP [N]`, `add PEER IP`, `view` or `quit`"),
    })
}

/// One JSON line on stdout, flushed: the bench reads them as they come.
pub fn report(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
