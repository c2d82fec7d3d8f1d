//! Podman 4.3 with its CNI backend running containers on the overlay, end to
//! end on the seed topology: one Podman per node, `podman run --network
//! uber-net` through overlay-cni and the node's agent. Containers on the two
//! nodes reach each other (ping from inside, a checked TCP stream both ways),
//! a container reaches a host outside the overlay, masqueraded, and removing
//! a container withdraws its endpoint from the other node.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Capture, NODE1_VTEP, OUTSIDE_IP, Overlay, Podman, PodmanContainer, TempDir,
    cni::{DEBIAN_CNI_PLUGINS, cni_binary, conflist, overlay_plugin},
    keygen, ping,
    scenario::{Scenario, UBER_NET, docker_mac},
    tcp_transfer, unique_prefix, wait_until,
};
use serde_json::Value;

/// The seed topology with a host outside, both agents by gossip, uber-net
/// created at run time on node1, and a Podman on each node whose uber-net is
/// a configuration list with overlay-cni.
struct Bed {
    // Field order is drop order: Podman's containers go before the agents.
    podman: Vec<Podman>,
    overlay: Overlay,
    outside: String,
    _plugins: TempDir,
}

impl Bed {
    fn start() -> Result<Bed> {
        let prefix = unique_prefix("pd");
        let dir = TempDir::new(&prefix)?;
        let key_file = dir.path().join("cluster.key");
        keygen(&key_file)?;
        let scenario = Scenario::new(&prefix, overlay_tests::Decap::Tc)
            .with_containers(&[])
            .with_gossip(&key_file);
        let mut overlay = Overlay::create(scenario, dir)?;
        let outside = overlay.topology.outside_host()?.to_owned();
        for node in [1, 2] {
            overlay.start_agent(node)?;
        }
        overlay.cli(
            1,
            &[
                "network",
                "create",
                UBER_NET.name,
                "--subnet",
                UBER_NET.subnet,
                "--vni",
                &UBER_NET.vni.to_string(),
            ],
        )?;
        wait_until(Duration::from_secs(10), "uber-net on node2", || {
            Ok(overlay.cli(2, &["network", "ls"])?.contains(UBER_NET.name))
        })?;
        // Where a user puts the plugin: a CNI plugin directory of its own.
        let plugins = TempDir::new(&format!("{prefix}bin"))?;
        std::os::unix::fs::symlink(cni_binary()?, plugins.path().join("overlay-cni"))?;
        let mut podman = Vec::new();
        for node in [1, 2] {
            let p = Podman::start(
                &format!("{prefix}p{node}"),
                &overlay.node_ns(node),
                &[plugins.path(), Path::new(DEBIAN_CNI_PLUGINS)],
            )?;
            p.add_network(&conflist(
                "1.0.0",
                UBER_NET.name,
                &[overlay_plugin(
                    UBER_NET.name,
                    &overlay.scenario.names.socket(node.into()),
                )],
            ))?;
            podman.push(p);
        }
        Ok(Bed {
            podman,
            overlay,
            outside,
            _plugins: plugins,
        })
    }

    /// `podman run` on `node`; the container and its overlay address.
    fn run(&mut self, node: u8, name: &str) -> Result<(PodmanContainer, Ipv4Addr)> {
        let podman = &mut self.podman[usize::from(node) - 1];
        let container = podman
            .run(name, UBER_NET.name, &[])
            .with_context(|| format!("podman run {name} on node{node}"))?;
        let ip = podman.ip(name, UBER_NET.name)?;
        Ok((container, ip))
    }

    fn podman(&self, node: u8) -> &Podman {
        &self.podman[usize::from(node) - 1]
    }

    /// The attachment node's agent made for `container`.
    fn attachment(&self, node: u8, container: &PodmanContainer) -> Result<Option<Value>> {
        let list: Value =
            serde_json::from_str(&self.overlay.cli(node, &["endpoint", "ls", "--json"])?)?;
        Ok(list
            .as_array()
            .context("a list")?
            .iter()
            .find(|e| e["container_id"] == container.id.as_str())
            .cloned())
    }

    /// Whether node's FDB holds `mac` in uber-net.
    fn fdb_has(&self, node: u8, mac: &str) -> Result<bool> {
        Ok(self
            .overlay
            .table(node, "fdb")?
            .as_array()
            .context("a list")?
            .iter()
            .any(|row| row["vni"] == UBER_NET.vni && row["mac"] == mac))
    }
}

/// `ping -c count` from inside a Podman container (busybox's ping); how many
/// replies came back.
fn ping_inside(podman: &Podman, name: &str, dst: Ipv4Addr, count: u32) -> Result<u32> {
    let out = podman
        .podman(&[
            "exec",
            name,
            "ping",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            &dst.to_string(),
        ])
        .unwrap_or_default();
    Ok(out
        .lines()
        .find(|l| l.contains("packets received"))
        .and_then(|l| l.split(", ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or(0))
}

#[test]
fn podman_containers_on_two_nodes_reach_each_other() -> Result<()> {
    let mut bed = Bed::start()?;
    let (p1, ip1) = bed.run(1, "p1")?;
    let (p2, ip2) = bed.run(2, "p2")?;
    ensure!(ip1 != ip2, "two nodes, two addresses: {ip1} {ip2}");
    for (node, c, ip) in [(1, &p1, ip1), (2, &p2, ip2)] {
        let a = bed
            .attachment(node, c)?
            .with_context(|| format!("node{node}'s agent has no attachment for {}", c.name))?;
        ensure!(
            a["ip"] == ip.to_string() && a["mac"] == docker_mac(ip),
            "what Podman reports is what the agent made: {a}"
        );
        ensure!(
            a["netns"] == c.netns.display().to_string(),
            "in Podman's namespace: {a}"
        );
    }
    let found = wait_until(Duration::from_secs(10), "p1 -> p2", || {
        Ok(ping_inside(bed.podman(1), "p1", ip2, 1)? == 1)
    })?;
    eprintln!("p1 reached p2 {found:?} after both were running");
    ensure!(ping_inside(bed.podman(1), "p1", ip2, 3)? == 3, "p1 -> p2");
    ensure!(ping_inside(bed.podman(2), "p2", ip1, 3)? == 3, "p2 -> p1");
    for (client, server, server_ip) in [(&p1, &p2, ip2), (&p2, &p1, ip1)] {
        let report = tcp_transfer(
            &server.netns_name(),
            &server_ip.to_string(),
            &client.netns_name(),
            8 * 1024 * 1024,
        )
        .with_context(|| format!("{} -> {}", client.name, server.name))?;
        eprintln!("{} -> {}: {report:?}", client.name, server.name);
    }
    Ok(())
}

#[test]
fn removing_a_podman_container_withdraws_its_endpoint() -> Result<()> {
    let mut bed = Bed::start()?;
    let (p1, _) = bed.run(1, "p1")?;
    let (p2, ip2) = bed.run(2, "p2")?;
    let mac2 = docker_mac(ip2);
    wait_until(Duration::from_secs(10), "p2 in node1's FDB", || {
        bed.fdb_has(1, &mac2)
    })?;
    let host_end = bed.attachment(2, &p2)?.context("node2's attachment")?["host_ifname"]
        .as_str()
        .context("a host end")?
        .to_owned();
    let removed = Instant::now();
    bed.podman(2).rm("p2")?;
    let rm_took = removed.elapsed();
    let withdrawn = wait_until(Duration::from_secs(5), "p2 gone from node1's FDB", || {
        Ok(!bed.fdb_has(1, &mac2)?)
    })?;
    eprintln!("podman rm took {rm_took:?}; node1 withdrew p2 {withdrawn:?} after it returned");
    ensure!(bed.attachment(2, &p2)?.is_none(), "node2's agent forgot p2");
    ensure!(
        overlay_tests::ip(&format!(
            "-n {} link show {host_end}",
            bed.overlay.node_ns(2)
        ))
        .is_err(),
        "p2's veth is gone"
    );
    ensure!(!p2.netns.exists(), "Podman removed p2's namespace");
    ensure!(
        ping(&p1.netns_name(), &ip2.to_string(), 1, &[])?.received == 0,
        "p2's address answers no more"
    );
    Ok(())
}

#[test]
fn a_podman_container_reaches_a_host_outside_masqueraded() -> Result<()> {
    let mut bed = Bed::start()?;
    let (p1, _) = bed.run(1, "p1")?;
    let outside_ip: Ipv4Addr = OUTSIDE_IP.parse()?;
    let capture = Capture::start(&bed.outside, "eth0")?;
    ensure!(
        ping_inside(bed.podman(1), "p1", outside_ip, 3)? == 3,
        "p1 -> the outside host"
    );
    tcp_transfer(&bed.outside, OUTSIDE_IP, &p1.netns_name(), 4 * 1024 * 1024)
        .context("TCP from p1 to the outside host")?;
    let sources: BTreeSet<Ipv4Addr> = capture
        .stop()?
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00])
        .filter(|f| f[30..34] == outside_ip.octets())
        .map(|f| Ipv4Addr::new(f[26], f[27], f[28], f[29]))
        .collect();
    ensure!(
        sources == BTreeSet::from([NODE1_VTEP.parse()?]),
        "the outside host sees only node1's address: {sources:?}"
    );
    ensure!(
        bed.overlay.counter(1, "to_gateway")? > 0,
        "out through the gateway"
    );
    Ok(())
}
