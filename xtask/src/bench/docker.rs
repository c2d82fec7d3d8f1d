//! `cargo xtask bench --docker`: Docker containers on the overlay, beside the
//! hand-built cases, in one run, interleaved (its own command, so that the
//! default bench keeps its time: eight dockerds, twelve minutes here).
//!
//! On each wire and topology of [`NETS`], four beds:
//! - `ebpf-tc` and `kernel-vxlan`, hand-built as in the main bench;
//! - `docker-ebpf`: a dockerd per node, both agents serving the overlay-ebpf
//!   drivers (the test bed's `DockerOverlay`), `docker network create -d
//!   overlay-ebpf` and a container on each node;
//! - `docker-swarm`: Docker's own overlay, the two dockerds in a swarm formed on
//!   the underlay addresses (`DockerSwarm`), an attachable overlay network.
//!
//! and on the veth wire the way out, from node1 of the `docker-ebpf` bed to the
//! seed's outside host: `egress-ebpf` (gateway and masquerade by the agent)
//! against `egress-bridge` (a plain Docker bridge network on the same dockerd).
//!
//! iperf3 runs in the containers, from an image made offline (busybox and
//! Debian's iperf3); the TCP RR loop runs in the containers' namespaces (it
//! is this process's threads, as in the main bench). Targets are reported
//! (met or missed), never asserted: timings here are noisy.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, path::Path, time::Instant};

use anyhow::{Context as _, Result, bail, ensure};
use overlay_tests::{
    DOCKER_CLIENT, DockerContainer, DockerOverlay, DockerSwarm, Dockerd, DockerdOptions,
    IPERF3_IMAGE, OUTSIDE_IP, SeedTopology, ping, unique_prefix,
};

use super::{
    cases::{Case, IPERF_PORT, Kind, Net, RR_PORT, ServerGuard, Spec},
    cni::verdict,
    metrics,
    report::{Stat, fmt, machine},
};

/// The wires and topologies measured: point to point and switched segments,
/// as issue 13 reported Docker's overlay on both.
const NETS: [Net; 2] = [Net::VETH, Net::SWITCHED];
const NET: &str = "uber-net";
const SWARM_NET: &str = "swarm-net";
const SUBNET: &str = "10.0.9.0/24";
const BRIDGE_NET: &str = "plain-bridge";
const BRIDGE_SUBNET: &str = "10.0.99.0/24";
/// Where the machine's iperf3 serves inside a Docker container's namespace.
const HOST_IPERF_PORT: u16 = 5202;
/// Docker containers on the overlay within 5% of the hand-built ebpf-tc case.
const DOCKER_EBPF_TARGET: f64 = 0.95;

struct Plan {
    rounds: u32,
    tcp_secs: u32,
    rr_secs: f64,
}

const FULL: Plan = Plan {
    rounds: 5,
    tcp_secs: 4,
    rr_secs: 3.0,
};

const QUICK: Plan = Plan {
    rounds: 2,
    tcp_secs: 1,
    rr_secs: 1.0,
};

/// The metrics, in table order: (key, heading).
const COLUMNS: [(&str, &str); 6] = [
    ("tcp1_gbps", "TCP 1 stream Gbit/s"),
    ("tcp4_gbps", "TCP 4 streams Gbit/s"),
    ("tcp1_cpu_s_per_gbit", "CPU-s per Gbit (TCP 1)"),
    ("rr_tps", "TCP RR 1 B trans/s"),
    ("rr_p50_us", "RR p50 µs"),
    ("rr_p99_us", "RR p99 µs"),
];

/// One measured path: an iperf3 client and server, and an RR pair.
struct Point {
    case: &'static str,
    net: Net,
    /// Runs iperf3's client: `ip netns exec NS` or `docker exec CONTAINER`.
    launcher: Vec<String>,
    client_ns: String,
    server_ns: String,
    server_ip: Ipv4Addr,
    iperf_port: u16,
    /// The way out is measured with one stream (and RR) only.
    four_streams: bool,
    /// The RR loop is this process's threads: measured once per path, with
    /// the machine's iperf3 (in the containers', the figures would repeat).
    rr: bool,
    samples: BTreeMap<&'static str, Vec<f64>>,
}

impl Point {
    fn label(&self) -> String {
        format!("{} [{}]", self.case, self.net.name())
    }

    fn hand_built(case: &Case) -> Point {
        Point {
            case: case.spec.kind.name(),
            net: case.spec.net,
            launcher: ["ip", "netns", "exec", &case.client_ns()]
                .map(str::to_owned)
                .to_vec(),
            client_ns: case.client_ns(),
            server_ns: case.server_ns(),
            server_ip: case.server_ip,
            iperf_port: IPERF_PORT,
            four_streams: true,
            rr: true,
            samples: BTreeMap::new(),
        }
    }

    /// From the container `client` (through its node's `dockerd`) to
    /// `server_ip` in `server_ns`.
    fn docker(
        case: &'static str,
        net: Net,
        dockerd: &Dockerd,
        client: &DockerContainer,
        server_ns: &str,
        server_ip: Ipv4Addr,
    ) -> Point {
        let socket = format!("unix://{}", dockerd.socket().display());
        Point {
            case,
            net,
            launcher: [DOCKER_CLIENT, "-H", &socket, "exec", &client.id]
                .map(str::to_owned)
                .to_vec(),
            client_ns: client.netns.clone(),
            server_ns: server_ns.to_owned(),
            server_ip,
            iperf_port: IPERF_PORT,
            four_streams: server_ip.to_string() != OUTSIDE_IP,
            rr: server_ip.to_string() == OUTSIDE_IP,
            samples: BTreeMap::new(),
        }
    }

    /// The same path as [`Point::docker`]'s, measured by the machine's iperf3
    /// (its server on [`HOST_IPERF_PORT`] in the server's namespace) as in the
    /// hand-built cases: outside the containers' cgroups, whose CPU share on a
    /// loaded machine is not the datapath's doing.
    fn in_namespaces(
        case: &'static str,
        net: Net,
        client: &DockerContainer,
        server: &DockerContainer,
    ) -> Point {
        Point {
            case,
            net,
            launcher: ["ip", "netns", "exec", &client.netns]
                .map(str::to_owned)
                .to_vec(),
            client_ns: client.netns.clone(),
            server_ns: server.netns.clone(),
            server_ip: server.ip,
            iperf_port: HOST_IPERF_PORT,
            four_streams: true,
            rr: true,
            samples: BTreeMap::new(),
        }
    }

    fn measure(&mut self, plan: &Plan) -> Result<()> {
        let (ip, port) = (self.server_ip, self.iperf_port);
        let t1 = metrics::iperf_tcp_by(&self.launcher, ip, port, plan.tcp_secs, 1)
            .context("TCP, 1 stream")?;
        let t4 = if self.four_streams {
            Some(
                metrics::iperf_tcp_by(&self.launcher, ip, port, plan.tcp_secs, 4)
                    .context("TCP, 4 streams")?,
            )
        } else {
            None
        };
        let rr = if self.rr {
            Some(
                metrics::tcp_rr(&self.client_ns, &self.server_ns, ip, RR_PORT, plan.rr_secs)
                    .context("TCP RR")?,
            )
        } else {
            None
        };
        let mut put = |k: &'static str, v: f64| self.samples.entry(k).or_default().push(v);
        put("tcp1_gbps", t1.gbit_per_s);
        put("tcp1_cpu_s_per_gbit", t1.cpu_s_per_gbit);
        if let Some(t4) = t4 {
            put("tcp4_gbps", t4.gbit_per_s);
        }
        if let Some(rr) = &rr {
            put("rr_tps", rr.transactions_per_s);
            put("rr_p50_us", rr.p50_us);
            put("rr_p99_us", rr.p99_us);
        }
        println!(
            "bench:   {:<32} tcp1 {:6.2} Gbit/s  tcp4 {:>6}  rr {}",
            self.label(),
            t1.gbit_per_s,
            t4.map_or("—".to_owned(), |t| format!("{:.2}", t.gbit_per_s)),
            rr.map_or("—".to_owned(), |rr| format!(
                "{:7.0}/s p50 {:5.1} µs p99 {:6.1}",
                rr.transactions_per_s, rr.p50_us, rr.p99_us
            )),
        );
        Ok(())
    }

    fn median(&self, key: &str) -> Option<f64> {
        self.samples.get(key).map(|s| Stat::of(s).median)
    }
}

/// Everything the points measure through; all of it goes on drop (the
/// servers first, then the dockerds, agents and namespaces).
#[derive(Default)]
struct Beds {
    /// The machine's iperf3 servers in the containers' and the outside host's
    /// namespaces.
    servers: Vec<ServerGuard>,
    hand_built: Vec<Case>,
    docker_ebpf: Vec<DockerOverlay>,
    swarms: Vec<SwarmBed>,
}

struct SwarmBed {
    // Field order is drop order: the swarm before its namespaces.
    _swarm: DockerSwarm,
    _topology: SeedTopology,
}

pub fn run(
    binary: &Path,
    quick: bool,
    rounds: Option<u32>,
    out: Option<std::path::PathBuf>,
) -> Result<()> {
    let started = Instant::now();
    let mut plan = if quick { QUICK } else { FULL };
    if let Some(r) = rounds {
        plan.rounds = r;
    }
    let load_before = super::load_average();
    println!(
        "bench --docker: {} rounds, load average {load_before}",
        plan.rounds
    );
    let mut beds = Beds::default();
    let mut points = Vec::new();
    for net in NETS {
        for kind in [Kind::EbpfTc, Kind::KernelVxlan] {
            let spec = Spec {
                kind,
                net,
                fdb_entries: None,
                baseline: false,
            };
            println!("bench --docker: building {}", spec.label());
            let case = Case::build(spec, binary)?;
            points.push(Point::hand_built(&case));
            beds.hand_built.push(case);
        }
        println!("bench --docker: building docker-ebpf [{}]", net.name());
        let (d, mut docker_points) = docker_ebpf(binary, net, &mut beds.servers)
            .with_context(|| format!("docker-ebpf [{}]", net.name()))?;
        points.append(&mut docker_points);
        beds.docker_ebpf.push(d);
        println!("bench --docker: building docker-swarm [{}]", net.name());
        let (swarm, swarm_points) = docker_swarm(net, &mut beds.servers)
            .with_context(|| format!("docker-swarm [{}]", net.name()))?;
        points.extend(swarm_points);
        beds.swarms.push(swarm);
    }
    for p in &points {
        wait_reachable(p)?;
    }
    println!(
        "bench --docker: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    for round in 0..plan.rounds {
        let n = points.len();
        for k in 0..n {
            // Rotating order: each point goes first once every n rounds.
            let i = (k + round as usize) % n;
            let p = &mut points[i];
            p.measure(&plan)
                .with_context(|| format!("round {}: {}", round + 1, p.label()))?;
        }
        println!(
            "bench --docker: round {}/{} done ({:.0} s so far)",
            round + 1,
            plan.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    let counters = carried_by_the_overlay(binary, &beds.docker_ebpf)?;
    drop(beds);

    let md = report(
        &points,
        plan.rounds,
        quick,
        &counters,
        &format!("{load_before} before, {} after", super::load_average()),
        started.elapsed().as_secs_f64(),
    );
    super::write_report("--docker", "docker.md", &md, quick, out)?;
    Ok(())
}

/// The `docker-ebpf` bed on `net`: its point, and on the veth wire the two
/// ways out (whose iperf3 server on the outside host goes into `servers`).
fn docker_ebpf(
    binary: &Path,
    net: Net,
    servers: &mut Vec<ServerGuard>,
) -> Result<(DockerOverlay, Vec<Point>)> {
    let mut d = DockerOverlay::start_on(
        &unique_prefix("bd"),
        binary,
        &DockerdOptions::default(),
        &[],
        net.topology(),
    )?;
    let mut points = Vec::new();
    let result = (|| -> Result<()> {
        for node in [1, 2] {
            d.dockerd(node).import_iperf3()?;
        }
        d.create_network(1, NET, SUBNET, &[])?;
        d.wait_network(2, NET, true, std::time::Duration::from_secs(10))?;
        let server = d.run_image(2, "c2", NET, &[], &iperf3_server())?;
        let client = d.run_image(1, "c1", NET, &[], &[IPERF3_IMAGE, "sleep", "1d"])?;
        points.push(Point::docker(
            "docker-ebpf",
            net,
            d.dockerd(1),
            &client,
            &server.netns,
            server.ip,
        ));
        servers.push(host_iperf3_server(&server)?);
        points.push(Point::in_namespaces(
            "docker-ebpf (ns)",
            net,
            &client,
            &server,
        ));
        if net != Net::VETH {
            return Ok(());
        }
        let outside = d.overlay.topology.outside_host()?.to_owned();
        servers.push(ServerGuard::spawn(
            &outside,
            &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        )?);
        d.docker(
            1,
            &[
                "network",
                "create",
                "-d",
                "bridge",
                "--subnet",
                BRIDGE_SUBNET,
                BRIDGE_NET,
            ],
        )?;
        let bridged = d.run_image(1, "b1", BRIDGE_NET, &[], &[IPERF3_IMAGE, "sleep", "1d"])?;
        let outside_ip: Ipv4Addr = OUTSIDE_IP.parse()?;
        for (case, c) in [("egress-ebpf", &client), ("egress-bridge", &bridged)] {
            points.push(Point::docker(
                case,
                net,
                d.dockerd(1),
                c,
                &outside,
                outside_ip,
            ));
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok((d, points)),
        Err(e) => Err(e.context(format!("logs:\n{}", d.logs()))),
    }
}

/// The `docker-swarm` bed on `net` and its points (the iperf3 server for the
/// one in namespaces goes into `servers`).
fn docker_swarm(net: Net, servers: &mut Vec<ServerGuard>) -> Result<(SwarmBed, [Point; 2])> {
    let topology = SeedTopology::create(&unique_prefix("bs"), net.topology())?;
    let mut swarm = DockerSwarm::start(&topology)?;
    swarm.create_network(SWARM_NET, SUBNET)?;
    let server = swarm.run(2, "c2", SWARM_NET, &iperf3_server())?;
    let client = swarm.run(1, "c1", SWARM_NET, &[IPERF3_IMAGE, "sleep", "1d"])?;
    let points = [
        Point::docker(
            "docker-swarm",
            net,
            swarm.dockerd(1),
            &client,
            &server.netns,
            server.ip,
        ),
        Point::in_namespaces("docker-swarm (ns)", net, &client, &server),
    ];
    servers.push(host_iperf3_server(&server)?);
    Ok((
        SwarmBed {
            _swarm: swarm,
            _topology: topology,
        },
        points,
    ))
}

/// The machine's iperf3 serving on [`HOST_IPERF_PORT`] in `server`'s namespace.
fn host_iperf3_server(server: &DockerContainer) -> Result<ServerGuard> {
    ServerGuard::spawn(
        &server.netns,
        &["iperf3", "-s", "-p", &HOST_IPERF_PORT.to_string()],
    )
}

fn iperf3_server() -> [&'static str; 5] {
    [IPERF3_IMAGE, "iperf3", "-s", "-p", "5201"]
}

/// Until the client reaches the server (ARP, the first packets through the
/// tunnel, the swarm's gossip), up to 20 s.
fn wait_reachable(p: &Point) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if ping(&p.client_ns, &p.server_ip.to_string(), 1, &[])?.received == 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{}: no reply from {}", p.label(), p.server_ip);
        }
    }
}

/// The overlay-ebpf beds' programs must have carried the traffic: encap and
/// decap on both nodes, and node1's way out (`to_gateway`) where measured.
fn carried_by_the_overlay(
    binary: &Path,
    beds: &[DockerOverlay],
) -> Result<Vec<(String, BTreeMap<String, u64>)>> {
    let mut v = Vec::new();
    for d in beds {
        for node in [1u8, 2] {
            let stats = super::overlay_stats(binary, &d.overlay.pin_dir(node))?;
            let get = |name: &str| stats.get(name).copied().unwrap_or(0);
            ensure!(
                get("encap") > 0 && get("decap") > 0,
                "docker-ebpf {}: node{node} encapsulated {} and decapsulated {} packets: the overlay did not carry the traffic",
                d.overlay.prefix(),
                get("encap"),
                get("decap")
            );
            let keep = ["encap", "decap", "to_gateway"];
            v.push((
                format!("{} node{node}", d.overlay.prefix()),
                keep.iter().map(|k| ((*k).to_owned(), get(k))).collect(),
            ));
        }
    }
    Ok(v)
}

fn find<'a>(points: &'a [Point], case: &str, net: Net) -> Option<&'a Point> {
    points.iter().find(|p| p.case == case && p.net == net)
}

fn report(
    points: &[Point],
    rounds: u32,
    quick: bool,
    counters: &[(String, BTreeMap<String, u64>)],
    load: &str,
    secs: f64,
) -> String {
    let mut md = format!(
        "Run of {} ({}, {rounds} rounds interleaved, {secs:.0} s; {}; load average {load}). \
         Medians, with min–max of the rounds. In `docker-*` and `egress-*`, iperf3 runs in the \
         Docker containers (an image of busybox and Debian's iperf3, imported offline), in their \
         cgroups; in `(ns)`, the machine's iperf3 runs in the same containers' namespaces, as in \
         the hand-built cases: the same path, without the containers' CPU share. The RR loop \
         is this process's threads in the namespaces.\n\n\
         | case | wire |",
        super::report::date(),
        if quick { "quick" } else { "full" },
        machine(),
    );
    for (_, heading) in COLUMNS {
        let _ = write!(md, " {heading} |");
    }
    md += "\n|---|---|";
    md += &"---|".repeat(COLUMNS.len());
    md += "\n";
    for p in points {
        let _ = write!(md, "| {} | {} |", p.case, p.net.name());
        for (key, _) in COLUMNS {
            let cell = p.samples.get(key).map_or("—".to_owned(), |s| {
                let s = Stat::of(s);
                format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max))
            });
            let _ = write!(md, " {cell} |");
        }
        md += "\n";
    }

    md += "\nRatios of medians (higher is better):\n\n| ratio | wire | TCP 1 stream | TCP 4 streams | TCP RR trans/s | target |\n|---|---|---|---|---|---|\n";
    let ratio = |a: &Point, b: &Point, key: &str| Some(a.median(key)? / b.median(key)?);
    let cell = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.2}×"));
    let mut targets = (0, 0);
    for net in NETS {
        let pairs = [
            ("docker-ebpf (ns)", "ebpf-tc", true),
            ("docker-ebpf", "ebpf-tc", true),
            ("docker-swarm (ns)", "ebpf-tc", false),
            ("docker-swarm (ns)", "kernel-vxlan", false),
            ("docker-swarm", "docker-ebpf", false),
            ("docker-ebpf", "docker-ebpf (ns)", false),
            ("docker-swarm", "docker-swarm (ns)", false),
            ("egress-ebpf", "egress-bridge", false),
        ];
        for (a, b, with_target) in pairs {
            let (Some(pa), Some(pb)) = (find(points, a, net), find(points, b, net)) else {
                continue;
            };
            let r1 = ratio(pa, pb, "tcp1_gbps");
            let r4 = ratio(pa, pb, "tcp4_gbps");
            let target = if with_target {
                let met = [r1, r4]
                    .iter()
                    .all(|r| r.is_some_and(|r| r >= DOCKER_EBPF_TARGET));
                targets.0 += usize::from(met);
                targets.1 += 1;
                verdict(met, "TCP within 5% (≥ 0.95×)")
            } else {
                "—".to_owned()
            };
            let _ = writeln!(
                md,
                "| {a} / {b} | {} | {} | {} | {} | {target} |",
                net.name(),
                cell(r1),
                cell(r4),
                cell(ratio(pa, pb, "rr_tps")),
            );
        }
    }
    let _ = writeln!(
        md,
        "\n{} of {} targets met (issue 12: Docker containers on the overlay within 5% of \
         ebpf-tc).",
        targets.0, targets.1
    );
    md += "\nThe overlay-ebpf beds' counters (packets; the programs carried the traffic):\n\n| bed | encap | decap | to_gateway |\n|---|---|---|---|\n";
    for (bed, c) in counters {
        let _ = writeln!(
            md,
            "| {bed} | {} | {} | {} |",
            c["encap"], c["decap"], c["to_gateway"]
        );
    }
    md
}
