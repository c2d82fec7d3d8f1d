//! The seed scenario running: the seed topology, the scenario's containers, a
//! cluster file per node, and an agent per node once started. The topology,
//! interop, lifecycle and config suites build on it, and so does the demo.

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};

use crate::{
    agent::{Agent, keygen, overlay_binary},
    cluster::cli_at,
    cluster_file::{ClusterFile, Decap},
    cmd::{TempDir, unique_prefix},
    scenario::{ALL, C2, Container, Scenario},
    topology::{SeedTopology, TopologyOptions},
    traffic::{ping, tcp_transfer},
};

/// The seed topology with the scenario's containers, all torn down on drop.
pub struct Overlay {
    // Field order is drop order: agents stop before their namespaces go.
    pub agents: Vec<Agent>,
    pub topology: SeedTopology,
    /// Holds the cluster files (`node1.toml`, `node2.toml`).
    pub dir: TempDir,
    pub scenario: Scenario,
    /// The agent binary the nodes run.
    pub binary: PathBuf,
}

impl Overlay {
    /// Every container, static remotes, and both nodes running with `decap`.
    pub fn start(decap: Decap) -> Result<Overlay> {
        let mut overlay = Overlay::build(decap)?;
        for node in [1, 2] {
            overlay.start_agent(node)?;
        }
        Ok(overlay)
    }

    /// As [`Overlay::start`], on a wire of the caller's choice.
    pub fn start_on(decap: Decap, wire: TopologyOptions) -> Result<Overlay> {
        let mut overlay = Overlay::build_on(decap, &ALL, wire)?;
        for node in [1, 2] {
            overlay.start_agent(node)?;
        }
        Ok(overlay)
    }

    /// Every container and static remotes, with no agent running yet.
    pub fn build(decap: Decap) -> Result<Overlay> {
        Overlay::build_with(decap, &ALL)
    }

    /// Only `containers`, static remotes, with no agent running yet.
    pub fn build_with(decap: Decap, containers: &[Container]) -> Result<Overlay> {
        Overlay::build_on(decap, containers, checksummed_wire(decap))
    }

    fn build_on(decap: Decap, containers: &[Container], wire: TopologyOptions) -> Result<Overlay> {
        let prefix = unique_prefix(&format!("o{}", &decap.as_str()[..1]));
        let dir = TempDir::new(&prefix)?;
        Overlay::create_on(
            Scenario::new(&prefix, decap).with_containers(containers),
            dir,
            wire,
        )
    }

    /// c2 on node2 and nothing on node1, the nodes learning each other by
    /// gossip (a fresh cluster key), with no agent running yet: what a runtime
    /// attaches on node1 reaches c2. The runtime API and CNI suites run on it.
    pub fn gossip_with_c2(tag: &str) -> Result<Overlay> {
        let prefix = unique_prefix(tag);
        let dir = TempDir::new(&prefix)?;
        let key_file = dir.path().join("cluster.key");
        keygen(&key_file)?;
        let scenario = Scenario::new(&prefix, Decap::Tc)
            .with_containers(&[C2])
            .with_gossip(&key_file);
        Overlay::create(scenario, dir)
    }

    /// The topology, the containers of `scenario` and its cluster files in `dir`,
    /// with no agent running yet.
    pub fn create(scenario: Scenario, dir: TempDir) -> Result<Overlay> {
        let wire = checksummed_wire(scenario.decap);
        Overlay::create_on(scenario, dir, wire)
    }

    /// As [`Overlay::create`], on the wire and topology `wire`.
    pub fn create_on(scenario: Scenario, dir: TempDir, wire: TopologyOptions) -> Result<Overlay> {
        let mut topology = SeedTopology::create(scenario.names.prefix(), wire)?;
        for c in &scenario.containers {
            topology.container(c.name)?;
        }
        let overlay = Overlay {
            agents: Vec::new(),
            topology,
            dir,
            scenario,
            binary: overlay_binary()?,
        };
        for node in [1, 2] {
            overlay
                .node_file(node)
                .write(overlay.dir.path(), &format!("node{node}.toml"))?;
        }
        Ok(overlay)
    }

    pub fn prefix(&self) -> &str {
        self.scenario.names.prefix()
    }

    pub fn decap(&self) -> Decap {
        self.scenario.decap
    }

    /// A container's namespace.
    pub fn ns(&self, c: Container) -> String {
        self.scenario.names.container_ns(c.name)
    }

    pub fn node_ns(&self, node: u8) -> String {
        self.scenario.names.node_ns(node.into())
    }

    pub fn node_name(&self, node: u8) -> String {
        self.scenario.names.node_name(node.into())
    }

    pub fn pin_dir(&self, node: u8) -> PathBuf {
        self.scenario.names.pin_dir(node.into())
    }

    /// The cluster file `node`'s agent reads.
    pub fn config_path(&self, node: u8) -> PathBuf {
        self.dir.path().join(format!("node{node}.toml"))
    }

    /// What [`Overlay::create`] wrote to `node`'s cluster file.
    pub fn node_file(&self, node: u8) -> ClusterFile {
        self.scenario.node_file(node)
    }

    pub fn start_agent(&mut self, node: u8) -> Result<()> {
        self.start_agent_with(node, &[])
    }

    pub fn start_agent_with(&mut self, node: u8, extra: &[&str]) -> Result<()> {
        self.start_agent_with_env(node, extra, &[])
    }

    /// Starts `node`'s agent with `extra` arguments and `env` set (e.g. `RUST_LOG`).
    pub fn start_agent_with_env(
        &mut self,
        node: u8,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let agent = Agent::start_with_env(
            &self.node_ns(node),
            &self.binary,
            &self.config_path(node),
            &self.pin_dir(node),
            extra,
            env,
        )
        .with_context(|| format!("starting the agent of node{node}"))?;
        self.agents.push(agent);
        Ok(())
    }

    /// Runs `overlay ARGS` against `node`'s agent's API; its stdout.
    pub fn cli(&self, node: u8, args: &[&str]) -> Result<String> {
        cli_at(&self.scenario.names.socket(node.into()), args)
    }

    /// `overlay <table> --json` of a node, parsed.
    pub fn table(&self, node: u8, table: &str) -> Result<serde_json::Value> {
        let out = std::process::Command::new(&self.binary)
            .args([table, "--json", "--pin-dir"])
            .arg(self.pin_dir(node))
            .output()?;
        ensure!(
            out.status.success(),
            "overlay {table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A node's counter (packets), by name.
    pub fn counter(&self, node: u8, name: &str) -> Result<u64> {
        Ok(self.counter_with_bytes(node, name)?.0)
    }

    /// A node's counter as (packets, bytes).
    pub fn counter_with_bytes(&self, node: u8, name: &str) -> Result<(u64, u64)> {
        let stats = self.table(node, "stats")?;
        let row = stats
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["counter"] == name))
            .with_context(|| format!("no counter {name}"))?;
        Ok((
            row["packets"].as_u64().context("no packets")?,
            row["bytes"].as_u64().context("no bytes")?,
        ))
    }

    /// Every counter of a node that is not zero.
    pub fn nonzero_counters(&self, node: u8) -> Result<Vec<(String, u64)>> {
        let stats = self.table(node, "stats")?;
        Ok(stats
            .as_array()
            .context("stats is not a list")?
            .iter()
            // Counter rows only; the rows after them are the tables' fill.
            .filter(|r| r["counter"].is_string() && r["packets"].as_u64() != Some(0))
            .map(|r| {
                (
                    r["counter"].as_str().unwrap_or_default().to_owned(),
                    r["packets"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    }

    /// `count` pings from `a` to `b` and from `b` to `a`; every reply must come back.
    pub fn ping_both_ways(&self, a: Container, b: Container, count: u32) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let stats = ping(&self.ns(from), &to.ip.to_string(), count, &[])?;
            ensure!(
                stats.received == u64::from(count),
                "[{}] {} -> {}: {stats:?}",
                self.decap(),
                from.name,
                to.name
            );
        }
        Ok(())
    }

    /// `bytes` over TCP from `a` to `b` and from `b` to `a`, checked byte for byte.
    pub fn transfer_both_ways(&self, a: Container, b: Container, bytes: u64) -> Result<()> {
        for (client, server) in [(a, b), (b, a)] {
            let report = tcp_transfer(
                &self.ns(server),
                &server.ip.to_string(),
                &self.ns(client),
                bytes,
            )
            .with_context(|| format!("[{}] {} -> {}", self.decap(), client.name, server.name))?;
            eprintln!(
                "[{}] {} -> {}: {report:?}",
                self.decap(),
                client.name,
                server.name
            );
        }
        Ok(())
    }
}

/// XDP_REDIRECT cannot carry a veth's CHECKSUM_PARTIAL state, so for XDP decap the
/// virtual wire computes checksums on transmit, as a physical NIC does. TC decap
/// runs on the default veths, offloads and GSO included.
fn checksummed_wire(decap: Decap) -> TopologyOptions {
    TopologyOptions {
        wire_checksums: decap == Decap::Xdp,
        ..TopologyOptions::default()
    }
}
