//! `cargo xtask demo`: the seed article's two hosts behind a router, as network
//! namespaces on this machine; an agent per host; traffic across; the tables; a
//! verdict. Everything is torn down at the end, on failure and on Ctrl-C.

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail, ensure};
use overlay_tests::{
    Agent, SeedTopology, TempDir, TopologyOptions, netns_path, ping, sh, tcp_transfer, write_config,
};

const PREFIX: &str = "demo";
const PIN_ROOT: &str = "/sys/fs/bpf/overlay";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Between steps: stop if Ctrl-C was pressed; the guards then tear down.
fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

struct Container {
    name: &'static str,
    node: u8,
    network: &'static str,
    ip: &'static str,
}

impl Container {
    fn mac(&self) -> String {
        let o: Vec<u8> = self
            .ip
            .split('.')
            .map(|b| b.parse().expect("an IPv4 literal"))
            .collect();
        format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    }
    fn ns(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }
}

/// uber-net (VNI 4097) as in the article, and other-net (VNI 4098) on the same
/// subnet: only the VNI separates them.
const CONTAINERS: [Container; 4] = [
    Container {
        name: "c1",
        node: 1,
        network: "uber-net",
        ip: "10.0.0.3",
    },
    Container {
        name: "c2",
        node: 2,
        network: "uber-net",
        ip: "10.0.0.4",
    },
    Container {
        name: "c3",
        node: 1,
        network: "other-net",
        ip: "10.0.0.13",
    },
    Container {
        name: "c4",
        node: 2,
        network: "other-net",
        ip: "10.0.0.14",
    },
];
const VTEPS: [&str; 2] = ["172.31.1.5", "192.168.1.5"];

fn node_config(node: u8) -> String {
    let mut s = format!("node = \"{PREFIX}-node{node}\"\nunderlay = \"eth0\"\n");
    s += "[[network]]\nname = \"uber-net\"\nvni = 4097\nsubnet = \"10.0.0.0/24\"\n";
    s += "[[network]]\nname = \"other-net\"\nvni = 4098\nsubnet = \"10.0.0.0/24\"\n";
    for c in &CONTAINERS {
        if c.node == node {
            s += &format!(
                "[[endpoint]]\nnetwork = \"{}\"\nnetns = \"{}\"\nip = \"{}\"\n",
                c.network,
                c.ns(),
                c.ip
            );
        } else {
            s += &format!(
                "[[remote]]\nnetwork = \"{}\"\nip = \"{}\"\nmac = \"{}\"\nvtep = \"{}\"\n",
                c.network,
                c.ip,
                c.mac(),
                VTEPS[usize::from(c.node - 1)]
            );
        }
    }
    s
}

pub fn run(binary: &Path) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    remove_leftovers();
    // The guards inside have torn everything down by the time scenario returns.
    let result = scenario(binary);
    match &result {
        Ok(summary) => println!("\ndemo: PASS ({summary})"),
        Err(_) if INTERRUPTED.load(Ordering::Relaxed) => {
            println!("\ndemo: INTERRUPTED (everything it created was removed)");
            bail!("interrupted");
        }
        Err(e) => println!("\ndemo: FAIL ({e:#})"),
    }
    result.map(|_| ())
}

/// What an earlier demo that was killed outright may have left.
fn remove_leftovers() {
    let names = sh("ip netns list").unwrap_or_default();
    for ns in names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
    {
        println!("removing leftover namespace {ns}");
        let _ = sh(&format!("ip netns del {ns}"));
    }
    for node in [1, 2] {
        let _ = std::fs::remove_dir_all(format!("{PIN_ROOT}/{PREFIX}-node{node}"));
    }
}

fn step(title: &str) -> Result<()> {
    checkpoint()?;
    println!("\n== {title}");
    Ok(())
}

fn scenario(binary: &Path) -> Result<String> {
    step("topology: router joining 172.31.1.0/24 (node1) and 192.168.1.0/24 (node2)")?;
    let mut topology = SeedTopology::create(PREFIX, TopologyOptions::default())?;
    for c in &CONTAINERS {
        topology.container(c.name)?;
        println!(
            "container {} ({}, {}) on node{}",
            c.ns(),
            c.network,
            c.ip,
            c.node
        );
    }
    let dir = TempDir::new(PREFIX)?;

    step("agents: one per host, decap tc")?;
    let mut agents = Vec::new();
    for node in [1u8, 2] {
        let config = write_config(dir.path(), &format!("node{node}.toml"), &node_config(node))?;
        let pin_dir = Path::new(PIN_ROOT).join(format!("{PREFIX}-node{node}"));
        agents.push(Agent::start(
            &format!("{PREFIX}n{node}"),
            binary,
            &config,
            &pin_dir,
            &[],
        )?);
        println!(
            "node{node}: agent ready, maps pinned in {}",
            pin_dir.display()
        );
    }

    let [c1, c2, c3, c4] = &CONTAINERS;
    step("ping across the overlay, both ways")?;
    for (from, to) in [(c1, c2), (c2, c1), (c3, c4)] {
        let stats = ping(&from.ns(), to.ip, 3, &[])?;
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

    step("isolation: c1 (uber-net) must not reach c4 (other-net), same subnet")?;
    let stats = ping(&c1.ns(), c4.ip, 2, &[])?;
    println!(
        "c1 -> c4 ({}): {}/{} replies",
        c4.ip, stats.received, stats.transmitted
    );
    ensure!(stats.received == 0, "c1 reached another network");

    step("TCP: 20 MB from c1 to c2, every byte checked; then iperf3 for 3 s")?;
    tcp_transfer(&c2.ns(), c2.ip, &c1.ns(), 20 * 1024 * 1024)?;
    println!("20 MB arrived intact");
    checkpoint()?;
    let throughput = iperf3(&c2.ns(), c2.ip, &c1.ns())?;
    println!("iperf3 c1 -> c2: {throughput:.2} Gbit/s");

    for node in [1u8, 2] {
        for table in ["fdb", "neigh", "stats"] {
            step(&format!("node{node}: overlay {table}"))?;
            let out = Command::new("nsenter")
                .arg(format!(
                    "--net={}",
                    netns_path(&format!("{PREFIX}n{node}")).display()
                ))
                .arg(binary)
                .args([table, "--node", &format!("{PREFIX}-node{node}")])
                .output()?;
            ensure!(
                out.status.success(),
                "overlay {table}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }

    step("teardown")?;
    for agent in agents {
        let status = agent.stop()?;
        ensure!(status.success(), "an agent exited with {status}");
    }
    drop(topology);
    println!("agents stopped; veths, programs, pins and namespaces removed");
    Ok(format!(
        "ping both ways, VNIs isolated, 20 MB TCP intact, iperf3 {throughput:.2} Gbit/s"
    ))
}

/// Throughput of a 3 s iperf3 run from `client_ns` to a server in `server_ns`.
fn iperf3(server_ns: &str, server_ip: &str, client_ns: &str) -> Result<f64> {
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", "3", "-J",
        ])
        .output()
        .context("running iperf3 -c")?;
    let _ = server.kill();
    let _ = server.wait();
    ensure!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "bits_per_second" of end.sum_received, without pulling in a JSON parser.
    let received = text
        .find("\"sum_received\"")
        .context("no sum_received in iperf3's output")?;
    let field = text[received..]
        .find("\"bits_per_second\":")
        .context("no bits_per_second")?
        + received;
    let value: String = text[field + 18..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    Ok(value.parse::<f64>().context("parsing bits_per_second")? / 1e9)
}
