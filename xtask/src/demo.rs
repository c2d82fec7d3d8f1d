//! `cargo xtask demo`: the seed article's two hosts behind a router, as network
//! namespaces on this machine; an agent per host that learns the other's
//! containers through authenticated gossip; a container added at run time
//! through the CLI; traffic across; the tables; a verdict. Everything is torn
//! down at the end, on failure and on Ctrl-C. `--containers` tells the same
//! story with Docker and Podman (see `containers`).

mod containers;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use overlay_tests::{
    Decap, NODE1_VTEP, NODE2_VTEP, Overlay, TempDir, ip, netns_path, output_ok, ping,
    scenario::{C1, C2, C4, C5, Container, JOINER, Names, Scenario},
    tcp_transfer, wait_until,
};

/// Every name the demo creates starts with it, so a later demo finds what a
/// killed one left.
const PREFIX: &str = "demo";
const TRANSFER_BYTES: u64 = 200 * 1024 * 1024;

/// The scenario's uber-net (VNI 4097) as in the article, c1 on node1 and c2 on
/// node2, and other-net (VNI 4098) on the same subnet, c4 on node1 and c5 on
/// node2: only the VNI keeps c1 from reaching c5. The nodes learn each other's
/// containers by gossip, so the files list no `[[remote]]`.
const CONTAINERS: [Container; 4] = [C1, C2, C4, C5];

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

pub fn run(binary: &Path, with_container_engines: bool) -> Result<()> {
    // SAFETY: the handler only touches an atomic and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    remove_leftovers();
    // The guards inside have torn everything down by the time scenario returns.
    let mut result = if with_container_engines {
        containers::scenario(binary)
    } else {
        scenario(binary)
    };
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
    let names = Names::new(PREFIX);
    let mut paths: Vec<PathBuf> = [names.router_ns(), names.node_ns(1), names.node_ns(2)]
        .into_iter()
        .chain(
            [JOINER]
                .into_iter()
                .chain(CONTAINERS.map(|c| c.name))
                .map(|c| names.container_ns(c))
                .chain(containers::namespaces()),
        )
        .map(|ns| netns_path(&ns))
        .collect();
    paths.extend([1, 2].map(|n| names.pin_dir(n)));
    paths.extend([1, 2].map(|n| names.run_dir(n)));
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
    let scratch: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("overlay-{PREFIX}"))
            })
        })
        .collect();
    // Podman has no daemon whose namespace would hold its containers: they
    // run in namespaces of their own, which only Podman knows.
    for path in &scratch {
        containers::remove_podman_leftovers(path);
    }
    for path in demo_objects()
        .into_iter()
        .filter(|p| p.exists())
        .chain(scratch)
    {
        println!("removing {} (left by an earlier demo)", path.display());
        if path.starts_with("/var/run/netns") {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            // A killed containers demo leaves its dockerds, containerd and
            // their containers running in these namespaces.
            for pid in ip(&format!("netns pids {name}"))
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = ip(&format!("netns del {name}"));
        } else {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn scenario(binary: &Path) -> Result<String> {
    step("topology: a router joining 172.31.1.0/24 (node1) and 192.168.1.0/24 (node2)")?;
    let dir = TempDir::new(PREFIX)?;
    let key_file = dir.path().join("cluster.key");
    let scenario = Scenario::new(PREFIX, Decap::Tc)
        .with_containers(&CONTAINERS)
        .with_gossip(&key_file);
    let mut overlay = Overlay::create(scenario, dir)?;
    overlay.binary = binary.to_owned();
    println!(
        "node1 = netns {} (eth0 {NODE1_VTEP}), node2 = netns {} (eth0 {NODE2_VTEP}), router = netns {}",
        overlay.topology.node(1),
        overlay.topology.node(2),
        overlay.topology.router()
    );
    for c in CONTAINERS {
        println!(
            "container {:<7} {:<9} {:<10} on node{}",
            overlay.ns(c),
            c.network.name,
            c.ip,
            c.node
        );
    }

    step("agents: one per node, gossiping under a shared cluster key")?;
    output_ok(
        Command::new(binary)
            .args(["keygen", "--output"])
            .arg(&key_file),
    )?;
    println!("cluster key: {} (overlay keygen)", key_file.display());
    print!(
        "node1's cluster file:\n{}",
        std::fs::read_to_string(overlay.config_path(1))?
    );
    for node in [1u8, 2] {
        overlay
            .start_agent(node)
            .with_context(|| format!("starting node{node}'s agent"))?;
        println!(
            "node{node}: agent ready, maps pinned in {}",
            overlay.pin_dir(node).display()
        );
    }

    step("gossip: each node learns the other's containers")?;
    let learned = wait_until(
        Duration::from_secs(10),
        "both nodes know all 4 containers",
        || {
            for node in [1u8, 2] {
                let list: serde_json::Value =
                    serde_json::from_str(&overlay.cli(node, &["endpoint", "ls", "--json"])?)?;
                if list.as_array().map_or(0, Vec::len) != CONTAINERS.len() {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    println!("converged {learned:.1?} after the second agent was ready");
    println!("$ overlay members   (on node1)");
    print!("{}", overlay.cli(1, &["members"])?);
    println!("$ overlay endpoint ls   (on node1)");
    print!("{}", overlay.cli(1, &["endpoint", "ls"])?);

    let [c1, c2, c4, c5] = CONTAINERS;
    step("ping across the overlay, both ways, in both networks")?;
    for (from, to) in [(c1, c2), (c2, c1), (c4, c5), (c5, c4)] {
        let stats = ping(&overlay.ns(from), &to.ip.to_string(), 3, &[])?;
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

    step("isolation: c1 (uber-net) must not reach c5 (other-net) on the same subnet")?;
    let stats = ping(&overlay.ns(c1), &c5.ip.to_string(), 3, &[])?;
    println!(
        "c1 -> c5 ({}): {}/{} replies",
        c5.ip, stats.received, stats.transmitted
    );
    ensure!(
        stats.received == 0,
        "c1 reached another network's container"
    );

    step("a container joins at run time: `overlay endpoint add` on node2, address allocated")?;
    let joiner = overlay.topology.container(JOINER)?.name.clone();
    let uber_net = c1.network.name;
    let added: serde_json::Value = serde_json::from_str(&overlay.cli(
        2,
        &[
            "endpoint",
            "add",
            "--network",
            uber_net,
            "--netns",
            &joiner,
            "--json",
        ],
    )?)?;
    let joiner_ip = added["ip"]
        .as_str()
        .context("no ip in the answer")?
        .to_owned();
    println!(
        "{joiner}: {joiner_ip} ({}) on node2, from node2's address block",
        added["mac"].as_str().unwrap_or("?")
    );
    let stats = wait_until(
        Duration::from_secs(5),
        "c1 reaches the new container",
        || Ok(ping(&overlay.ns(c1), &joiner_ip, 1, &[])?.received == 1),
    )?;
    println!("c1 -> {joiner} ({joiner_ip}): reachable {stats:.1?} after the add");
    overlay.cli(
        2,
        &["endpoint", "rm", "--network", uber_net, "--netns", &joiner],
    )?;
    println!("$ overlay endpoint rm --network {uber_net} --netns {joiner}: removed");

    step("TCP: 200 MB from c1 to c2, every byte checked")?;
    let report = tcp_transfer(
        &overlay.ns(c2),
        &c2.ip.to_string(),
        &overlay.ns(c1),
        TRANSFER_BYTES,
    )?;
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
                    .arg(format!(
                        "--net={}",
                        netns_path(&overlay.node_ns(node)).display()
                    ))
                    .arg(binary)
                    .arg(table)
                    .arg("--pin-dir")
                    .arg(overlay.pin_dir(node)),
            )?;
            print!("{out}");
        }
    }

    step("teardown")?;
    for agent in std::mem::take(&mut overlay.agents) {
        let status = agent.stop()?;
        ensure!(status.success(), "an agent exited with {status}");
    }
    drop(overlay);
    println!("agents stopped (veths, programs and pins removed), namespaces deleted");
    Ok(format!(
        "gossip converged, ping both ways, isolation holds, a run-time container joined, \
         200 MB TCP intact at {gbit:.2} Gbit/s"
    ))
}
