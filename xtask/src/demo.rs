//! `cargo xtask demo`: the seed article's two hosts behind a router, as network
//! namespaces on this machine; an agent per host that learns the other's
//! containers through authenticated gossip; a container added at run time
//! through the CLI; traffic across; the tables; a verdict. Everything is torn
//! down at the end, on failure and on Ctrl-C.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use overlay_tests::{
    Agent, GOSSIP_PORT, NODE1_VTEP, NODE2_VTEP, SeedTopology, TempDir, TopologyOptions, cli_at, ip,
    netns_path, output_ok, ping, run_dir_for, tcp_transfer, wait_until, write_config,
};

const PREFIX: &str = "demo";
const PIN_ROOT: &str = "/sys/fs/bpf/overlay";
const TRANSFER_BYTES: u64 = 200 * 1024 * 1024;

struct Container {
    name: &'static str,
    node: u8,
    network: &'static str,
    ip: Ipv4Addr,
}

impl Container {
    fn ns(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }
}

/// uber-net (VNI 4097) as in the article, and other-net (VNI 4098) on the same
/// subnet, so that only the VNI keeps c1 from reaching c4: with separate subnets
/// the kernel would refuse to route before the overlay had anything to show.
const CONTAINERS: [Container; 4] = [
    Container {
        name: "c1",
        node: 1,
        network: "uber-net",
        ip: Ipv4Addr::new(10, 0, 0, 3),
    },
    Container {
        name: "c2",
        node: 2,
        network: "uber-net",
        ip: Ipv4Addr::new(10, 0, 0, 4),
    },
    Container {
        name: "c3",
        node: 1,
        network: "other-net",
        ip: Ipv4Addr::new(10, 0, 0, 13),
    },
    Container {
        name: "c4",
        node: 2,
        network: "other-net",
        ip: Ipv4Addr::new(10, 0, 0, 14),
    },
];

fn node_ns(node: u8) -> String {
    format!("{PREFIX}n{node}")
}

fn pin_dir(node: u8) -> PathBuf {
    Path::new(PIN_ROOT).join(format!("{PREFIX}-node{node}"))
}

/// The container added at run time, through node2's API.
const LATE_CONTAINER: &str = "c5";

/// Node `node`'s cluster file: its networks and containers, and gossip with the
/// other node; no `[[remote]]`: gossip tells each node the other's containers.
fn node_config(node: u8, key_file: &Path) -> String {
    let (own, other) = if node == 1 {
        (NODE1_VTEP, NODE2_VTEP)
    } else {
        (NODE2_VTEP, NODE1_VTEP)
    };
    let mut s = format!("node = \"{PREFIX}-node{node}\"\nunderlay = \"eth0\"\n");
    s += "\n[[network]]\nname = \"uber-net\"\nvni = 4097\nsubnet = \"10.0.0.0/24\"\n";
    s += "\n[[network]]\nname = \"other-net\"\nvni = 4098\nsubnet = \"10.0.0.0/24\"\n";
    for c in &CONTAINERS {
        if c.node == node {
            s += &format!(
                "\n[[endpoint]]\nnetwork = \"{}\"\nnetns = \"{}\"\nip = \"{}\"\n",
                c.network,
                c.ns(),
                c.ip
            );
        }
    }
    s += &format!(
        "\n[cluster]\nlisten = \"{own}:{GOSSIP_PORT}\"\nseeds = [\"{other}:{GOSSIP_PORT}\"]\nkey_file = \"{}\"\n",
        key_file.display()
    );
    s
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The first signal asks the demo to stop after the current step, its guards
/// tearing down. A second one quits at once; the next demo removes what is left.
extern "C" fn on_signal(_: libc::c_int) {
    let (message, quit): (&[u8], bool) = if INTERRUPTED.swap(true, Ordering::Relaxed) {
        (
            b"\ndemo: quitting now; the next `cargo xtask demo` removes what is left\n",
            true,
        )
    } else {
        (
            b"\ndemo: interrupted; tearing down after this step (again to quit at once)\n",
            false,
        )
    };
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        if quit {
            libc::_exit(130);
        }
    }
}

/// Between steps: stop if a signal came; the guards then tear down.
fn step(title: &str) -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    println!("\n== {title}");
    Ok(())
}

pub fn run(binary: &Path) -> Result<()> {
    // SAFETY: the handler only touches an atomic and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    remove_leftovers();
    // The guards inside have torn everything down by the time scenario returns.
    let mut result = scenario(binary);
    let left = leftovers();
    if !left.is_empty() {
        let leak = format!("left behind: {}", left.join(", "));
        result = Err(match result {
            Ok(_) => anyhow!(leak),
            Err(e) => e.context(leak),
        });
    }
    match result {
        Ok(summary) => {
            println!("\ndemo: PASS ({summary})");
            Ok(())
        }
        Err(_) if INTERRUPTED.load(Ordering::Relaxed) && left.is_empty() => {
            println!("\ndemo: INTERRUPTED (everything it created was removed)");
            bail!("interrupted")
        }
        Err(e) => {
            println!("\ndemo: FAIL ({e:#})");
            bail!("the demo failed")
        }
    }
}

/// What this demo creates outside its temporary directory: namespaces and pins.
fn demo_objects() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = ["rt", "n1", "n2", LATE_CONTAINER]
        .into_iter()
        .chain(CONTAINERS.iter().map(|c| c.name))
        .map(|name| netns_path(&format!("{PREFIX}{name}")))
        .collect();
    paths.extend([1, 2].map(pin_dir));
    paths.extend([1, 2].map(|n| run_dir_for(&pin_dir(n))));
    paths
}

fn leftovers() -> Vec<String> {
    demo_objects()
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

/// What a demo that was killed outright left behind.
fn remove_leftovers() {
    // Its scratch directory, named by TempDir as overlay-<tag><unique suffix>.
    let scratch = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("overlay-{PREFIX}"))
            })
        });
    for path in demo_objects()
        .into_iter()
        .filter(|p| p.exists())
        .chain(scratch)
    {
        println!("removing {} (left by an earlier demo)", path.display());
        if path.starts_with("/var/run/netns") {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let _ = ip(&format!("netns del {name}"));
        } else {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn scenario(binary: &Path) -> Result<String> {
    step("topology: a router joining 172.31.1.0/24 (node1) and 192.168.1.0/24 (node2)")?;
    let mut topology = SeedTopology::create(PREFIX, TopologyOptions::default())?;
    println!(
        "node1 = netns {} (eth0 {NODE1_VTEP}), node2 = netns {} (eth0 {NODE2_VTEP}), router = netns {}",
        topology.node(1),
        topology.node(2),
        topology.router()
    );
    for c in &CONTAINERS {
        topology.container(c.name)?;
        println!(
            "container {:<7} {:<9} {:<10} on node{}",
            c.ns(),
            c.network,
            c.ip,
            c.node
        );
    }
    let dir = TempDir::new(PREFIX)?;
    let key_file = dir.path().join("cluster.key");
    output_ok(
        Command::new(binary)
            .args(["keygen", "--output"])
            .arg(&key_file),
    )?;

    step("agents: one per node, gossiping under a shared cluster key")?;
    println!("cluster key: {} (overlay keygen)", key_file.display());
    print!("node1's cluster file:\n{}", node_config(1, &key_file));
    let mut agents = Vec::new();
    for node in [1u8, 2] {
        let config = write_config(
            dir.path(),
            &format!("node{node}.toml"),
            &node_config(node, &key_file),
        )?;
        agents.push(
            Agent::start(&node_ns(node), binary, &config, &pin_dir(node), &[])
                .with_context(|| format!("starting node{node}'s agent"))?,
        );
        println!(
            "node{node}: agent ready, maps pinned in {}",
            pin_dir(node).display()
        );
    }

    let api = |node: u8, args: &[&str]| cli_at(&agents[usize::from(node) - 1].socket(), args);
    step("gossip: each node learns the other's containers")?;
    let learned = wait_until(
        Duration::from_secs(10),
        "both nodes know all 4 containers",
        || {
            for node in [1u8, 2] {
                let list: serde_json::Value =
                    serde_json::from_str(&api(node, &["endpoint", "ls", "--json"])?)?;
                if list.as_array().map_or(0, Vec::len) != CONTAINERS.len() {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    println!("converged {learned:.1?} after the second agent was ready");
    println!("$ overlay members   (on node1)");
    print!("{}", api(1, &["members"])?);
    println!("$ overlay endpoint ls   (on node1)");
    print!("{}", api(1, &["endpoint", "ls"])?);

    let [c1, c2, c3, c4] = &CONTAINERS;
    step("ping across the overlay, both ways, in both networks")?;
    for (from, to) in [(c1, c2), (c2, c1), (c3, c4), (c4, c3)] {
        let stats = ping(&from.ns(), &to.ip.to_string(), 3, &[])?;
        println!(
            "{} -> {} ({}): {}/{} replies",
            from.name, to.name, to.ip, stats.received, stats.transmitted
        );
        ensure!(
            stats.received == stats.transmitted,
            "{} could not reach {}",
            from.name,
            to.name
        );
    }

    step("isolation: c1 (uber-net) must not reach c4 (other-net) on the same subnet")?;
    let stats = ping(&c1.ns(), &c4.ip.to_string(), 3, &[])?;
    println!(
        "c1 -> c4 ({}): {}/{} replies",
        c4.ip, stats.received, stats.transmitted
    );
    ensure!(
        stats.received == 0,
        "c1 reached another network's container"
    );

    step("a container joins at run time: `overlay endpoint add` on node2, address allocated")?;
    let late = topology.container(LATE_CONTAINER)?.name.clone();
    let added: serde_json::Value = serde_json::from_str(&api(
        2,
        &[
            "endpoint",
            "add",
            "--network",
            "uber-net",
            "--netns",
            &late,
            "--json",
        ],
    )?)?;
    let late_ip = added["ip"]
        .as_str()
        .context("no ip in the answer")?
        .to_owned();
    println!(
        "{late}: {late_ip} ({}) on node2, from node2's address block",
        added["mac"].as_str().unwrap_or("?")
    );
    let stats = wait_until(
        Duration::from_secs(5),
        "c1 reaches the new container",
        || Ok(ping(&c1.ns(), &late_ip, 1, &[])?.received == 1),
    )?;
    println!("c1 -> {late} ({late_ip}): reachable {stats:.1?} after the add");
    api(
        2,
        &["endpoint", "rm", "--network", "uber-net", "--netns", &late],
    )?;
    println!("$ overlay endpoint rm --network uber-net --netns {late}: removed");

    step("TCP: 200 MB from c1 to c2, every byte checked")?;
    let report = tcp_transfer(&c2.ns(), &c2.ip.to_string(), &c1.ns(), TRANSFER_BYTES)?;
    let gbit = report.gbit_per_s;
    println!(
        "{} bytes arrived intact in {:.2} s: {gbit:.2} Gbit/s",
        report.bytes, report.secs
    );

    for node in [1u8, 2] {
        for table in ["fdb", "neigh", "stats"] {
            step(&format!("node{node}: overlay {table}"))?;
            let out = output_ok(
                Command::new("nsenter")
                    .arg(format!("--net={}", netns_path(&node_ns(node)).display()))
                    .arg(binary)
                    .arg(table)
                    .arg("--pin-dir")
                    .arg(pin_dir(node)),
            )?;
            print!("{out}");
        }
    }

    step("teardown")?;
    for agent in agents {
        let status = agent.stop()?;
        ensure!(status.success(), "an agent exited with {status}");
    }
    drop(topology);
    println!("agents stopped (veths, programs and pins removed), namespaces deleted");
    Ok(format!(
        "gossip converged, ping both ways, isolation holds, a run-time container joined, \
         200 MB TCP intact at {gbit:.2} Gbit/s"
    ))
}
