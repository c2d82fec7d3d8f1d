//! `cargo xtask demo --containers`: the seed article's two hosts again, run as
//! Docker and Podman users run them. A dockerd in each host's namespace (its
//! own data root, socket and private /run), each host's agent serving it the
//! `overlay-ebpf` network and IPAM drivers, and Podman on node2 with
//! overlay-cni. One `docker network create` on node1 makes uber-net on both
//! hosts; Docker containers on both hosts and a Podman container on node2
//! reach each other and a host outside the overlay (masqueraded to their
//! host's address); then they are removed as a user removes them. The test
//! bed's guards tear down the rest, on failure and on Ctrl-C too.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Result, ensure};
use overlay_tests::{
    Capture, DockerOverlay, DockerdOptions, NODE1_VTEP, NODE2_VTEP, OUTSIDE_IP, Podman,
    ipv4_sources_to, netns_handle, ping, scenario::Names, tcp_transfer, wait_until,
};

use super::{PREFIX, step};

const NET: &str = "uber-net";
const SUBNET: &str = "10.0.9.0/24";
/// The Docker containers: (name, node).
const DOCKER_CONTAINERS: [(&str, u8); 2] = [("c1", 1), ("c2", 2)];
const PODMAN_NODE: u8 = 2;
const TRANSFER_BYTES: u64 = 50 * 1024 * 1024;

/// The namespaces this demo makes beyond the plain demo's: the host outside
/// and the handles on the Docker containers' namespaces.
pub fn namespaces() -> Vec<String> {
    let mut names = vec![Names::new(PREFIX).outside_ns()];
    names.extend(DOCKER_CONTAINERS.map(|(c, _)| netns_handle(PREFIX, c)));
    names
}

/// A killed demo's Podman containers, removed by Podman in its node's
/// namespace, which must still exist: called before the namespaces go.
pub fn remove_podman_leftovers(scratch: &Path) {
    overlay_tests::remove_podman_leftovers(
        scratch,
        &Names::new(PREFIX).node_ns(PODMAN_NODE.into()),
    );
}

/// The replies busybox's ping counted ("3 packets transmitted, 3 packets
/// received, 0% packet loss").
fn replies(out: &str) -> u32 {
    out.lines()
        .find(|l| l.contains("packets received"))
        .and_then(|l| l.split(", ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

pub fn scenario(binary: &Path) -> Result<String> {
    step(
        "topology and engines: a dockerd in each host's namespace, an agent per host \
         serving it the overlay-ebpf drivers, gossiping under a cluster key",
    )?;
    let mut d = DockerOverlay::start_as(PREFIX, binary, &DockerdOptions::default(), &[])?;
    let outside = d.overlay.topology.outside_host()?.to_owned();
    for node in [1u8, 2] {
        println!(
            "node{node} = netns {} (eth0 {}): dockerd {} at {}, agent ready",
            d.overlay.node_ns(node),
            if node == 1 { NODE1_VTEP } else { NODE2_VTEP },
            d.docker(node, &["version", "--format", "{{.Server.Version}}"])?
                .trim(),
            d.dockerd(node).socket().display(),
        );
    }
    println!("outside host = netns {outside} ({OUTSIDE_IP}), behind the router");
    print!(
        "node1's cluster file:\n{}",
        std::fs::read_to_string(d.overlay.config_path(1))?
    );

    step("Podman on node2: its uber-net is a CNI configuration list with overlay-cni")?;
    // Declared after the overlay, so dropped before it: Podman's containers
    // go (CNI DEL) while the agents still answer.
    let mut podman = Podman::on_overlay(&d.overlay, PODMAN_NODE, NET)?;
    let conflist = podman.network_dir().join(format!("{NET}.conflist"));
    print!(
        "{}:\n{}\n",
        conflist.display(),
        std::fs::read_to_string(&conflist)?
    );

    step(&format!(
        "$ docker network create -d overlay-ebpf --ipam-driver overlay-ebpf --subnet {SUBNET} {NET}   (node1)"
    ))?;
    d.create_network(1, NET, SUBNET, &[])?;
    let appeared = d.wait_network(2, NET, true, Duration::from_secs(10))?;
    println!("node2's dockerd has {NET} {appeared:.1?} later; nobody typed anything on node2");
    println!("$ docker network ls --filter driver=overlay-ebpf   (node2)");
    print!(
        "{}",
        d.docker(2, &["network", "ls", "--filter", "driver=overlay-ebpf"])?
    );

    step(&format!(
        "$ docker run --network {NET} on both nodes, $ podman run --network {NET} on node2"
    ))?;
    let mut docker = Vec::new();
    for (name, node) in DOCKER_CONTAINERS {
        let c = d.run(node, name, NET, &[])?;
        println!("{name}: Docker on node{node}, {} ({})", c.ip, c.mac);
        docker.push(c);
    }
    let p2 = podman.run("p2", NET, &[])?;
    let p2_ip = podman.ip("p2", NET)?;
    println!(
        "p2: Podman on node{PODMAN_NODE}, {p2_ip} (namespace {})",
        p2.netns.display()
    );
    println!("$ overlay endpoint ls   (node1's agent)");
    print!("{}", d.overlay.cli(1, &["endpoint", "ls"])?);
    let [c1, c2] = [&docker[0], &docker[1]];

    step("ping across the overlay, from inside the containers")?;
    let learned = wait_until(Duration::from_secs(10), "c1 reaches c2 and p2", || {
        Ok(ping(&c1.netns, &c2.ip.to_string(), 1, &[])?.received == 1
            && ping(&c1.netns, &p2_ip.to_string(), 1, &[])?.received == 1)
    })?;
    println!("c1 reached both {learned:.1?} after the last run returned");
    let (c1_ip, c2_ip, p2_ip) = (c1.ip.to_string(), c2.ip.to_string(), p2_ip.to_string());
    let pings = [
        (
            "c1 (Docker, node1)",
            "c2 (Docker, node2)",
            &c2_ip,
            d.exec(c1, &ping3(&c2_ip)),
        ),
        (
            "c2 (Docker, node2)",
            "c1 (Docker, node1)",
            &c1_ip,
            d.exec(c2, &ping3(&c1_ip)),
        ),
        (
            "c1 (Docker, node1)",
            "p2 (Podman, node2)",
            &p2_ip,
            d.exec(c1, &ping3(&p2_ip)),
        ),
        (
            "p2 (Podman, node2)",
            "c1 (Docker, node1)",
            &c1_ip,
            podman.exec("p2", &ping3(&c1_ip)),
        ),
    ];
    for (from, to, ip, out) in pings {
        let got = replies(&out.unwrap_or_default());
        println!("{from} -> {to} {ip}: {got}/3 replies");
        ensure!(got == 3, "{from} could not reach {to}");
    }

    step("TCP: 50 MB from p2 (Podman, node2) to c1 (Docker, node1), every byte checked")?;
    let report = tcp_transfer(&c1.netns, &c1_ip, &p2.netns_name(), TRANSFER_BYTES)?;
    let gbit = report.gbit_per_s;
    println!(
        "{} bytes arrived intact in {:.2} s: {gbit:.2} Gbit/s",
        report.bytes, report.secs
    );

    step("the way out: c1 and p2 reach the outside host, masqueraded to their host's address")?;
    let outside_ip: Ipv4Addr = OUTSIDE_IP.parse()?;
    let capture = Capture::start(&outside, "eth0")?;
    let from_c1 = replies(&d.exec(c1, &ping3(OUTSIDE_IP)).unwrap_or_default());
    let from_p2 = replies(&podman.exec("p2", &ping3(OUTSIDE_IP)).unwrap_or_default());
    let seen = ipv4_sources_to(&capture.stop()?, outside_ip);
    println!("c1 -> {OUTSIDE_IP}: {from_c1}/3 replies; p2 -> {OUTSIDE_IP}: {from_p2}/3 replies");
    println!(
        "the outside host saw the packets come from: {}",
        seen.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    ensure!(
        from_c1 == 3 && from_p2 == 3,
        "a container could not get out"
    );
    let vteps: BTreeSet<Ipv4Addr> = [NODE1_VTEP.parse()?, NODE2_VTEP.parse()?].into();
    ensure!(
        seen == vteps,
        "the outside host should see only the two hosts' addresses"
    );

    step(&format!(
        "teardown as a user does it: docker rm -f, podman rm, docker network rm {NET} (node2)"
    ))?;
    for c in &docker {
        d.remove(c)?;
    }
    podman.rm("p2")?;
    d.docker(2, &["network", "rm", NET])?;
    let gone = d.wait_network(1, NET, false, Duration::from_secs(10))?;
    println!(
        "containers removed; {NET} gone from node1's dockerd {gone:.1?} after the rm on node2"
    );
    drop(podman);
    d.stop_dockerds()?;
    for agent in std::mem::take(&mut d.overlay.agents) {
        let status = agent.stop()?;
        ensure!(status.success(), "an agent exited with {status}");
    }
    drop(d);
    println!("Podman, dockerds and agents stopped; veths, programs, pins and namespaces removed");
    Ok(format!(
        "one docker network create made {NET} on both hosts, Docker and Podman containers \
         reached each other across hosts, 50 MB TCP intact at {gbit:.2} Gbit/s, both got out \
         masqueraded"
    ))
}

/// busybox's `ping -c 3` to `dst`, for an exec.
fn ping3(dst: &str) -> [&str; 6] {
    ["ping", "-c", "3", "-W", "2", dst]
}
