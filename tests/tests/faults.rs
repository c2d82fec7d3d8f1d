//! Faults survived. Injected inside the tests' own namespaces: nftables for
//! loss and partitions (this kernel has no netem), links set down, a router
//! whose MAC changes, agents killed, a FDB filled to its capacity. Each test
//! prints what it measured (`cargo test -- --nocapture` shows it).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, ensure};
use overlay_common::{FDB_KIND_GATEWAY, FDB_KIND_REMOTE, MAX_FDB_ENTRIES};
use overlay_tests::{
    Cluster, ClusterFile, Decap, NetworkSection, NftTable, Overlay, Pinger, RemoteSection, ip,
    scenario::{C1, C2, GOSSIP_PORT, UBER_NET, docker_mac},
    unique_prefix, wait_until,
};
use overlay_userspace::{dataplane::maps::Maps, model::gateway_mac};
use serde_json::Value;

/// The MACs of the remote endpoints node `pin_dir` sends to.
fn remote_macs(pin_dir: &Path) -> Result<BTreeSet<[u8; 6]>> {
    fdb_macs(pin_dir, FDB_KIND_REMOTE)
}

/// The MACs of the FDB entries of `kind` pinned under `pin_dir`.
fn fdb_macs(pin_dir: &Path, kind: u32) -> Result<BTreeSet<[u8; 6]>> {
    let maps = Maps::from_pins(pin_dir)?;
    let mut macs = BTreeSet::new();
    for entry in &maps.fdb {
        let (key, value) = entry?;
        if value.kind == kind {
            macs.insert(key.mac);
        }
    }
    Ok(macs)
}

/// A container added on host `i` through the API, its address allocated by the
/// agent: (namespace, IP, MAC).
struct Added {
    host: usize,
    ns: String,
    ip: Ipv4Addr,
    mac: [u8; 6],
}

fn add_container(c: &mut Cluster, i: usize, name: &str) -> Result<Added> {
    let ns = c.container(name)?;
    let out: Value = serde_json::from_str(&c.cli(
        i,
        &[
            "endpoint",
            "add",
            "--network",
            UBER_NET.name,
            "--netns",
            &ns,
            "--json",
        ],
    )?)?;
    let ip: Ipv4Addr = out["ip"].as_str().context("ip")?.parse()?;
    let mut mac = [0u8; 6];
    for (b, part) in mac
        .iter_mut()
        .zip(out["mac"].as_str().context("mac")?.split(':'))
    {
        *b = u8::from_str_radix(part, 16)?;
    }
    Ok(Added {
        host: i,
        ns,
        ip,
        mac,
    })
}

/// `n` hosts with uber-net in their files, all agents up.
fn cluster(tag: &str, n: usize) -> Result<Cluster> {
    let mut c = Cluster::create(&unique_prefix(tag), n)?;
    for i in 1..=n {
        let file = ClusterFile {
            networks: vec![UBER_NET.section()],
            ..c.node_file(i)
        };
        c.start_agent(i, &file, &[])?;
    }
    Ok(c)
}

/// Whether every host's FDB holds every container of the other hosts.
fn converged(c: &Cluster, n: usize, added: &[Added]) -> Result<bool> {
    for i in 1..=n {
        let have = remote_macs(&c.pin_dir(i))?;
        if added.iter().any(|a| a.host != i && !have.contains(&a.mac)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn live_members(c: &Cluster, i: usize) -> Result<usize> {
    let members: Value = serde_json::from_str(&c.cli(i, &["members", "--json"])?)?;
    let members = members["members"].as_array().context("no members")?;
    let refused: Vec<&Value> = members.iter().filter(|m| !m["refused"].is_null()).collect();
    ensure!(refused.is_empty(), "refused: {refused:?}");
    Ok(members.iter().filter(|m| m["live"] == true).count())
}

/// Three hosts against two for 30 s, then healed: each side goes on within
/// itself (nothing lost there), allocates from its own blocks (no address twice),
/// and after the heal the cluster converges within 5 s.
#[test]
fn a_partition_of_three_against_two_heals() -> Result<()> {
    const N: usize = 5;
    let mut c = cluster("fpart", N)?;
    let mut added = Vec::new();
    for i in 1..=N {
        added.push(add_container(&mut c, i, &format!("a{i}"))?);
    }
    wait_until(Duration::from_secs(10), "the cluster converged", || {
        converged(&c, N, &added)
    })?;
    let within = Pinger::start(
        &added[0].ns,
        &added[1].ip.to_string(),
        Duration::from_millis(100),
    )?;
    let across = Pinger::start(
        &added[0].ns,
        &added[3].ip.to_string(),
        Duration::from_millis(100),
    )?;

    let cut = NftTable::partition(&c.names.switch_ns(), &["p1", "p2", "p3"], &["p4", "p5"])?;
    let cut_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    // Each side adds a container while cut off, from blocks it already owns.
    added.push(add_container(&mut c, 2, "b2")?);
    added.push(add_container(&mut c, 5, "b5")?);
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut_at.elapsed()));
    let dropped = cut.dropped()?;
    drop(cut);
    let healed = SystemTime::now();
    let converge = wait_until(Duration::from_secs(5), "converged after the heal", || {
        Ok(converged(&c, N, &added)? && (1..=N).all(|i| live_members(&c, i).is_ok_and(|n| n == N)))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let within = within.stop()?;
    let across = across.stop()?;

    let ips: BTreeSet<Ipv4Addr> = added.iter().map(|a| a.ip).collect();
    ensure!(
        ips.len() == added.len(),
        "an address was handed out twice: {ips:?}"
    );
    let back = across
        .first_reply_after(healed)
        .context("no echo across the healed partition")?;
    println!(
        "partition 30 s ({dropped} frames dropped at the switch): converged {converge:?} after the heal, \
         traffic across back after {back:?}; within a side {} of {} echoes lost; across {} of {} \
         (during the partition)",
        within.lost(),
        within.transmitted,
        across.lost(),
        across.transmitted
    );
    ensure!(within.lost() == 0, "traffic within a side was lost");
    Ok(())
}

/// 20% of gossip datagrams dropped at random on every host: a new endpoint
/// still reaches every node, p95 within 2 s.
#[test]
fn gossip_under_twenty_percent_loss_still_spreads() -> Result<()> {
    const N: usize = 4;
    const ADDS: usize = 12;
    let mut c = cluster("floss", N)?;
    let losses: Vec<NftTable> = (1..=N)
        .map(|i| NftTable::udp_loss(c.host_ns(i), GOSSIP_PORT, 20))
        .collect::<Result<_>>()?;
    let mut spread = Vec::new();
    for k in 0..ADDS {
        let host = 1 + k % N;
        let a = add_container(&mut c, host, &format!("l{k}"))?;
        let started = Instant::now();
        wait_until(
            Duration::from_secs(10),
            "the endpoint reached every node",
            || {
                for i in (1..=N).filter(|&i| i != host) {
                    if !remote_macs(&c.pin_dir(i))?.contains(&a.mac) {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        spread.push(started.elapsed());
    }
    let dropped: u64 = losses.iter().map(NftTable::dropped).sum::<Result<u64>>()?;
    spread.sort();
    let p95 = spread[(spread.len() * 95).div_ceil(100) - 1];
    println!(
        "20% gossip loss ({dropped} datagrams dropped): {ADDS} endpoints reached every node, \
         p50 {:?}, p95 {p95:?}, max {:?}",
        spread[spread.len() / 2],
        spread[spread.len() - 1]
    );
    ensure!(dropped > 0, "the loss rule dropped nothing");
    ensure!(p95 <= Duration::from_secs(2), "p95 {p95:?} > 2 s");
    Ok(())
}

/// `kill -9` of node1's agent ten times in a row, each time restarted, under a
/// ping every 100 ms: at most one echo lost per kill.
#[test]
fn kill_nine_ten_times_under_ping() -> Result<()> {
    const KILLS: u64 = 10;
    let mut o = two_nodes()?;
    let pinger = Pinger::start(&o.ns(C1), &C2.ip.to_string(), Duration::from_millis(100))?;
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..KILLS {
        let left = o.agents.remove(0).kill()?;
        std::thread::sleep(Duration::from_millis(200));
        let agent = left.restart(&o.node_ns(1), &o.binary.clone(), &o.config_path(1), &[])?;
        o.agents.insert(0, agent);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = pinger.stop()?;
    println!(
        "kill -9 ×{KILLS}: {} of {} echoes lost",
        log.lost(),
        log.transmitted
    );
    ensure!(log.lost() <= KILLS, "more than one echo lost per kill");
    Ok(())
}

/// The seed topology with c1 on node1 and c2 on node2, both agents up.
fn two_nodes() -> Result<Overlay> {
    let mut o = Overlay::build_with(Decap::Tc, &[C1, C2])?;
    o.start_agent(1)?;
    o.start_agent(2)?;
    Ok(o)
}

/// Pings from c1 to c2 while `fault` runs, and returns how long after `fault`
/// said it had healed (its return value) the first echo came back.
fn recovery_after(o: &Overlay, fault: impl FnOnce() -> Result<SystemTime>) -> Result<Duration> {
    let pinger = Pinger::start(&o.ns(C1), &C2.ip.to_string(), Duration::from_millis(20))?;
    std::thread::sleep(Duration::from_millis(500));
    let healed = fault()?;
    wait_until(Duration::from_secs(10), "traffic came back", || {
        Ok(pinger.replied_since(healed))
    })?;
    let log = pinger.stop()?;
    log.first_reply_after(healed)
        .context("no echo after the fault healed")
}

/// node1's underlay loses its carrier for 5 s (the router's end of the wire is
/// down), then gets it back: traffic is back within 1 s.
#[test]
fn the_underlay_down_for_five_seconds() -> Result<()> {
    let o = two_nodes()?;
    let router = o.topology.router().to_owned();
    let back = recovery_after(&o, || {
        ip(&format!("-n {router} link set r1 down"))?;
        std::thread::sleep(Duration::from_secs(5));
        ip(&format!("-n {router} link set r1 up"))?;
        Ok(SystemTime::now())
    })?;
    println!("underlay down 5 s: traffic back {back:?} after the carrier returned");
    ensure!(
        back <= Duration::from_secs(1),
        "traffic back only after {back:?}"
    );
    Ok(())
}

/// The router's interface towards node1 gets a new MAC and announces it
/// (gratuitous ARP, as a failover router does): traffic is back within 2 s,
/// the next-hop cache notwithstanding.
#[test]
fn the_router_changes_its_mac() -> Result<()> {
    let o = two_nodes()?;
    let router = o.topology.router().to_owned();
    let back = recovery_after(&o, || {
        ip(&format!(
            "-n {router} link set r1 address 02:00:5e:00:01:01"
        ))?;
        let changed = SystemTime::now();
        overlay_tests::sh(&format!(
            "ip netns exec {router} arping -q -U -c 2 -w 2 -I r1 172.31.1.1"
        ))?;
        Ok(changed)
    })?;
    println!("router MAC changed: traffic back {back:?} after the change");
    ensure!(
        back <= Duration::from_secs(2),
        "traffic back only after {back:?}"
    );
    Ok(())
}

/// More remote endpoints than the FDB holds: the agent installs what fits
/// (this node's own endpoints and gateways first), says once in its log which map is full, `overlay
/// stats` shows it, and everything else keeps working.
#[test]
fn a_full_fdb_is_reported_once_and_the_rest_works() -> Result<()> {
    // A network of its own (a VNI above uber-net's), so its entries sort after
    // c2's and are the ones left out.
    let filler = NetworkSection::new("filler-net", UBER_NET.vni + 1000, "10.64.0.0/10");
    let mut o = Overlay::build_with(Decap::Tc, &[C1, C2])?;
    let mut file = o.node_file(1);
    file.networks.push(filler.clone());
    let extra = MAX_FDB_ENTRIES as usize;
    file.remotes.extend((0..extra).map(|n| {
        let n = u32::try_from(n).expect("fits");
        // From .2: .1 is the network's gateway.
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 2)) + n);
        RemoteSection {
            network: filler.name.clone(),
            ip,
            mac: docker_mac(ip),
            vtep: Ipv4Addr::new(192, 168, 1, 100 + u8::try_from(n % 100).expect("fits")),
        }
    }));
    let written = Instant::now();
    file.write(o.dir.path(), "node1.toml")?;
    o.start_agent_with(1, &["--reconcile-interval", "1"])?;
    let started = written.elapsed();
    o.start_agent(2)?;
    std::thread::sleep(Duration::from_secs(3));

    let log = o.agents[0].stderr();
    o.ping_both_ways(C1, C2, 3).with_context(|| {
        format!(
            "counters node1 {:?}, node2 {:?}; node1's agent:\n{log}",
            o.nonzero_counters(1).unwrap_or_default(),
            o.nonzero_counters(2).unwrap_or_default()
        )
    })?;
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("map FDB is full"))
        .collect();
    ensure!(
        reports.len() == 1,
        "FDB full reported {} times:\n{log}",
        reports.len()
    );
    let stats = o.table(1, "stats")?;
    let fill: BTreeMap<&str, &Value> = stats
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["map"].as_str()?, r)))
        .collect();
    ensure!(fill["FDB"]["full"] == true, "{stats}");
    ensure!(fill["FDB"]["entries"] == MAX_FDB_ENTRIES, "{stats}");
    // The way out is this node's own too: it goes in before the remotes.
    let gateways = fdb_macs(&o.pin_dir(1), FDB_KIND_GATEWAY)?;
    let wanted: BTreeSet<[u8; 6]> = [UBER_NET.gateway(), Ipv4Addr::new(10, 64, 0, 1)]
        .into_iter()
        .map(|ip| gateway_mac(ip).0)
        .collect();
    ensure!(
        gateways == wanted,
        "gateways in the full FDB: {gateways:02x?}, wanted {wanted:02x?}"
    );
    let text = overlay_tests::output_ok(
        std::process::Command::new(&o.binary)
            .args(["stats", "--pin-dir"])
            .arg(o.pin_dir(1)),
    )?;
    ensure!(text.contains("FULL"), "{text}");
    println!(
        "FDB full: {} entries wanted (c1, c2, the two networks' gateways and {extra} filler \
         remotes), {MAX_FDB_ENTRIES} fit; \
         agent ready {started:?} after writing the file; reported once: {}",
        extra + 4,
        reports[0]
    );
    Ok(())
}
