//! Cluster members without a dataplane, for tests and benchmarks at scale: the
//! `overlay-peer` tool (crate `peer`) runs many of them in one process, each
//! joining with the cluster key and announcing endpoints behind its VTEP.
//! [`ScaleBed`] puts real agents and one such process on one switch.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{
    agent::{Agent, StderrLog, built_beside_overlay, overlay_binary, terminate, wait_for},
    cluster::{Cluster, node_ip},
    cluster_file::NetworkSection,
    cmd::ip,
    netns::netns_path,
    prometheus::http_get,
    scale::scaled,
    scenario::{UNDERLAY, gossip_addr},
};

/// `overlay-peer`, built next to `overlay`.
pub fn peer_binary() -> Result<PathBuf> {
    built_beside_overlay("overlay-peer")
}

/// What one `overlay-peer` process runs.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub key_file: PathBuf,
    pub seeds: Vec<SocketAddr>,
    pub first_addr: Ipv4Addr,
    pub peers: usize,
    /// All the peers' endpoints together.
    pub endpoints: usize,
    pub network: String,
    pub vni: u32,
    pub subnet: String,
}

/// A running `overlay-peer` process; dropping it makes the peers leave, and
/// kills the process if they do not within 5 s.
pub struct Peers {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    stderr: StderrLog,
}

impl Peers {
    /// Starts the peers in namespace `ns` and waits until every one has joined.
    pub fn start(ns: &str, spec: &PeerSpec) -> Result<Peers> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns_path(ns).display()))
            .arg(peer_binary()?)
            .arg("--key")
            .arg(&spec.key_file)
            .args(["--first-addr", &spec.first_addr.to_string()])
            .args(["--peers", &spec.peers.to_string()])
            .args(["--endpoints", &spec.endpoints.to_string()])
            .args(["--network", &spec.network])
            .args(["--vni", &spec.vni.to_string()])
            .args(["--subnet", &spec.subnet]);
        for seed in &spec.seeds {
            cmd.args(["--seed", &seed.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning overlay-peer")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && tx.send(event).is_err()
                {
                    break;
                }
            }
        });
        let mut peers = Peers {
            stderr: StderrLog::collect(&mut child),
            stdin: child.stdin.take(),
            child: Some(child),
            events,
        };
        peers.next("ready", scaled(Duration::from_secs(30)))?;
        Ok(peers)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the peers' input is closed")?;
        writeln!(stdin, "{line}").context("writing to overlay-peer")?;
        stdin.flush()?;
        Ok(())
    }

    /// The next event named `name` (others before it are skipped), within `timeout`.
    pub fn next(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if event["event"] == "error" => bail!("overlay-peer: {event}"),
                Ok(event) if event["event"] == name => return Ok(event),
                Ok(_) => {}
                Err(_) => bail!(
                    "overlay-peer: no {name:?} within {timeout:?}; its stderr:\n{}",
                    self.stderr.so_far()
                ),
            }
        }
    }

    /// The first `watchers` peers report when an endpoint at `ip` shows in
    /// another's record.
    pub fn watch(&mut self, ip: Ipv4Addr, watchers: usize) -> Result<()> {
        self.send(&format!("watch {ip} {watchers}"))?;
        self.next("watching", scaled(Duration::from_secs(60)))?;
        Ok(())
    }

    /// Peer `peer` announces one more endpoint; when it did, in Unix ms.
    pub fn add(&mut self, peer: usize, ip: Ipv4Addr) -> Result<u64> {
        self.send(&format!("add {peer} {ip}"))?;
        let event = self.next("published", scaled(Duration::from_secs(60)))?;
        event["at_ms"].as_u64().context("published without at_ms")
    }

    /// When each of `n` peers saw `ip` (Unix ms), as they report it, within `timeout`.
    pub fn seen(&mut self, ip: Ipv4Addr, n: usize, timeout: Duration) -> Result<Vec<u64>> {
        let deadline = Instant::now() + timeout;
        let want = ip.to_string();
        let mut at = Vec::new();
        while at.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .next("seen", left)
                .with_context(|| format!("{} of {n} peers saw {ip}", at.len()))?;
            if event["ip"] == want.as_str() {
                at.push(event["at_ms"].as_u64().context("seen without at_ms")?);
            }
        }
        Ok(at)
    }

    /// The fewest and the most endpoints any peer sees announced.
    pub fn view(&mut self) -> Result<(u64, u64)> {
        self.send("view")?;
        let event = self.next("view", scaled(Duration::from_secs(60)))?;
        Ok((
            event["min"].as_u64().context("view without min")?,
            event["max"].as_u64().context("view without max")?,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take()
            && !matches!(wait_for(&mut child, Duration::from_secs(5)), Ok(Some(_)))
        {
            let _ = terminate(&mut child, libc::SIGKILL);
        }
    }
}

/// The network the scale bed's endpoints are in: room for 65,000.
pub const SCALE_NETWORK: &str = "scale";
pub const SCALE_VNI: u32 = 4200;
pub const SCALE_SUBNET: &str = "10.200.0.0/16";
/// Where each agent serves its metrics, in its own namespace.
const METRICS_PORT: u16 = 9464;
/// The peers' addresses start here, on the last host of the switch.
const FIRST_PEER_HOST: u8 = 100;

/// `agents` hosts for real agents (1..=agents) and one more, holding the peers'
/// addresses, on one switch. Agents and peers all seed from the first peer, so
/// an agent can join (or come back) at any time.
pub struct ScaleBed {
    // Field order is drop order: the peers leave before the cluster goes.
    pub peers: Option<Peers>,
    pub cluster: Cluster,
    pub agents: usize,
}

impl ScaleBed {
    pub fn create(prefix: &str, agents: usize) -> Result<ScaleBed> {
        let cluster = Cluster::create(prefix, agents + 1)?;
        Ok(ScaleBed {
            peers: None,
            cluster,
            agents,
        })
    }

    fn peer_host(&self) -> usize {
        self.agents + 1
    }

    pub fn first_peer_addr() -> Ipv4Addr {
        Ipv4Addr::new(172, 30, 0, FIRST_PEER_HOST)
    }

    /// Starts `peers` peers announcing `endpoints` endpoints together.
    pub fn start_peers(&mut self, peers: usize, endpoints: usize) -> Result<&mut Peers> {
        let ns = self.cluster.host_ns(self.peer_host()).to_owned();
        let first = Self::first_peer_addr();
        ensure!(
            usize::from(FIRST_PEER_HOST) + peers <= 250,
            "{peers} peers do not fit the /24"
        );
        for i in 0..peers {
            let addr = Ipv4Addr::from(u32::from(first) + u32::try_from(i)?);
            ip(&format!("-n {ns} addr add {addr}/24 dev {UNDERLAY}"))?;
        }
        let spec = PeerSpec {
            key_file: self.cluster.key_file.clone(),
            seeds: vec![gossip_addr(first)],
            first_addr: first,
            peers,
            endpoints,
            network: SCALE_NETWORK.into(),
            vni: SCALE_VNI,
            subnet: SCALE_SUBNET.into(),
        };
        Ok(self.peers.insert(Peers::start(&ns, &spec)?))
    }

    pub fn peers(&mut self) -> Result<&mut Peers> {
        self.peers.as_mut().context("no peers started")
    }

    /// Starts the agent of host `i`, with the scale network, metrics, and
    /// `extra` arguments.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) -> Result<&Agent> {
        self.start_agent_binary(i, &overlay_binary()?, extra)
    }

    /// [`ScaleBed::start_agent`] with another build of the agent.
    pub fn start_agent_binary(
        &mut self,
        i: usize,
        binary: &Path,
        extra: &[&str],
    ) -> Result<&Agent> {
        let mut file = self.cluster.node_file(i);
        if let Some(section) = file.cluster.as_mut() {
            section.seeds = vec![gossip_addr(Self::first_peer_addr())];
        }
        file.metrics_listen = Some(SocketAddr::from((node_ip(i), METRICS_PORT)));
        file.networks = vec![NetworkSection::new(SCALE_NETWORK, SCALE_VNI, SCALE_SUBNET)];
        self.cluster.start_agent_binary(i, &file, binary, extra)
    }

    /// Host `i`'s agent's metrics, as scraped now.
    pub fn metrics(&self, i: usize) -> Result<String> {
        let url = format!("http://{}:{METRICS_PORT}/metrics", node_ip(i));
        let (status, body) = http_get(self.cluster.host_ns(i), &url)?;
        ensure!(status == 200, "{url}: {status}: {body}");
        Ok(body)
    }

    /// The remote endpoints host `i`'s agent has in its tables, and the FDB's entries.
    pub fn remote_endpoints(&self, i: usize) -> Result<(u64, u64)> {
        let body = self.metrics(i)?;
        let remote = sample(
            &body,
            &format!("overlay_endpoints{{network=\"{SCALE_NETWORK}\",location=\"remote\"}}"),
        )
        .unwrap_or(0.0);
        let fdb = sample(&body, "overlay_map_entries{map=\"FDB\"}").unwrap_or(0.0);
        Ok((remote as u64, fdb as u64))
    }
}

/// The value of the series `series` (name and labels, exactly as written) in
/// an OpenMetrics text.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
