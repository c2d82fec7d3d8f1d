//! The way out of the overlay: containers on both nodes reach a host outside
//! it (behind the seed topology's router), masqueraded to their node's
//! underlay address; they reach their own host's services; overlay traffic
//! still never meets the host stack; internal networks have no way out; the
//! agent's nftables table lives and dies with it; and all of it holds beside a
//! real dockerd, whose FORWARD policy is DROP.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Capture, ClusterFile, Decap, Dockerd, EndpointSection, NODE1_VTEP, NODE2_VTEP, NetworkSection,
    OUTSIDE_IP, Overlay, RemoteSection, ping,
    scenario::{C1, C2, Container, UBER_NET, docker_mac},
    sh, tcp_transfer, wait_until,
};

/// The seed topology with `containers`, a host outside the overlay, and both
/// agents running with `extra` arguments.
fn overlay_with_outside(containers: &[Container], extra: &[&str]) -> Result<(Overlay, String)> {
    let mut o = Overlay::build_with(Decap::Tc, containers)?;
    let outside = o.topology.outside_host()?.to_owned();
    for node in [1, 2] {
        o.start_agent_with(node, extra)?;
    }
    Ok((o, outside))
}

/// IPv4 header fields of an Ethernet frame: (protocol, source, destination).
fn ipv4(frame: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr)> {
    (frame.len() >= 34 && frame[12..14] == [0x08, 0x00]).then(|| {
        let addr =
            |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        (frame[23], addr(26), addr(30))
    })
}

/// `nft list table ip overlay-<node>` in the node's namespace, if there is one.
fn agent_table(o: &Overlay, node: u8) -> Result<Option<String>> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &o.node_ns(node),
            "nft",
            "list",
            "table",
            "ip",
        ])
        .arg(format!("overlay-{}", o.node_name(node)))
        .output()?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[test]
fn containers_on_both_nodes_reach_a_host_outside_masqueraded() -> Result<()> {
    let (o, outside) = overlay_with_outside(&[C1, C2], &[])?;
    let capture = Capture::start(&outside, "eth0")?;
    for c in [C1, C2] {
        let stats = ping(&o.ns(c), OUTSIDE_IP, 3, &[])?;
        ensure!(stats.received == 3, "{} -> outside: {stats:?}", c.name);
    }
    for c in [C1, C2] {
        let report = tcp_transfer(&outside, OUTSIDE_IP, &o.ns(c), 4 * 1024 * 1024)
            .with_context(|| format!("{} -> outside", c.name))?;
        eprintln!("{} -> outside: {report:?}", c.name);
    }
    let frames = capture.stop()?;
    let to_outside: BTreeSet<(u8, Ipv4Addr)> = frames
        .iter()
        .filter_map(|f| ipv4(f))
        .filter(|(_, _, dst)| dst.to_string() == OUTSIDE_IP)
        .map(|(proto, src, _)| (proto, src))
        .collect();
    let node = |ip: &str| -> Ipv4Addr { ip.parse().expect("a literal") };
    let expected = BTreeSet::from([
        (1, node(NODE1_VTEP)),
        (1, node(NODE2_VTEP)),
        (6, node(NODE1_VTEP)),
        (6, node(NODE2_VTEP)),
    ]);
    ensure!(
        to_outside == expected,
        "the outside host must see ICMP and TCP from the nodes' underlay addresses only: {to_outside:?}"
    );
    for node in [1, 2] {
        ensure!(
            o.counter(node, "to_gateway")? > 0,
            "node{node}'s containers went out through their gateway"
        );
    }
    Ok(())
}

#[test]
fn a_container_reaches_its_own_hosts_services() -> Result<()> {
    let (o, _) = overlay_with_outside(&[C1, C2], &[])?;
    // At its gateway (the same address on every node, each node's own) and at
    // the node's underlay address.
    for (c, node, vtep) in [(C1, 1, NODE1_VTEP), (C2, 2, NODE2_VTEP)] {
        for server_ip in [UBER_NET.gateway().to_string(), vtep.to_owned()] {
            tcp_transfer(&o.node_ns(node), &server_ip, &o.ns(c), 1024 * 1024)
                .with_context(|| format!("{} -> node{node}'s service at {server_ip}", c.name))?;
        }
    }
    Ok(())
}

/// conntrack's table in a namespace.
fn conntrack(ns: &str) -> Result<String> {
    sh(&format!(
        "ip netns exec {ns} conntrack -L -f ipv4 2>/dev/null"
    ))
}

#[test]
fn overlay_traffic_still_never_meets_the_host_stack() -> Result<()> {
    let (o, _) = overlay_with_outside(&[C1, C2], &[])?;
    let stats = ping(&o.ns(C1), &C2.ip.to_string(), 5, &["-i", "0.05"])?;
    ensure!(stats.received == 5, "c1 -> c2: {stats:?}");
    o.transfer_both_ways(C1, C2, 2 * 1024 * 1024)?;
    // A flow that does go through the host, so that conntrack is known to see.
    ensure!(ping(&o.ns(C1), OUTSIDE_IP, 1, &[])?.received == 1);
    let node1 = conntrack(&o.node_ns(1))?;
    ensure!(
        node1.contains(&format!("dst={OUTSIDE_IP}")),
        "conntrack tracks the way out: {node1}"
    );
    for node in [1, 2] {
        let table = conntrack(&o.node_ns(node))?;
        ensure!(
            !table.contains(&format!("={}", C2.ip))
                && !table.contains(&format!("src={} dst={}", C1.ip, C2.ip)),
            "node{node} tracked overlay traffic, which must stay on the eBPF path: {table}"
        );
    }
    ensure!(
        o.counter(1, "encap")? >= 5 && o.counter(2, "decap")? >= 5,
        "the overlay traffic was carried by the dataplane"
    );
    Ok(())
}

const INTERNAL: &str = "int-net";
const INTERNAL_SUBNET: &str = "10.0.2.0/24";

#[test]
fn an_internal_network_has_no_way_out() -> Result<()> {
    let mut o = Overlay::build_with(Decap::Tc, &[C1])?;
    let outside = o.topology.outside_host()?.to_owned();
    let ips = [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 4)];
    let mut namespaces = Vec::new();
    for (node, ip) in [1u8, 2].into_iter().zip(ips) {
        let ns = o.topology.container(&format!("i{node}"))?.name.clone();
        let mut file: ClusterFile = o.node_file(node);
        file.networks.push(NetworkSection {
            internal: Some(true),
            ..NetworkSection::new(INTERNAL, 4099, INTERNAL_SUBNET)
        });
        file.endpoints.push(EndpointSection::new(INTERNAL, &ns, ip));
        let other = ips[usize::from(2 - node)];
        file.remotes.push(RemoteSection {
            network: INTERNAL.into(),
            ip: other,
            mac: docker_mac(other),
            vtep: (if node == 1 { NODE2_VTEP } else { NODE1_VTEP }).parse()?,
        });
        file.write(o.dir.path(), &format!("node{node}.toml"))?;
        namespaces.push(ns);
    }
    for node in [1, 2] {
        o.start_agent(node)?;
    }
    // The overlay still carries it.
    let stats = ping(&namespaces[0], &ips[1].to_string(), 3, &[])?;
    ensure!(
        stats.received == 3,
        "i1 -> i2 on the internal network: {stats:?}"
    );
    let routes = sh(&format!("ip -n {} route show", namespaces[0]))?;
    ensure!(
        !routes.contains("default"),
        "no default route on an internal network: {routes}"
    );
    // Even with a default route of its own, nothing answers for a gateway, and
    // even told the gateway's MAC the dataplane has nowhere to send it.
    let gateway = Ipv4Addr::new(10, 0, 2, 1);
    sh(&format!(
        "ip -n {} route add default via {gateway}",
        namespaces[0]
    ))?;
    let before = o.counter(1, "drop_arp_miss")?;
    ensure!(
        ping(&namespaces[0], OUTSIDE_IP, 2, &[])?.received == 0,
        "an internal network got out"
    );
    ensure!(
        o.counter(1, "drop_arp_miss")? > before,
        "the ARP for its gateway went unanswered"
    );
    sh(&format!(
        "ip -n {} neigh replace {gateway} lladdr {} dev eth0",
        namespaces[0],
        docker_mac(gateway)
    ))?;
    ensure!(
        ping(&namespaces[0], OUTSIDE_IP, 2, &[])?.received == 0,
        "an internal network got out"
    );
    ensure!(
        o.counter(1, "drop_no_fdb")? >= 2,
        "its frames to a gateway MAC are dropped"
    );
    ensure!(
        o.counter(1, "to_gateway")? == 0,
        "nothing reached the host stack"
    );
    // uber-net beside it still has its way out.
    ensure!(ping(&o.ns(C1), OUTSIDE_IP, 2, &[])?.received == 2);
    drop(outside);
    Ok(())
}

/// The rules of the agent's table, without handles or counters: what a
/// duplicate would show in.
fn rule_lines(table: &str) -> Vec<&str> {
    table
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ip ") || l.starts_with("type "))
        .collect()
}

#[test]
fn the_agents_table_lives_with_it_and_the_next_agent_adopts_it() -> Result<()> {
    let mut o = Overlay::build_with(Decap::Tc, &[C1, C2])?;
    ensure!(agent_table(&o, 1)?.is_none(), "no table before the agent");
    o.start_agent_with(1, &["--keep"])?;
    let running = agent_table(&o, 1)?.context("the table while the agent runs")?;
    ensure!(
        running.contains("masquerade") && running.contains("10.0.0.0/24"),
        "{running}"
    );
    let rules = rule_lines(&running);
    ensure!(
        rules.len() == 10,
        "two sets, two base chains and six rules: {rules:?}"
    );

    let left = o.agents.pop().expect("started").stop_keeping()?;
    let kept = agent_table(&o, 1)?.context("--keep leaves the table")?;
    ensure!(rule_lines(&kept) == rules, "kept as it was: {kept}");
    let agent = left.restart(
        &o.node_ns(1),
        &o.binary,
        &o.config_path(1),
        &["--reconcile-interval", "1"],
    )?;
    o.agents.push(agent);
    // Adopted, and re-applied by the periodic reconcile too: never twice.
    std::thread::sleep(Duration::from_millis(2500));
    let adopted = agent_table(&o, 1)?.context("the next agent's table")?;
    ensure!(
        rule_lines(&adopted) == rules,
        "adopted without duplicates: {adopted}"
    );
    // A rule added by hand to the agent's table is healed away.
    sh(&format!(
        "ip netns exec {} nft add rule ip overlay-{} forward ip saddr 10.9.9.9 drop",
        o.node_ns(1),
        o.node_name(1)
    ))?;
    wait_until(Duration::from_secs(5), "the table healed", || {
        Ok(agent_table(&o, 1)?.is_some_and(|t| rule_lines(&t) == rules))
    })?;
    o.agents.pop().expect("restarted").stop()?;
    ensure!(agent_table(&o, 1)?.is_none(), "gone after the agent exits");
    Ok(())
}

/// The agent's rules in DOCKER-USER, as `iptables -S` lists them.
fn docker_user_rules(o: &Overlay, node: u8) -> Result<Vec<String>> {
    let out = sh(&format!(
        "ip netns exec {} iptables -w -S DOCKER-USER",
        o.node_ns(node)
    ))?;
    let ours = format!("--comment overlay-{}", o.node_name(node));
    Ok(out
        .lines()
        .filter(|l| l.contains(&ours))
        .map(str::to_owned)
        .collect())
}

#[test]
fn the_way_out_works_beside_a_dockerd_with_its_default_iptables() -> Result<()> {
    // The agent first, dockerd after it: the periodic reconcile meets it.
    let (o, outside) = overlay_with_outside(&[C1, C2], &["--reconcile-interval", "1"])?;
    ensure!(
        ping(&o.ns(C1), OUTSIDE_IP, 1, &[])?.received == 1,
        "out before dockerd"
    );
    // dockerd sets the FORWARD policy to DROP when it is the one that turns
    // forwarding on, as on a host that did not forward before it.
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_forward=0",
        o.node_ns(1)
    ))?;
    let dockerd = Dockerd::start(&o.node_ns(1))?;
    let forward = sh(&format!(
        "ip netns exec {} iptables -w -S FORWARD",
        o.node_ns(1)
    ))?;
    ensure!(
        forward.contains("-P FORWARD DROP"),
        "dockerd's FORWARD policy: {forward}"
    );
    let found = wait_until(
        Duration::from_secs(5),
        "the agent's DOCKER-USER rules",
        || Ok(docker_user_rules(&o, 1)?.len() == 2),
    )?;
    eprintln!("DOCKER-USER rules in place {found:?} after dockerd answered");
    ensure!(
        ping(&o.ns(C1), OUTSIDE_IP, 3, &[])?.received == 3,
        "out beside dockerd"
    );
    tcp_transfer(&outside, OUTSIDE_IP, &o.ns(C1), 4 * 1024 * 1024)
        .context("TCP out beside dockerd")?;
    // Without them Docker's policy drops the way out, until the agent puts
    // them back.
    for rule in docker_user_rules(&o, 1)? {
        let delete = rule.replacen("-A DOCKER-USER", "-D DOCKER-USER", 1);
        sh(&format!(
            "ip netns exec {} iptables -w {delete}",
            o.node_ns(1)
        ))?;
    }
    ensure!(
        ping(&o.ns(C1), OUTSIDE_IP, 1, &[])?.received == 0,
        "Docker's FORWARD policy must drop the way out without the rules (or this test proves nothing)"
    );
    wait_until(Duration::from_secs(5), "the rules put back", || {
        Ok(docker_user_rules(&o, 1)?.len() == 2)
    })?;
    ensure!(
        ping(&o.ns(C1), OUTSIDE_IP, 2, &[])?.received == 2,
        "out again"
    );
    // Overlay traffic never met Docker's chain.
    o.ping_both_ways(C1, C2, 2)?;
    let mut o = o;
    o.agents.remove(0).stop()?;
    ensure!(
        docker_user_rules(&o, 1)?.is_empty(),
        "the agent removes its rules when it exits"
    );
    let left = sh(&format!(
        "ip netns exec {} iptables -w -S DOCKER-USER",
        o.node_ns(1)
    ))?;
    ensure!(
        left.contains("-j RETURN"),
        "Docker's own rule stays: {left}"
    );
    dockerd.stop()?;
    Ok(())
}
