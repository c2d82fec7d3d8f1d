//! Gossip an attacker on the underlay cannot use: real sealed datagrams,
//! captured on the wire and sent again from a host without the key (from its
//! own address and from a spoofed one), are dropped unanswered; a join with
//! much state leaves no IP fragment; keys rotate on a live cluster with no
//! member ever declared dead.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Capture, Cluster, ClusterFile, NetworkSection, in_netns, ip, ipv4_udp, is_ipv4_fragment, join,
    keygen, node_ip, scenario::GOSSIP_PORT, unique_prefix, wait_until,
};
use serde_json::Value;

/// The UDP payload a gossip datagram may have under the default MTU of 1500.
const MAX_DATAGRAM: usize = 1500 - 20 - 8;

fn members(c: &Cluster, i: usize) -> Result<Value> {
    Ok(serde_json::from_str(&c.cli(i, &["members", "--json"])?)?)
}

fn transport(c: &Cluster, i: usize, counter: &str) -> Result<u64> {
    let m = members(c, i)?;
    m["transport"][counter]
        .as_u64()
        .with_context(|| format!("no transport.{counter} in {m}"))
}

/// The names of the members node `i` sees live, itself included.
fn live_members(c: &Cluster, i: usize) -> Result<Vec<String>> {
    let m = members(c, i)?;
    Ok(m["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["live"] == true)
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect())
}

fn all_live(c: &Cluster, nodes: &[usize]) -> Result<bool> {
    for &i in nodes {
        if live_members(c, i)?.len() != nodes.len() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends each payload `copies` times from `from` (an address of host `ns`) to `to`.
fn send_from(
    ns: &str,
    from: SocketAddrV4,
    to: SocketAddrV4,
    payloads: Vec<Vec<u8>>,
    copies: usize,
) -> Result<()> {
    join(in_netns(ns, move || {
        let socket = UdpSocket::bind(from).with_context(|| format!("binding {from}"))?;
        for _ in 0..copies {
            for p in &payloads {
                socket.send_to(p, to)?;
                // Paced, so that no copy is lost to a full socket buffer.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    }))
}

/// Bytes of the IPv4 frames to `dst` among `frames`.
fn bytes_to(frames: &[Vec<u8>], dst: Ipv4Addr) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[30..34] == dst.octets())
        .map(Vec::len)
        .sum()
}

#[test]
fn replayed_datagrams_are_dropped_and_never_answered() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("gr"), 3)?;
    let node1 = SocketAddrV4::new(node_ip(1), GOSSIP_PORT);
    let node2 = SocketAddrV4::new(node_ip(2), GOSSIP_PORT);
    // Host 3 holds no key: the attacker. It also owns a second address, the
    // victim a reflection would be aimed at.
    let attacker = c.host_ns(3).to_owned();
    let victim = Ipv4Addr::new(172, 30, 0, 200);
    ip(&format!("-n {attacker} addr add {victim}/24 dev eth0"))?;

    c.start_agent(1, &c.node_file(1), &[])?;
    // node2's join, as the underlay carries it to node1.
    let capture = Capture::start(c.host_ns(1), "eth0")?;
    c.start_agent(2, &c.node_file(2), &[])?;
    wait_until(
        Duration::from_secs(10),
        "node1 and node2 see each other",
        || all_live(&c, &[1, 2]),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let frames = capture.stop()?;
    let sealed: Vec<Vec<u8>> = frames
        .iter()
        .filter_map(|f| ipv4_udp(f))
        .filter(|(src, dst, _)| *src == node2 && *dst == node1)
        .map(|(_, _, payload)| payload.to_vec())
        .collect();
    ensure!(
        sealed.len() >= 5,
        "captured only {} datagrams from node2",
        sealed.len()
    );
    ensure!(
        sealed.iter().all(|d| d.starts_with(b"OVG2")),
        "a datagram that is not sealed"
    );
    // node2 leaves: node1 now hears nothing honest, so any accepted datagram
    // would be a replay.
    c.agents.remove(&2).context("node2's agent")?.stop()?;
    wait_until(Duration::from_secs(10), "node1 declares node2 dead", || {
        Ok(live_members(&c, 1)?.len() == 1)
    })?;
    let accepted = transport(&c, 1, "accepted")?;
    let replayed = transport(&c, 1, "replayed")?;

    let watch = Capture::start(&attacker, "eth0")?;
    // 20 copies of node2's first datagrams, as the earlier reflection did,
    // then all of them; from the attacker's address and from the victim's.
    let first: Vec<Vec<u8>> = sealed.iter().take(3).cloned().collect();
    let own = SocketAddrV4::new(node_ip(3), GOSSIP_PORT);
    let spoofed = SocketAddrV4::new(victim, GOSSIP_PORT);
    send_from(&attacker, spoofed, node1, first.clone(), 20)?;
    send_from(&attacker, own, node1, sealed.clone(), 1)?;
    send_from(&attacker, spoofed, node1, sealed.clone(), 1)?;
    let copies = (20 * first.len() + 2 * sealed.len()) as u64;
    let counted = wait_until(Duration::from_secs(5), "node1 counts every copy", || {
        Ok(transport(&c, 1, "replayed")? - replayed >= copies)
    });
    // Time for any answer to arrive.
    std::thread::sleep(Duration::from_secs(2));
    let seen = watch.stop()?;
    let (to_victim, to_attacker) = (bytes_to(&seen, victim), bytes_to(&seen, node_ip(3)));
    let replayed_now = transport(&c, 1, "replayed")? - replayed;
    let accepted_now = transport(&c, 1, "accepted")? - accepted;
    eprintln!(
        "{copies} copies of {} captured datagrams ({} B): {replayed_now} counted replayed, \
         {accepted_now} accepted; {to_victim} B sent to the spoofed address, {to_attacker} B to the attacker",
        sealed.len(),
        sealed.iter().map(Vec::len).sum::<usize>()
    );
    counted?;
    ensure!(
        replayed_now == copies,
        "{replayed_now} of {copies} counted as replayed"
    );
    ensure!(
        accepted_now == 0,
        "{accepted_now} replayed datagrams accepted"
    );
    ensure!(to_victim == 0, "{to_victim} B sent to the spoofed address");
    ensure!(to_attacker == 0, "{to_attacker} B sent to the attacker");
    ensure!(
        live_members(&c, 1)?.len() == 1,
        "a replay brought node2 back to life"
    );

    // Sent to another node, a datagram addressed to node1 is refused there:
    // a capture is no good anywhere else either.
    c.start_agent(2, &c.node_file(2), &[])?;
    let rejected = transport(&c, 2, "rejected")?;
    let accepted = transport(&c, 2, "accepted")?;
    let watch = Capture::start(&attacker, "eth0")?;
    send_from(&attacker, spoofed, node2, sealed.clone(), 1)?;
    wait_until(Duration::from_secs(5), "node2 refuses every copy", || {
        Ok(transport(&c, 2, "rejected")? - rejected >= sealed.len() as u64)
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let to_victim = bytes_to(&watch.stop()?, victim);
    let misaddressed = transport(&c, 2, "rejected")? - rejected;
    eprintln!(
        "{} copies sent to node2: {misaddressed} rejected as addressed to node1; {to_victim} B to the spoofed address",
        sealed.len()
    );
    ensure!(
        to_victim == 0,
        "node2 sent {to_victim} B to the spoofed address"
    );
    ensure!(
        transport(&c, 2, "accepted")? >= accepted,
        "counters went backwards"
    );
    Ok(())
}

/// What the wire carried while node2 joined node1, which announces `networks`
/// networks, both with `mtu` in their `[cluster]` (the default if `None`).
struct Join {
    /// Payload sizes of the unfragmented gossip datagrams.
    datagrams: Vec<usize>,
    largest_frame: usize,
    fragments: usize,
    took: Duration,
    incomplete: u64,
}

fn join_with_networks(tag: &str, networks: u32, mtu: Option<u32>) -> Result<Join> {
    let mut c = Cluster::create(&unique_prefix(tag), 2)?;
    let files: Vec<ClusterFile> = (1..=2)
        .map(|i| {
            let mut file = c.node_file(i);
            if let Some(cluster) = file.cluster.as_mut() {
                cluster.mtu = mtu;
            }
            file
        })
        .collect();
    let mut node1 = files[0].clone();
    // chitchat compresses its deltas (zstd), so the names are as random as
    // names get: kilobytes of state, which node1's answer to node2's first Syn
    // carries.
    for n in 0..networks {
        let scrambled = u64::from(n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        node1.networks.push(NetworkSection::new(
            format!("n{scrambled:016x}{:08x}", scrambled >> 17),
            5000 + n,
            format!("10.{}.{}.0/24", 100 + n / 200, n % 200),
        ));
    }
    c.start_agent(1, &node1, &[])?;
    let capture = Capture::start(c.host_ns(2), "eth0")?;
    c.start_agent(2, &files[1], &[])?;
    let took = wait_until(
        Duration::from_secs(20),
        "node2 knows every network of node1",
        || {
            let n: Value = serde_json::from_str(&c.cli(2, &["network", "ls", "--json"])?)?;
            Ok(n["networks"].as_array().map_or(0, Vec::len) >= networks as usize)
        },
    )?;
    let frames = capture.stop()?;
    Ok(Join {
        fragments: frames.iter().filter(|f| is_ipv4_fragment(f)).count(),
        largest_frame: frames.iter().map(Vec::len).max().unwrap_or(0),
        datagrams: frames
            .iter()
            .filter_map(|f| ipv4_udp(f))
            .filter(|(_, dst, _)| dst.port() == GOSSIP_PORT)
            .map(|(_, _, p)| p.len())
            .collect(),
        took,
        incomplete: transport(&c, 2, "incomplete")?,
    })
}

#[test]
fn a_join_with_much_state_leaves_no_ip_fragment() -> Result<()> {
    const NETWORKS: u32 = 300;
    let cut = join_with_networks("gf", NETWORKS, None)?;
    // The same join with messages sent whole, as before they were cut: the
    // wire shows what this test looks for.
    let whole = join_with_networks("gw", NETWORKS, Some(65_535))?;
    for (how, j) in [("cut to MTU 1500", &cut), ("sent whole", &whole)] {
        eprintln!(
            "join with {NETWORKS} networks, {how}: {} whole gossip datagrams ({} B, largest {} B), \
             {} IP fragments, largest frame {} B; node2 knew every network after {:?}",
            j.datagrams.len(),
            j.datagrams.iter().sum::<usize>(),
            j.datagrams.iter().max().unwrap_or(&0),
            j.fragments,
            j.largest_frame,
            j.took
        );
    }
    ensure!(
        whole.fragments > 0,
        "messages sent whole left no fragment: too little state to test"
    );
    ensure!(
        cut.fragments == 0,
        "{} IP fragments on the wire",
        cut.fragments
    );
    let largest = cut.datagrams.iter().copied().max().unwrap_or(0);
    ensure!(
        largest <= MAX_DATAGRAM,
        "a datagram of {largest} B exceeds {MAX_DATAGRAM}"
    );
    ensure!(
        cut.incomplete == 0,
        "node2 gave up on {} messages",
        cut.incomplete
    );
    Ok(())
}

#[test]
fn keys_rotate_on_a_live_cluster_without_a_member_declared_dead() -> Result<()> {
    const N: usize = 3;
    let mut c = Cluster::create(&unique_prefix("gk"), N)?;
    let key_a = std::fs::read_to_string(&c.key_file)?;
    let new_key = c.dir.path().join("new.key");
    keygen(&new_key)?;
    let key_b = std::fs::read_to_string(&new_key)?;
    // Each node its own key file, as on separate machines.
    let dir = c.dir.path().to_owned();
    let key_file = |i: usize| dir.join(format!("node{i}.key"));
    let mut files = Vec::new();
    for i in 1..=N {
        std::fs::write(key_file(i), &key_a)?;
        let mut file: ClusterFile = c.node_file(i);
        file.cluster.as_mut().context("gossip")?.key_file = key_file(i);
        files.push(file);
    }
    for (i, file) in files.iter().enumerate() {
        c.start_agent(i + 1, file, &[])?;
    }
    let nodes: Vec<usize> = (1..=N).collect();
    wait_until(
        Duration::from_secs(15),
        "every node sees every node",
        || all_live(&c, &nodes),
    )?;

    // Watch every node's view throughout, every 100 ms.
    let cluster = Arc::new(c);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (c, done) = (cluster.clone(), done.clone());
        std::thread::spawn(move || -> Result<Vec<String>> {
            let mut dead = Vec::new();
            while !done.load(Ordering::Relaxed) {
                for i in 1..=N {
                    let live = live_members(&c, i)?;
                    if live.len() != N {
                        dead.push(format!("node{i} saw only {live:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(dead)
        })
    };
    let c = &cluster;
    let steps = [
        ("add the new key second", format!("{key_a}{key_b}")),
        ("make the new key first", format!("{key_b}{key_a}")),
        ("remove the old key", key_b.clone()),
    ];
    let run = || -> Result<()> {
        for (k, (step, text)) in steps.iter().enumerate() {
            for i in 1..=N {
                std::fs::write(key_file(i), text)?;
                c.agents[&i].signal(libc::SIGHUP)?;
                // Longer than the failure detector's timeout (about 2 s): a
                // node that could not talk to the others would be seen dead.
                std::thread::sleep(Duration::from_millis(2500));
                let log = c.agents[&i].stderr();
                ensure!(
                    log.matches("reloaded the cluster key file").count() > k,
                    "node{i} did not reload its keys ({step}):\n{log}"
                );
            }
            eprintln!("rotation step done on every node: {step}");
        }
        Ok(())
    };
    let rotated = run();
    done.store(true, Ordering::Relaxed);
    let dead = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
    rotated?;
    for i in 1..=N {
        let log = c.agents[&i].stderr();
        ensure!(
            !log.contains("died"),
            "node{i} declared a node dead:\n{log}"
        );
        ensure!(
            transport(c, i, "rejected")? == 0,
            "node{i} rejected datagrams during the rotation"
        );
    }
    ensure!(dead.is_empty(), "members were not live: {dead:?}");

    // The old key is really gone: a node put back on it alone is cut off.
    std::fs::write(key_file(1), &key_a)?;
    c.agents[&1].signal(libc::SIGHUP)?;
    wait_until(
        Duration::from_secs(10),
        "node2 declares node1, back on the old key, dead",
        || Ok(live_members(c, 2)?.len() == N - 1),
    )?;
    ensure!(
        transport(c, 2, "rejected")? > 0,
        "node2 rejected nothing from node1"
    );
    eprintln!("rotated through 3 steps on {N} nodes with every member live throughout");
    Ok(())
}
