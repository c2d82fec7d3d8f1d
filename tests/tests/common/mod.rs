//! The scenario the topology, interop and lifecycle tests share: the seed's two
//! hosts behind a router, two overlay networks on one subnet (so only the VNI keeps
//! them apart), and an agent per host.
#![allow(dead_code)] // each test binary uses a different part of it

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result};
use overlay_tests::{
    Agent, SeedTopology, TempDir, TopologyOptions, overlay_binary, ping, tcp_transfer,
    unique_prefix, write_config,
};

pub use overlay_tests::{NODE1_VTEP, NODE2_VTEP};

/// One container of the scenario.
#[derive(Clone, Copy, Debug)]
pub struct Container {
    /// Short name; the namespace is `<prefix><name>`.
    pub name: &'static str,
    /// 1 or 2.
    pub node: u8,
    pub network: &'static str,
    pub ip: Ipv4Addr,
}

impl Container {
    pub fn mac(&self) -> String {
        overlay_tests::docker_mac(self.ip)
    }
}

/// uber-net (VNI 4097): c1 and c3 on node1, c2 on node2.
/// other-net (VNI 4098, same subnet): c4 on node1, c5 on node2.
pub const C1: Container = Container {
    name: "c1",
    node: 1,
    network: "uber-net",
    ip: Ipv4Addr::new(10, 0, 0, 3),
};
pub const C2: Container = Container {
    name: "c2",
    node: 2,
    network: "uber-net",
    ip: Ipv4Addr::new(10, 0, 0, 4),
};
pub const C3: Container = Container {
    name: "c3",
    node: 1,
    network: "uber-net",
    ip: Ipv4Addr::new(10, 0, 0, 5),
};
pub const C4: Container = Container {
    name: "c4",
    node: 1,
    network: "other-net",
    ip: Ipv4Addr::new(10, 0, 0, 13),
};
pub const C5: Container = Container {
    name: "c5",
    node: 2,
    network: "other-net",
    ip: Ipv4Addr::new(10, 0, 0, 14),
};
pub const ALL: [Container; 5] = [C1, C2, C3, C4, C5];

/// The seed topology with an agent on each node, all torn down on drop.
pub struct Overlay {
    // Field order is drop order: agents stop before their namespaces go.
    pub agents: Vec<Agent>,
    pub topology: SeedTopology,
    pub dir: TempDir,
    pub prefix: String,
    pub decap: &'static str,
}

impl Overlay {
    /// Both nodes run this dataplane with `decap` ("tc" or "xdp").
    pub fn start(decap: &'static str) -> Result<Overlay> {
        Overlay::start_on(decap, checksummed_wire(decap))
    }

    /// As [`Overlay::start`], on a wire of the caller's choice.
    pub fn start_on(decap: &'static str, wire: TopologyOptions) -> Result<Overlay> {
        let mut overlay = Overlay::build_on(decap, wire)?;
        for node in [1, 2] {
            overlay.start_agent(node)?;
        }
        Ok(overlay)
    }

    /// The topology, containers and config files, with no agent running yet.
    pub fn build(decap: &'static str) -> Result<Overlay> {
        Overlay::build_on(decap, checksummed_wire(decap))
    }

    fn build_on(decap: &'static str, wire: TopologyOptions) -> Result<Overlay> {
        let prefix = unique_prefix(&format!("o{}", &decap[..1]));
        let mut topology = SeedTopology::create(&prefix, wire)?;
        for c in ALL {
            topology.container(c.name)?;
        }
        let dir = TempDir::new(&prefix)?;
        let overlay = Overlay {
            agents: Vec::new(),
            topology,
            dir,
            prefix,
            decap,
        };
        for node in [1, 2] {
            write_config(
                overlay.dir.path(),
                &format!("node{node}.toml"),
                &overlay.node_config(node, &[]),
            )?;
        }
        Ok(overlay)
    }

    pub fn ns(&self, c: Container) -> String {
        format!("{}{}", self.prefix, c.name)
    }

    pub fn node_ns(&self, node: u8) -> String {
        format!("{}n{node}", self.prefix)
    }

    pub fn node_name(&self, node: u8) -> String {
        format!("{}-node{node}", self.prefix)
    }

    pub fn pin_dir(&self, node: u8) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/overlay/{}", self.node_name(node)))
    }

    pub fn config_path(&self, node: u8) -> PathBuf {
        self.dir.path().join(format!("node{node}.toml"))
    }

    /// The cluster file of `node`: its containers as endpoints, the others as
    /// remotes, plus `extra` lines at the top level.
    pub fn node_config(&self, node: u8, extra: &[&str]) -> String {
        let mut s = format!(
            "node = \"{}\"\nunderlay = \"eth0\"\ndecap = \"{}\"\n{}\n",
            self.node_name(node),
            self.decap,
            extra.join("\n")
        );
        s += "[[network]]\nname = \"uber-net\"\nvni = 4097\nsubnet = \"10.0.0.0/24\"\n";
        s += "[[network]]\nname = \"other-net\"\nvni = 4098\nsubnet = \"10.0.0.0/24\"\n";
        for c in ALL {
            if c.node == node {
                s += &format!(
                    "[[endpoint]]\nnetwork = \"{}\"\nnetns = \"{}\"\nip = \"{}\"\n",
                    c.network,
                    self.ns(c),
                    c.ip
                );
            } else {
                let vtep = if c.node == 1 { NODE1_VTEP } else { NODE2_VTEP };
                s += &format!(
                    "[[remote]]\nnetwork = \"{}\"\nip = \"{}\"\nmac = \"{}\"\nvtep = \"{vtep}\"\n",
                    c.network,
                    c.ip,
                    c.mac()
                );
            }
        }
        s
    }

    pub fn start_agent(&mut self, node: u8) -> Result<()> {
        self.start_agent_with(node, &[])
    }

    pub fn start_agent_with(&mut self, node: u8, extra: &[&str]) -> Result<()> {
        let agent = Agent::start(
            &self.node_ns(node),
            &overlay_binary()?,
            &self.config_path(node),
            &self.pin_dir(node),
            extra,
        )
        .with_context(|| format!("starting the agent of node{node}"))?;
        self.agents.push(agent);
        Ok(())
    }

    /// `overlay <table> --json` of a node, parsed.
    pub fn table(&self, node: u8, table: &str) -> Result<serde_json::Value> {
        let out = std::process::Command::new(overlay_binary()?)
            .args([table, "--json", "--pin-dir"])
            .arg(self.pin_dir(node))
            .output()?;
        anyhow::ensure!(
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
            .filter(|r| r["packets"].as_u64() != Some(0))
            .map(|r| {
                (
                    r["counter"].as_str().unwrap_or_default().to_owned(),
                    r["packets"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    }
}

/// XDP_REDIRECT cannot carry a veth's CHECKSUM_PARTIAL state, so for XDP decap the
/// virtual wire computes checksums on transmit, as a physical NIC does. TC decap
/// runs on the default veths, offloads and GSO included.
pub fn checksummed_wire(decap: &str) -> TopologyOptions {
    TopologyOptions {
        wire_checksums: decap == "xdp",
        ..Default::default()
    }
}

impl Overlay {
    /// `count` pings from `a` to `b` and from `b` to `a`; every reply must come back.
    pub fn ping_both_ways(&self, a: Container, b: Container, count: u32) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let stats = ping(&self.ns(from), &to.ip.to_string(), count, &[])?;
            anyhow::ensure!(
                stats.received == u64::from(count),
                "[{}] {} -> {}: {stats:?}",
                self.decap,
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
            .with_context(|| format!("[{}] {} -> {}", self.decap, client.name, server.name))?;
            eprintln!(
                "[{}] {} -> {}: {report:?}",
                self.decap, client.name, server.name
            );
        }
        Ok(())
    }
}

/// The cls_bpf filters (netlink TC attachments, as before 6.6) in namespace
/// `ns`, as `bpftool net show` lists them: one per interface and direction.
/// A newer bpftool lists TCX links there too; those are left out.
pub fn netlink_tc_filters(ns: &str) -> Result<Vec<serde_json::Value>> {
    let out = overlay_tests::sh(&format!("ip netns exec {ns} bpftool -j net show"))?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["tc"].as_array())
        .flatten()
        .filter(|f| f["kind"].as_str().is_some_and(|k| k.starts_with("clsact")))
        .cloned()
        .collect())
}
