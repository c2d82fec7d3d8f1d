//! Gossip membership: hosts on one switch, each running an agent with a
//! [cluster] section; endpoints added and removed through the CLI.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use overlay_common::{FDB_KIND_REMOTE, FdbEntry, FdbKey};
use overlay_tests::{
    Agent, Cluster, ClusterFile, EndpointSection, cli_at, ip, keygen, node_ip, overlay_binary,
    ping, rss_kib,
    scenario::{UBER_NET, docker_mac},
    unique_prefix, wait_until,
};
use overlay_userspace::dataplane::maps::Maps;
use serde_json::Value;

/// The VNI of uber-net, as the FDB keys it.
const UBER: u32 = UBER_NET.vni;

/// Withdrawal target: a dead node's entries leave the others within this.
const WITHDRAWAL: Duration = Duration::from_secs(5);

/// Remote FDB entries: (VNI, MAC) → VTEP.
type RemoteFdb = BTreeMap<(u32, [u8; 6]), [u8; 4]>;

/// The remote entries in the FDB pinned under `pin_dir`.
fn remote_fdb(pin_dir: &Path) -> Result<RemoteFdb> {
    let maps = Maps::from_pins(pin_dir)?;
    let mut out = BTreeMap::new();
    for entry in &maps.fdb {
        let (key, value): (FdbKey, FdbEntry) = entry?;
        if value.kind == FDB_KIND_REMOTE {
            out.insert((key.vni, key.mac), value.remote_vtep);
        }
    }
    Ok(out)
}

fn mac_bytes(mac: &str) -> Result<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = mac.split(':').collect();
    ensure!(parts.len() == 6, "not a MAC: {mac}");
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16)?;
    }
    Ok(out)
}

/// `overlay endpoint add --network NETWORK --netns NETNS EXTRA…` against the
/// agent at `socket`; its stdout.
fn endpoint_add_at(socket: &Path, network: &str, netns: &str, extra: &[&str]) -> Result<String> {
    let mut args = vec!["endpoint", "add", "--network", network, "--netns", netns];
    args.extend(extra);
    cli_at(socket, &args)
}

/// `endpoint add` through host `i`'s CLI: (IP, MAC).
fn add_endpoint(c: &Cluster, i: usize, network: &str, netns: &str) -> Result<(Ipv4Addr, [u8; 6])> {
    let agent = c
        .agents
        .get(&i)
        .with_context(|| format!("no agent on host {i}"))?;
    let out: Value = serde_json::from_str(&endpoint_add_at(
        &agent.socket(),
        network,
        netns,
        &["--json"],
    )?)?;
    let ip = out["ip"].as_str().context("ip")?.parse()?;
    Ok((ip, mac_bytes(out["mac"].as_str().context("mac")?)?))
}

fn members(c: &Cluster, i: usize) -> Result<Value> {
    Ok(serde_json::from_str(&c.cli(i, &["members", "--json"])?)?)
}

/// Host `i`'s file with uber-net, the network every test here uses.
fn uber_file(c: &Cluster, i: usize) -> ClusterFile {
    ClusterFile {
        networks: vec![UBER_NET.section()],
        ..c.node_file(i)
    }
}

/// Host `i`'s file with uber-net and one endpoint in it, at `ip`.
fn file_with_endpoint(c: &Cluster, i: usize, netns: &str, ip: Ipv4Addr) -> ClusterFile {
    ClusterFile {
        endpoints: vec![EndpointSection::new(UBER_NET.name, netns, ip)],
        ..uber_file(c, i)
    }
}

/// Agents on hosts 1 to `n`, with uber-net in their files or no network at all.
fn start_all(c: &mut Cluster, n: usize, with_uber_net: bool) -> Result<()> {
    for i in 1..=n {
        let file = if with_uber_net {
            uber_file(c, i)
        } else {
            c.node_file(i)
        };
        c.start_agent(i, &file, &[])?;
    }
    Ok(())
}

fn has_remote(c: &Cluster, i: usize, vni: u32, mac: [u8; 6]) -> Result<bool> {
    Ok(remote_fdb(&c.pin_dir(i))?.contains_key(&(vni, mac)))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn five_nodes_learn_a_new_endpoint_within_a_second() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("g5"), 5)?;
    start_all(&mut c, 5, true)?;
    let mut delays = Vec::new();
    for round in 0..20 {
        let owner = round % 5 + 1;
        let ns = c.container(&format!("e{round}"))?;
        let (ip, mac) = add_endpoint(&c, owner, UBER_NET.name, &ns)?;
        let added = Instant::now();
        let others: Vec<usize> = (1..=5).filter(|&i| i != owner).collect();
        wait_until(
            Duration::from_secs(10),
            &format!("{ip} in every FDB"),
            || {
                for &i in &others {
                    if !has_remote(&c, i, UBER, mac)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        delays.push(added.elapsed());
    }
    delays.sort();
    let (p50, p95) = (percentile(&delays, 0.5), percentile(&delays, 0.95));
    eprintln!(
        "propagation to all 4 other nodes, 20 endpoints: p50 {p50:?}, p95 {p95:?}, max {:?}",
        delays.last().unwrap()
    );
    ensure!(p95 <= Duration::from_secs(1), "p95 {p95:?} exceeds 1 s");
    Ok(())
}

#[test]
fn dead_nodes_are_withdrawn_and_return() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("gf"), 3)?;
    start_all(&mut c, 3, true)?;
    let mut macs = BTreeMap::new();
    for i in 1..=3 {
        let ns = c.container(&format!("e{i}"))?;
        macs.insert(i, add_endpoint(&c, i, UBER_NET.name, &ns)?.1);
    }
    let everyone_knows = |c: &Cluster, who: usize| -> Result<bool> {
        for i in (1..=3).filter(|&i| i != who) {
            if !has_remote(c, i, UBER, macs[&who])? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let nobody_knows = |c: &Cluster, who: usize, alive: &[usize]| -> Result<bool> {
        for &i in alive {
            if has_remote(c, i, UBER, macs[&who])? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    for i in 1..=3 {
        wait_until(Duration::from_secs(10), "initial convergence", || {
            everyone_knows(&c, i)
        })?;
    }

    // Failure: the agent dies and its host drops off the network.
    let left = c.agents.remove(&3).expect("started").kill()?;
    c.set_link(3, false)?;
    let withdrawn = wait_until(WITHDRAWAL, "node3 withdrawn from node1 and node2", || {
        nobody_knows(&c, 3, &[1, 2])
    })?;
    let m = members(&c, 1)?;
    let node3 = m["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == c.node_name(3))
        .context("node3 is still listed as a member")?;
    ensure!(node3["live"] == false, "node3 shown as dead: {node3}");

    // Rejoin: back on the network, a new agent adopts the dataplane.
    c.set_link(3, true)?;
    let restart = Instant::now();
    let agent = left.restart(c.host_ns(3), &overlay_binary()?, &c.config_path(3), &[])?;
    c.agents.insert(3, agent);
    wait_until(Duration::from_secs(10), "node3 back everywhere", || {
        everyone_knows(&c, 3)
    })?;
    let returned = restart.elapsed();

    // Leave: a clean stop withdraws too.
    c.agents.remove(&2).expect("started").stop()?;
    let left_after = wait_until(WITHDRAWAL, "node2 withdrawn after leaving", || {
        nobody_knows(&c, 2, &[1, 3])
    })?;
    eprintln!(
        "failure withdrawn after {withdrawn:?}; rejoin visible {returned:?} after the restart; \
         leave withdrawn after {left_after:?}"
    );
    Ok(())
}

/// Three hosts with agents on the first two only, the third left to the test,
/// and an endpoint on each host of `with_endpoint` that the other agent has
/// learned: their MACs, by host.
fn two_agents_and_a_spare_host(
    tag: &str,
    with_endpoint: &[usize],
) -> Result<(Cluster, BTreeMap<usize, [u8; 6]>)> {
    let mut c = Cluster::create(&unique_prefix(tag), 3)?;
    for i in 1..=2 {
        c.start_agent(i, &uber_file(&c, i), &[])?;
    }
    let mut macs = BTreeMap::new();
    for &i in with_endpoint {
        let ns = c.container(&format!("e{i}"))?;
        macs.insert(i, add_endpoint(&c, i, UBER_NET.name, &ns)?.1);
    }
    for (&owner, &mac) in &macs {
        let other = 3 - owner;
        wait_until(
            Duration::from_secs(10),
            &format!("node{other} learns node{owner}'s endpoint"),
            || has_remote(&c, other, UBER, mac),
        )?;
    }
    Ok((c, macs))
}

#[test]
fn a_sender_with_the_wrong_key_changes_nothing() -> Result<()> {
    let (mut c, _) = two_agents_and_a_spare_host("gk", &[1, 2])?;
    let fdb_before = [remote_fdb(&c.pin_dir(1))?, remote_fdb(&c.pin_dir(2))?];

    // node3 holds another key and announces an endpoint of its own.
    let other_key = c.dir.path().join("other.key");
    keygen(&other_key)?;
    let ns3 = c.container("e3")?;
    let mut file = file_with_endpoint(&c, 3, &ns3, Ipv4Addr::new(10, 0, 0, 200));
    file.cluster.as_mut().context("a gossip file")?.key_file = other_key;
    let path = file.write(c.dir.path(), "node3.toml")?;
    let intruder = Agent::start(c.host_ns(3), &overlay_binary()?, &path, &c.pin_dir(3), &[])?;
    // Long enough for many gossip rounds and a failure-detector timeout.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        [remote_fdb(&c.pin_dir(1))?, remote_fdb(&c.pin_dir(2))?] == fdb_before,
        "the FDBs changed"
    );
    for i in 1..=2 {
        let m = members(&c, i)?;
        ensure!(
            !m["members"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["name"] == c.node_name(3)),
            "node{i} lists the intruder: {m}"
        );
        let rejected = m["transport"]["rejected"].as_u64().unwrap_or(0);
        ensure!(
            i != 1 || rejected > 0,
            "node1 (the intruder's seed) counted no rejected datagram: {m}"
        );
        eprintln!("node{i}: {rejected} datagrams rejected");
    }
    let m3 = cli_at(&intruder.socket(), &["members", "--json"])?;
    let m3: Value = serde_json::from_str(&m3)?;
    ensure!(
        m3["members"].as_array().map_or(0, Vec::len) == 1,
        "the intruder learned nobody: {m3}"
    );
    Ok(())
}

#[test]
fn a_vtep_announced_twice_stays_with_its_first_owner() -> Result<()> {
    let (mut c, macs) = two_agents_and_a_spare_host("gv", &[2])?;
    let mac2 = macs[&2];

    // node3 also holds node2's address (as a /32 it never answers ARP for) and
    // announces it as its VTEP, with an endpoint behind it.
    let h3 = c.host_ns(3).to_owned();
    ip(&format!("-n {h3} addr add {}/32 dev eth0", node_ip(2)))?;
    overlay_tests::sh(&format!(
        "ip netns exec {h3} sysctl -qw net.ipv4.conf.all.arp_ignore=2 net.ipv4.conf.eth0.arp_ignore=2"
    ))?;
    let ns3 = c.container("e3")?;
    let impostor = Ipv4Addr::new(10, 0, 0, 201);
    let file = ClusterFile {
        vtep: Some(node_ip(2)),
        ..file_with_endpoint(&c, 3, &ns3, impostor)
    };
    c.start_agent(3, &file, &[])?;
    let impostor_mac = mac_bytes(&docker_mac(impostor))?;
    let refused = wait_until(
        Duration::from_secs(10),
        "node1 reports node3 refused",
        || {
            let m = members(&c, 1)?;
            Ok(m["members"].as_array().into_iter().flatten().any(|n| {
                n["name"] == c.node_name(3) && n["live"] == true && n["refused"].is_string()
            }))
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let fdb = remote_fdb(&c.pin_dir(1))?;
    ensure!(
        !fdb.contains_key(&(UBER, impostor_mac)),
        "node3's endpoint was accepted: {fdb:?}"
    );
    ensure!(
        fdb.get(&(UBER, mac2)) == Some(&node_ip(2).octets()),
        "node2's endpoint must stay, behind node2's VTEP: {fdb:?}"
    );
    eprintln!(
        "node3 refused after {refused:?}: {}",
        members(&c, 1)?["members"]
    );
    Ok(())
}

fn networks(c: &Cluster, i: usize) -> Result<Value> {
    Ok(serde_json::from_str(
        &c.cli(i, &["network", "ls", "--json"])?,
    )?)
}

#[test]
fn conflicting_networks_resolve_the_same_on_every_node() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("gn"), 3)?;
    start_all(&mut c, 3, false)?;
    // Created on both sides of a partition, with different VNIs.
    c.set_link(2, false)?;
    c.cli(
        1,
        &[
            "network",
            "create",
            "blue",
            "--vni",
            "300",
            "--subnet",
            "10.30.0.0/24",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(20));
    c.cli(
        2,
        &[
            "network",
            "create",
            "blue",
            "--vni",
            "301",
            "--subnet",
            "10.31.0.0/24",
        ],
    )?;
    c.set_link(2, true)?;
    wait_until(Duration::from_secs(15), "every node agrees on blue", || {
        let mut views = BTreeSet::new();
        for i in 1..=3 {
            let n = networks(&c, i)?;
            let blue: Vec<&Value> = n["networks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|x| x["name"] == "blue")
                .collect();
            if blue.len() != 1 || n["conflicts"].as_array().is_none_or(Vec::is_empty) {
                return Ok(false);
            }
            views.insert(blue[0]["vni"].as_u64());
        }
        Ok(views == BTreeSet::from([Some(300)]))
    })?;
    eprintln!(
        "conflict as node3 reports it: {}",
        networks(&c, 3)?["conflicts"]
    );

    // Refusals with clear errors.
    let err = c
        .cli(
            3,
            &[
                "network",
                "create",
                "blue",
                "--vni",
                "302",
                "--subnet",
                "10.32.0.0/24",
            ],
        )
        .expect_err("a duplicate name");
    ensure!(format!("{err:#}").contains("already exists"), "{err:#}");
    let err = c
        .cli(
            3,
            &[
                "network",
                "create",
                "green",
                "--vni",
                "300",
                "--subnet",
                "10.33.0.0/24",
            ],
        )
        .expect_err("a duplicate VNI");
    ensure!(format!("{err:#}").contains("VNI 300"), "{err:#}");

    // Removal is refused while an endpoint uses the network, anywhere.
    let ns = c.container("e3")?;
    let (_, mac) = add_endpoint(&c, 3, "blue", &ns)?;
    wait_until(Duration::from_secs(5), "node1 learns the endpoint", || {
        has_remote(&c, 1, 300, mac)
    })?;
    let err = c.cli(1, &["network", "rm", "blue"]).expect_err("in use");
    ensure!(
        format!("{err:#}").contains("still has endpoints"),
        "{err:#}"
    );
    c.cli(3, &["endpoint", "rm", "--network", "blue", "--netns", &ns])?;
    wait_until(Duration::from_secs(5), "node1 forgets the endpoint", || {
        Ok(!has_remote(&c, 1, 300, mac)?)
    })?;
    c.cli(1, &["network", "rm", "blue"])?;
    wait_until(Duration::from_secs(5), "blue gone everywhere", || {
        for i in 1..=3 {
            let n = networks(&c, i)?;
            if n["networks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["name"] == "blue")
            {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    Ok(())
}

#[test]
fn concurrent_allocations_never_collide() -> Result<()> {
    const PER_NODE: usize = 10;
    let mut c = Cluster::create(&unique_prefix("ga"), 3)?;
    start_all(&mut c, 3, true)?;
    let mut jobs = Vec::new();
    for i in 1..=3 {
        for k in 0..PER_NODE {
            let ns = c.container(&format!("a{i}x{k}"))?;
            let socket = c.agents[&i].socket();
            jobs.push(std::thread::spawn(move || -> Result<(usize, String)> {
                let out = endpoint_add_at(&socket, UBER_NET.name, &ns, &["--json"])?;
                let v: Value = serde_json::from_str(&out)?;
                Ok((i, v["ip"].as_str().context("ip")?.to_owned()))
            }));
        }
    }
    let mut by_ip: BTreeMap<String, usize> = BTreeMap::new();
    for job in jobs {
        let (node, ip) = job.join().expect("thread")?;
        if let Some(other) = by_ip.insert(ip.clone(), node) {
            anyhow::bail!("{ip} was given out by node{other} and node{node}");
        }
    }
    ensure!(by_ip.len() == 3 * PER_NODE);
    // Every node sees the same 30 endpoints, none refused.
    wait_until(
        Duration::from_secs(10),
        "every node lists all endpoints",
        || {
            for i in 1..=3 {
                let list: Value = serde_json::from_str(&c.cli(i, &["endpoint", "ls", "--json"])?)?;
                if list.as_array().map_or(0, Vec::len) != 3 * PER_NODE {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let conflicts = networks(&c, 1)?["conflicts"].clone();
    ensure!(
        conflicts.as_array().is_some_and(Vec::is_empty),
        "no conflicts: {conflicts}"
    );
    eprintln!("30 concurrent allocations on 3 nodes: {by_ip:?}");
    Ok(())
}

#[test]
fn endpoints_come_and_go_while_traffic_flows() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("gt"), 2)?;
    start_all(&mut c, 2, false)?;
    c.cli(
        1,
        &[
            "network",
            "create",
            "green",
            "--vni",
            "500",
            "--subnet",
            "10.50.0.0/24",
        ],
    )?;
    wait_until(Duration::from_secs(5), "node2 knows green", || {
        Ok(networks(&c, 2)?["networks"]
            .as_array()
            .is_some_and(|n| n.len() == 1))
    })?;
    let a = c.container("a")?;
    let b = c.container("b")?;
    let (_, _) = add_endpoint(&c, 1, "green", &a)?;
    let (ip_b, mac_b) = add_endpoint(&c, 2, "green", &b)?;
    wait_until(Duration::from_secs(5), "node1 learns b", || {
        has_remote(&c, 1, 500, mac_b)
    })?;

    // A steady ping a → b while other endpoints are added and removed.
    let (a2, dst) = (a.clone(), ip_b.to_string());
    let pinger = std::thread::spawn(move || ping(&a2, &dst, 40, &["-i", "0.1"]));
    std::thread::sleep(Duration::from_millis(500));
    let extra1 = c.container("x1")?;
    let extra2 = c.container("x2")?;
    add_endpoint(&c, 1, "green", &extra1)?;
    add_endpoint(&c, 2, "green", &extra2)?;
    c.cli(
        1,
        &["endpoint", "rm", "--network", "green", "--netns", &extra1],
    )?;
    c.cli(
        2,
        &["endpoint", "rm", "--network", "green", "--netns", &extra2],
    )?;
    let stats = pinger.join().expect("thread")?;
    ensure!(
        stats.received == stats.transmitted,
        "ping lost packets while endpoints changed: {stats:?}"
    );

    let err = c.cli(1, &["network", "rm", "green"]).expect_err("in use");
    ensure!(
        format!("{err:#}").contains("still has endpoints"),
        "{err:#}"
    );
    c.cli(2, &["endpoint", "rm", "--network", "green", "--netns", &b])?;
    let after = ping(&a, &ip_b.to_string(), 2, &[])?;
    ensure!(
        after.received == 0,
        "b was removed but still answers: {after:?}"
    );
    Ok(())
}

#[test]
fn cli_errors_are_clear() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("ge"), 1)?;
    let nowhere = c.dir.path().join("nowhere.sock");
    let err = cli_at(&nowhere, &["network", "ls"]).expect_err("no agent");
    ensure!(
        format!("{err:#}").contains("is `overlay agent` running"),
        "{err:#}"
    );
    c.start_agent(1, &uber_file(&c, 1), &[])?;
    for (args, expected) in [
        (
            vec![
                "network",
                "create",
                "x",
                "--vni",
                "0",
                "--subnet",
                "10.1.0.0/24",
            ],
            "VNI 0 is outside",
        ),
        (
            vec![
                "network",
                "create",
                "x",
                "--vni",
                "7",
                "--subnet",
                "10.1.0.1/24",
            ],
            "host bits set",
        ),
        (
            vec![
                "network",
                "create",
                "a:b",
                "--vni",
                "7",
                "--subnet",
                "10.1.0.0/24",
            ],
            "not a network name",
        ),
        (vec!["network", "rm", UBER_NET.name], "cluster file"),
        (vec!["network", "rm", "nope"], "no network named nope"),
        (
            vec!["endpoint", "add", "--network", "nope", "--netns", "x"],
            "no network named nope",
        ),
        (
            vec![
                "endpoint",
                "add",
                "--network",
                UBER_NET.name,
                "--netns",
                "no-such-ns",
            ],
            "does not exist",
        ),
        (
            vec!["endpoint", "rm", "--network", UBER_NET.name, "--netns", "x"],
            "has no endpoint",
        ),
    ] {
        let err = c.cli(1, &args).expect_err(expected);
        ensure!(format!("{err:#}").contains(expected), "{args:?}: {err:#}");
    }
    let ns = c.container("e")?;
    let err = endpoint_add_at(
        &c.agents[&1].socket(),
        UBER_NET.name,
        &ns,
        &["--ip", "10.0.1.1"],
    )
    .expect_err("outside");
    ensure!(format!("{err:#}").contains("not a host address"), "{err:#}");
    Ok(())
}

/// Ping at 10 packets/s across a restart with --keep, then across kill -9 and a
/// new agent: at most one packet lost each time.
#[test]
fn restarts_lose_at_most_one_ping() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("gr"), 2)?;
    for i in 1..=2 {
        c.start_agent(i, &uber_file(&c, i), &["--keep"])?;
    }
    let a = c.container("a")?;
    let b = c.container("b")?;
    add_endpoint(&c, 1, UBER_NET.name, &a)?;
    let (ip_b, mac_b) = add_endpoint(&c, 2, UBER_NET.name, &b)?;
    wait_until(Duration::from_secs(5), "node1 learns b", || {
        has_remote(&c, 1, UBER, mac_b)
    })?;
    ensure!(
        ping(&a, &ip_b.to_string(), 2, &[])?.received == 2,
        "a reaches b"
    );

    for (phase, node) in [("restart with --keep", 1), ("kill -9 and a new agent", 2)] {
        let (a2, dst) = (a.clone(), ip_b.to_string());
        let pinger = std::thread::spawn(move || ping(&a2, &dst, 60, &["-i", "0.1"]));
        std::thread::sleep(Duration::from_secs(1));
        let agent = c.agents.remove(&node).expect("started");
        let left = if node == 1 {
            agent.stop_keeping()?
        } else {
            agent.kill()?
        };
        // Also long enough for the other node to notice if it were going to.
        std::thread::sleep(Duration::from_millis(500));
        let agent = left.restart(
            c.host_ns(node),
            &overlay_binary()?,
            &c.config_path(node),
            &["--keep"],
        )?;
        c.agents.insert(node, agent);
        let stats = pinger.join().expect("thread")?;
        let lost = stats.transmitted - stats.received;
        eprintln!("{phase}: {lost} of {} pings lost", stats.transmitted);
        ensure!(lost <= 1, "{phase}: {lost} pings lost ({stats:?})");
        // The new agent has adopted everything: the maps still hold b.
        ensure!(
            has_remote(&c, 1, UBER, mac_b)?,
            "{phase}: node1 still has b"
        );
    }
    // Without --keep, the last agents remove everything when the test ends.
    for node in [1, 2] {
        let agent = c.agents.remove(&node).expect("started");
        let left = agent.stop_keeping()?;
        left.restart(
            c.host_ns(node),
            &overlay_binary()?,
            &c.config_path(node),
            &[],
        )?
        .stop()?;
    }
    Ok(())
}

#[test]
fn twenty_nodes_converge_and_report_their_memory() -> Result<()> {
    const N: usize = 20;
    let mut c = Cluster::create(&unique_prefix("gm"), N)?;
    let mut files = Vec::new();
    for i in 1..=N {
        let ns = c.container(&format!("e{i}"))?;
        let ip = Ipv4Addr::new(10, 0, 0, u8::try_from(100 + i)?);
        files.push(file_with_endpoint(&c, i, &ns, ip));
    }
    let started = Instant::now();
    for (i, file) in (1..=N).zip(&files) {
        c.start_agent(i, file, &[])?;
    }
    let all_started = started.elapsed();
    let converged = wait_until(
        Duration::from_secs(60),
        "every node has 19 remote entries",
        || {
            for i in 1..=N {
                if remote_fdb(&c.pin_dir(i))?.len() != N - 1 {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let mut rss: Vec<u64> = c
        .agents
        .values()
        .map(|a| rss_kib(a.pid()))
        .collect::<Result<_>>()?;
    rss.sort();
    eprintln!(
        "{N} nodes: agents started in {all_started:?}, converged {converged:?} later; \
         agent RSS min {} KiB, median {} KiB, max {} KiB",
        rss[0],
        rss[N / 2],
        rss[N - 1]
    );
    Ok(())
}
