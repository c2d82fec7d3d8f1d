//! Docker on the overlay, as its users run it: `docker network create -d
//! overlay-ebpf --ipam-driver overlay-ebpf` on one node makes the network on
//! every node, `docker run --network` joins containers that reach each other
//! across nodes (and Podman's, which join it by name through overlay-cni)
//! and the world outside, `-p` publishes, `docker rm` withdraws
//! a container everywhere, `network rm` removes the network everywhere,
//! restarts of the agent and of dockerd keep containers connected, and
//! refused options are named and leave nothing behind. Each node runs a real
//! dockerd in its namespace (the test bed's `Dockerd`, default iptables), and
//! its agent serves the drivers. Last, the benchmark's swarm bed: Docker's own
//! overlay, which users would pick instead, carries containers of the
//! benchmark's iperf3 image.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use overlay_tests::{
    Capture, DockerContainer, DockerOverlay, DockerSwarm, DockerdOptions, IPERF3_IMAGE, NODE1_VTEP,
    OUTSIDE_IP, Podman, SeedTopology, TopologyOptions, VXLAN_PORT, cli_at, is_vxlan, ping, sh,
    tcp_transfer, tcp_transfer_via, unique_prefix, wait_until,
};

const NET: &str = "uber-net";
const SUBNET: &str = "10.0.9.0/24";

fn started() -> Result<DockerOverlay> {
    DockerOverlay::start(&DockerdOptions::default(), &[])
}

/// `overlay ARGS --json` against `node`'s agent, parsed.
fn agent_json(d: &DockerOverlay, node: u8, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli_at(&d.overlay.scenario.names.socket(node.into()), &all)?;
    Ok(serde_json::from_str(&out)?)
}

/// The names of the networks `node`'s agent knows.
fn agent_networks(d: &DockerOverlay, node: u8) -> Result<Vec<serde_json::Value>> {
    let list = agent_json(d, node, &["network", "ls"])?;
    Ok(list["networks"]
        .as_array()
        .context("network ls lists networks")?
        .clone())
}

fn agent_network(d: &DockerOverlay, node: u8, name: &str) -> Result<Option<serde_json::Value>> {
    Ok(agent_networks(d, node)?
        .into_iter()
        .find(|n| n["name"] == name))
}

/// Whether `node`'s FDB holds the MAC `mac`, and its NEIGH the address `ip`.
fn in_tables(d: &DockerOverlay, node: u8, c: &DockerContainer) -> Result<(bool, bool)> {
    let fdb = d.overlay.table(node, "fdb")?;
    let neigh = d.overlay.table(node, "neigh")?;
    let has = |table: &serde_json::Value, what: &str| {
        table
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r.to_string().contains(what)))
    };
    Ok((has(&fdb, &c.mac), has(&neigh, &format!("\"{}\"", c.ip))))
}

fn ping_both_ways(d: &DockerOverlay, a: &DockerContainer, b: &DockerContainer) -> Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        let out = d.exec(from, &["ping", "-c", "3", "-W", "2", &to.ip.to_string()])?;
        ensure!(
            out.contains("3 packets received"),
            "{} -> {}: {out}",
            from.name,
            to.name
        );
    }
    Ok(())
}

fn mac_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[test]
fn a_network_made_on_one_node_carries_containers_of_both() -> Result<()> {
    started()?.check(|d| {
        let begun = Instant::now();
        d.create_network(1, NET, SUBNET, &[])?;
        let created = begun.elapsed();
        let appeared = d.wait_network(2, NET, true, Duration::from_secs(10))?;
        eprintln!(
            "network create on node1 took {created:?}; in node2's dockerd {appeared:?} after it returned"
        );
        let info = agent_network(d, 2, NET)?.context("node2's agent has the network")?;
        ensure!(info["subnet"] == SUBNET, "{info}");

        let c1 = d.run(1, "c1", NET, &[])?;
        let c2 = d.run(2, "c2", NET, &[])?;
        // Each node allocates in address blocks of its own.
        ensure!(
            c1.ip.octets()[3] / 16 != c2.ip.octets()[3] / 16,
            "both addresses in one block: {} {}",
            c1.ip,
            c2.ip
        );
        for c in [&c1, &c2] {
            ensure!(c.mac == mac_of(c.ip), "{}'s MAC {}", c.name, c.mac);
            let mtu = d.exec(c, &["cat", "/sys/class/net/eth0/mtu"])?;
            ensure!(mtu.trim() == "1450", "{}'s MTU: {mtu}", c.name);
            let routes = d.exec(c, &["ip", "route"])?;
            ensure!(
                routes.contains("default via 10.0.9.1 dev eth0"),
                "{}'s routes: {routes}",
                c.name
            );
        }
        ping_both_ways(d, &c1, &c2)?;
        for (server, client) in [(&c1, &c2), (&c2, &c1)] {
            let report =
                tcp_transfer(&server.netns, &server.ip.to_string(), &client.netns, 8 << 20)
                    .with_context(|| format!("{} -> {}", client.name, server.name))?;
            eprintln!("{} -> {}: {report:?}", client.name, server.name);
        }
        ensure!(
            d.overlay.counter(1, "encap")? > 0 && d.overlay.counter(2, "decap")? > 0,
            "the dataplane carried it"
        );
        Ok(())
    })
}

/// A Docker network is the cluster's network under its name, for every
/// runtime: Podman on node2 joins the uber-net made with `docker network
/// create` on node1 by that name, through overlay-cni and node2's agent.
#[test]
fn a_podman_container_and_a_docker_container_reach_each_other() -> Result<()> {
    let mut d = started()?;
    // Dropped before the overlay: its containers go (CNI DEL) while the
    // agents still answer.
    let mut podman = Podman::on_overlay(&d.overlay, 2, NET)?;
    d.check(|d| {
        d.create_network(1, NET, SUBNET, &[])?;
        wait_until(Duration::from_secs(10), "uber-net in node2's agent", || {
            Ok(agent_network(d, 2, NET)?.is_some())
        })?;
        let c1 = d.run(1, "c1", NET, &[])?;
        let p2 = podman.run("p2", NET, &[])?;
        let p2_ip = podman.ip("p2", NET)?;
        ensure!(
            p2_ip.octets()[..3] == [10, 0, 9] && p2_ip.octets()[3] / 16 != c1.ip.octets()[3] / 16,
            "p2 gets {p2_ip} from node2's block of {SUBNET} (c1 has {})",
            c1.ip
        );
        let p2_routes = podman.exec("p2", &["ip", "route"])?;
        ensure!(
            p2_routes.contains("default via 10.0.9.1 dev eth0"),
            "p2's routes: {p2_routes}"
        );
        let reached = wait_until(Duration::from_secs(10), "c1 -> p2", || {
            Ok(ping(&c1.netns, &p2_ip.to_string(), 1, &[])?.received == 1)
        })?;
        eprintln!("c1 (Docker, node1) reached p2 (Podman, node2) {reached:?} after podman run");
        let out = d.exec(&c1, &["ping", "-c", "3", "-W", "2", &p2_ip.to_string()])?;
        ensure!(out.contains("3 packets received"), "c1 -> p2: {out}");
        let out = podman.exec("p2", &["ping", "-c", "3", "-W", "2", &c1.ip.to_string()])?;
        ensure!(out.contains("3 packets received"), "p2 -> c1: {out}");
        let p2_ns = p2.netns_name();
        for (server_ns, server_ip, client_ns, what) in [
            (&c1.netns, c1.ip, &p2_ns, "p2 -> c1"),
            (&p2_ns, p2_ip, &c1.netns, "c1 -> p2"),
        ] {
            let report = tcp_transfer(server_ns, &server_ip.to_string(), client_ns, 8 << 20)
                .context(what)?;
            eprintln!("{what}: {report:?}");
        }
        for node in [1, 2] {
            ensure!(
                d.overlay.counter(node, "encap")? > 0 && d.overlay.counter(node, "decap")? > 0,
                "node{node}'s dataplane carried it both ways"
            );
        }
        Ok(())
    })
}

#[test]
fn removal_withdraws_and_network_rm_removes_everywhere_once_unused() -> Result<()> {
    started()?.check(|d| {
        d.create_network(1, NET, SUBNET, &[])?;
        d.wait_network(2, NET, true, Duration::from_secs(10))?;
        let c2 = d.run(2, "c2", NET, &[])?;
        wait_until(Duration::from_secs(5), "node1 learns c2", || {
            Ok(in_tables(d, 1, &c2)? == (true, true))
        })?;

        // Docker refuses itself where the network has a container.
        let err = d
            .docker(2, &["network", "rm", NET])
            .expect_err("a network in use on node2");
        ensure!(format!("{err:#}").contains("active endpoints"), "{err:#}");
        // Where it has none, dockerd drops it whatever the driver answers; the
        // cluster keeps it for c2 and it comes back (as a new Docker network).
        let id = |d: &DockerOverlay| d.docker(1, &["network", "inspect", "-f", "{{.Id}}", NET]);
        let before = id(d)?;
        d.docker(1, &["network", "rm", NET])?;
        let back = wait_until(Duration::from_secs(10), "uber-net back in node1's dockerd", || {
            Ok(id(d).is_ok_and(|now| now != before))
        })?;
        eprintln!("network rm on node1 while c2 uses it: back in node1's dockerd after {back:?}");
        ensure!(
            agent_network(d, 1, NET)?.is_some() && agent_network(d, 2, NET)?.is_some(),
            "the cluster kept it"
        );
        let c1 = d.run(1, "c1", NET, &[])?;
        ping_both_ways(d, &c1, &c2)?;

        // docker rm -f withdraws c1 from every node's tables.
        ensure!(in_tables(d, 2, &c1)? == (true, true), "node2 has c1");
        let took = d.remove(&c1)?;
        let begun = Instant::now();
        let gone = wait_until(Duration::from_secs(10), "c1 withdrawn everywhere", || {
            Ok(in_tables(d, 1, &c1)? == (false, false) && in_tables(d, 2, &c1)? == (false, false))
        })?;
        eprintln!(
            "docker rm -f c1 took {took:?}; c1 gone from both nodes' FDB and NEIGH {:?} after it returned",
            gone.max(begun.elapsed())
        );

        d.remove(&c2)?;
        let begun = Instant::now();
        d.docker(2, &["network", "rm", NET])?;
        let removed = d.wait_network(1, NET, false, Duration::from_secs(10))?;
        eprintln!(
            "network rm on node2: gone from node1's dockerd {removed:?} after it returned ({:?} in all)",
            begun.elapsed()
        );
        for node in [1, 2] {
            ensure!(agent_networks(d, node)?.is_empty(), "node{node}'s agent");
        }
        Ok(())
    })
}

/// The agent's nftables table on `node`.
fn agent_table(d: &DockerOverlay, node: u8) -> Result<String> {
    sh(&format!(
        "ip netns exec {} nft list table ip overlay-{}",
        d.overlay.node_ns(node),
        d.overlay.node_name(node)
    ))
}

/// IPv4 (protocol, source) of frames to `dst`.
fn sources_to(frames: &[Vec<u8>], dst: Ipv4Addr) -> Vec<(u8, Ipv4Addr)> {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00])
        .filter(|f| f[30..34] == dst.octets())
        .map(|f| (f[23], Ipv4Addr::new(f[26], f[27], f[28], f[29])))
        .collect()
}

#[test]
fn containers_get_out_masqueraded_publish_ports_and_internal_ones_stay_in() -> Result<()> {
    started()?.check(|d| {
        let outside = d.overlay.topology.outside_host()?.to_owned();
        let forward = sh(&format!(
            "ip netns exec {} iptables -w -S FORWARD",
            d.overlay.node_ns(1)
        ))?;
        ensure!(
            forward.contains("-P FORWARD DROP"),
            "dockerd's FORWARD policy is DROP, or this proves nothing: {forward}"
        );
        d.create_network(1, NET, SUBNET, &[])?;
        let c1 = d.run(1, "c1", NET, &["-p", "8080:80"])?;
        let outside_ip: Ipv4Addr = OUTSIDE_IP.parse()?;
        let capture = Capture::start(&outside, "eth0")?;
        let out = d.exec(&c1, &["ping", "-c", "2", "-W", "2", OUTSIDE_IP])?;
        ensure!(out.contains("2 packets received"), "c1 -> outside: {out}");
        let report = tcp_transfer(&outside, OUTSIDE_IP, &c1.netns, 2 << 20)
            .context("TCP from c1 to the outside host")?;
        eprintln!("c1 -> outside: {report:?}");
        let seen = sources_to(&capture.stop()?, outside_ip);
        let vtep: Ipv4Addr = NODE1_VTEP.parse()?;
        ensure!(
            !seen.is_empty() && seen.iter().all(|(_, src)| *src == vtep),
            "the outside host sees c1 as node1 only: {seen:?}"
        );

        // The published port, from the outside host, checked byte for byte.
        let table = agent_table(d, 1)?;
        ensure!(
            table.contains(&format!("tcp dport 8080 dnat to {}:80", c1.ip)),
            "{table}"
        );
        let listen = SocketAddr::from((c1.ip, 80));
        let published = SocketAddr::from((vtep, 8080));
        let report = tcp_transfer_via(&c1.netns, listen, &outside, published, 2 << 20)
            .context("outside -> node1:8080 -> c1:80")?;
        eprintln!("outside -> {published} (published c1:80): {report:?}");
        d.remove(&c1)?;
        wait_until(Duration::from_secs(5), "the DNAT gone with c1", || {
            Ok(!agent_table(d, 1)?.contains("dnat to"))
        })?;

        // An internal network has no way out.
        d.create_network(1, "int-net", "10.0.10.0/24", &["--internal"])?;
        let i1 = d.run(1, "i1", "int-net", &[])?;
        let routes = d.exec(&i1, &["ip", "route"])?;
        ensure!(!routes.contains("default"), "i1's routes: {routes}");
        let out = d.exec(&i1, &["ping", "-c", "2", "-W", "1", OUTSIDE_IP]);
        ensure!(out.is_err(), "an internal network got out: {out:?}");
        Ok(())
    })
}

/// Pings from `from` to `to` at 10/s while `disrupt` runs; at most one lost.
fn at_most_one_lost(
    phase: &str,
    from: &DockerContainer,
    to: &DockerContainer,
    disrupt: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let (ns, dst) = (from.netns.clone(), to.ip.to_string());
    let pinger = std::thread::spawn(move || ping(&ns, &dst, 70, &["-i", "0.1"]));
    std::thread::sleep(Duration::from_secs(1));
    let disrupted = disrupt();
    let stats = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the pinger panicked"))??;
    disrupted.with_context(|| phase.to_owned())?;
    let lost = stats.transmitted - stats.received;
    eprintln!("{phase}: {lost} of {} pings lost", stats.transmitted);
    ensure!(lost <= 1, "{phase}: {lost} pings lost ({stats:?})");
    Ok(())
}

#[test]
fn restarts_of_the_agent_and_of_dockerd_keep_containers_connected() -> Result<()> {
    let live = DockerdOptions {
        live_restore: true,
        ..DockerdOptions::default()
    };
    DockerOverlay::start(&live, &["--keep"])?.check(|d| {
        d.create_network(1, NET, SUBNET, &[])?;
        d.wait_network(2, NET, true, Duration::from_secs(10))?;
        let c1 = d.run(1, "c1", NET, &[])?;
        let c2 = d.run(2, "c2", NET, &[])?;
        ensure!(ping(&c1.netns, &c2.ip.to_string(), 3, &[])?.received == 3);

        for (phase, node, kill) in [
            ("node1's agent restarted (--keep)", 1u8, false),
            ("node2's agent killed (-9) and a new one started", 2, true),
        ] {
            at_most_one_lost(phase, &c1, &c2, || {
                let i = usize::from(node) - 1;
                let agent = d.overlay.agents.remove(i);
                let left = if kill {
                    agent.kill()?
                } else {
                    agent.stop_keeping()?
                };
                let agent = left.restart(
                    &d.overlay.node_ns(node),
                    &d.overlay.binary,
                    &d.overlay.config_path(node),
                    &["--keep"],
                )?;
                d.overlay.agents.insert(i, agent);
                Ok(())
            })?;
        }
        at_most_one_lost(
            "node1's dockerd restarted (--live-restore)",
            &c1,
            &c2,
            || d.dockerd_mut(1).restart(),
        )?;
        // The plugin still knows the network: new containers join it, and
        // Docker's removals still reach the agent.
        let c3 = d.run(1, "c3", NET, &[])?;
        ping_both_ways(d, &c3, &c2)?;
        d.remove(&c1)?;
        wait_until(Duration::from_secs(5), "c1 withdrawn from node2", || {
            Ok(in_tables(d, 2, &c1)? == (false, false))
        })?;
        Ok(())
    })
}

/// `docker network create … NAME` on node1 must fail saying `expected`.
fn refused(d: &DockerOverlay, name: &str, args: &[&str], expected: &str) -> Result<()> {
    let mut all = vec!["network", "create"];
    all.extend(args);
    all.push(name);
    let Err(e) = d.docker(1, &all) else {
        bail!("docker {all:?} was accepted");
    };
    let message = format!("{e:#}");
    ensure!(
        message.contains(expected),
        "docker {all:?}: expected {expected:?} in {message}"
    );
    eprintln!(
        "refused as expected: {}",
        message.lines().last().unwrap_or("")
    );
    Ok(())
}

#[test]
fn refused_options_are_named_and_leave_nothing_half_made() -> Result<()> {
    started()?.check(|d| {
        let ours = ["-d", "overlay-ebpf", "--ipam-driver", "overlay-ebpf"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            let mut v = ours.to_vec();
            v.extend(extra);
            v
        };
        d.create_network(1, NET, SUBNET, &["-o", "vni=5000"])?;
        d.wait_network(2, NET, true, Duration::from_secs(10))?;
        let cases: [(&[&str], &str); 9] = [
            (
                &with(&["--subnet", "10.0.30.0/24", "-o", "colour=blue"]),
                "-o colour",
            ),
            (&with(&["--subnet", "10.0.30.0/24", "--ipv6"]), "--ipv6"),
            (
                &["-d", "overlay-ebpf", "--subnet", "10.0.30.0/24"],
                "add --ipam-driver overlay-ebpf",
            ),
            (&with(&["--subnet", "10.0.9.128/25"]), "overlaps"),
            (
                &with(&["--subnet", "10.0.30.0/24", "-o", "vni=5000"]),
                "-o vni",
            ),
            (
                &with(&["--subnet", "10.0.30.0/24", "-o", "mtu=9000"]),
                "-o mtu",
            ),
            (
                &with(&["--subnet", "10.0.30.0/24", "--ip-range", "10.0.30.0/25"]),
                "--ip-range",
            ),
            (
                &with(&["--subnet", "10.0.30.0/24", "--gateway", "10.0.31.1"]),
                "gateway",
            ),
            (&with(&[]), "--subnet"),
        ];
        for (args, expected) in cases {
            refused(d, "bad-net", args, expected)?;
        }
        // Nothing half-made: neither dockerd nor agent has more than uber-net.
        std::thread::sleep(Duration::from_secs(1));
        for node in [1, 2] {
            ensure!(d.networks(node)? == [NET], "node{node}'s dockerd");
            let names: Vec<_> = agent_networks(d, node)?
                .iter()
                .map(|n| n["name"].clone())
                .collect();
            ensure!(names == [NET], "node{node}'s agent: {names:?}");
        }

        // The options that work, as every node sees them.
        d.create_network(
            1,
            "opt-net",
            "10.0.20.0/24",
            &[
                "--internal",
                "--gateway",
                "10.0.20.254",
                "--aux-address",
                "x=10.0.20.1",
                "-o",
                "mtu=1400",
                "-o",
                "vni=5001",
            ],
        )?;
        d.wait_network(2, "opt-net", true, Duration::from_secs(10))?;
        let n = agent_network(d, 2, "opt-net")?.context("node2 has opt-net")?;
        ensure!(
            n["vni"] == 5001
                && n["mtu"] == 1400
                && n["internal"] == true
                && n["gateway"] == "10.0.20.254"
                && n["aux_addresses"] == serde_json::json!(["10.0.20.1"]),
            "{n}"
        );
        let o2 = d.run(2, "o2", "opt-net", &[])?;
        ensure!(
            o2.ip != Ipv4Addr::new(10, 0, 20, 1),
            "given the aux address"
        );
        let mtu = d.exec(&o2, &["cat", "/sys/class/net/eth0/mtu"])?;
        ensure!(mtu.trim() == "1400", "o2's MTU: {mtu}");
        Ok(())
    })
}

/// The benchmark's other Docker bed: Docker's own overlay between the two
/// dockerds in a swarm (no agent), containers of the offline iperf3 image on
/// both nodes, a checked TCP transfer and iperf3 between them, and on node2's
/// underlay the traffic as VXLAN between the two hosts' addresses.
#[test]
fn docker_s_own_swarm_overlay_carries_the_benchmark_image_across_nodes() -> Result<()> {
    let topology = SeedTopology::create(&unique_prefix("sw"), TopologyOptions::default())?;
    let mut swarm = DockerSwarm::start(&topology)?;
    swarm.create_network("swarm-net", SUBNET)?;
    let c2 = swarm.run(2, "c2", "swarm-net", &[IPERF3_IMAGE, "iperf3", "-s"])?;
    let c1 = swarm.run(1, "c1", "swarm-net", &[IPERF3_IMAGE, "sleep", "1d"])?;
    ensure!(
        c1.ip.octets()[..3] == [10, 0, 9] && c2.ip.octets()[..3] == [10, 0, 9],
        "addresses outside {SUBNET}: {} and {}",
        c1.ip,
        c2.ip
    );
    wait_until(
        Duration::from_secs(20),
        "c1 reaching c2 over swarm-net",
        || Ok(ping(&c1.netns, &c2.ip.to_string(), 1, &[])?.received == 1),
    )?;
    let capture = Capture::start(topology.node(2), "eth0")?;
    let report = tcp_transfer(&c2.netns, &c2.ip.to_string(), &c1.netns, 2 << 20)
        .context("TCP from c1 to c2 over Docker's overlay")?;
    eprintln!("c1 -> c2 (swarm): {report:?}");
    let frames = capture.stop()?;
    let vxlan = frames.iter().filter(|f| is_vxlan(f, VXLAN_PORT)).count();
    ensure!(
        vxlan > 0,
        "no VXLAN frame on node2's underlay among {}",
        frames.len()
    );
    let out = c1.exec(
        swarm.dockerd(1),
        &["iperf3", "-c", &c2.ip.to_string(), "-t", "1", "-J"],
    )?;
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3's JSON")?;
    let bits = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    ensure!(bits > 0.0, "iperf3 in the image moved nothing: {out}");
    Ok(())
}
