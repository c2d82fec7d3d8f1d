//! `cargo xtask bench`: this dataplane side by side with no overlay (routed) and
//! with Docker's kernel VXLAN datapath, in one run, interleaved, on this machine.
//!
//! Every case is built once, in its own namespaces, and the rounds visit the
//! cases in a rotating order, so that a burst of load from elsewhere on the
//! machine is spread over all of them instead of landing on one. Only ratios
//! taken within one run are meaningful; absolute figures move with the load.

mod cases;
mod chart;
pub mod cni;
pub mod docker;
pub mod docker_run;
mod metrics;
mod profile;
mod progcost;
mod report;
pub mod scale;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use cases::{Case, Kind, Net, Spec};

pub use report::Summary;

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub rounds: Option<u32>,
    /// Where the results go; default `bench/results` (full) or
    /// `target/bench-quick` (quick).
    pub out: Option<PathBuf>,
    /// Rewrite the README's benchmark section (full runs only).
    pub update_readme: bool,
    /// Another build of the agent, measured as an extra case beside each eBPF case.
    pub baseline: Option<PathBuf>,
    /// Only the wires and topologies with these names (`Net::name`); all if empty.
    pub nets: Vec<String>,
}

/// Durations and sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rounds: u32,
    tcp_secs: u32,
    rr_secs: f64,
    udp_secs: f64,
    prog_samples: u32,
    scale: &'static [u32],
}

const FULL: Plan = Plan {
    rounds: 5,
    tcp_secs: 4,
    rr_secs: 3.0,
    udp_secs: 3.0,
    prog_samples: 5000,
    scale: &[10, 10_000, 100_000],
};

const QUICK: Plan = Plan {
    rounds: 2,
    tcp_secs: 1,
    rr_secs: 1.0,
    udp_secs: 1.0,
    prog_samples: 500,
    scale: &[10, 100_000],
};

/// The metrics, in table order: (key, heading, unit, higher is better).
pub const METRICS: [(&str, &str, &str, bool); 9] = [
    ("tcp1_gbps", "TCP 1 stream", "Gbit/s", true),
    // Whether the receiver's GRO merged the flow: about 1450 (1500 routed) when
    // every segment reaches c2's stack on its own, tens of kB when merged.
    (
        "tcp1_rx_bytes",
        "Packet size into c2 (TCP 1)",
        "bytes",
        true,
    ),
    ("tcp4_gbps", "TCP 4 streams", "Gbit/s", true),
    ("rr_tps", "TCP RR 1 B", "trans/s", true),
    ("rr_p50_us", "RR p50", "µs", false),
    ("rr_p99_us", "RR p99", "µs", false),
    ("udp64_kpps", "UDP 64 B delivered", "kpps", true),
    (
        "tcp1_cpu_s_per_gbit",
        "CPU per Gbit (TCP 1)",
        "CPU-s",
        false,
    ),
    (
        "udp64_cpu_ns_per_pkt",
        "CPU per packet (UDP)",
        "CPU-ns",
        false,
    ),
];

/// Every case on every wire and topology it runs on; the quick run keeps one
/// case on each of them, so that none rots unnoticed.
fn specs(quick: bool, baseline: bool, nets: &[String]) -> Vec<Spec> {
    let plan: Vec<(Net, Vec<Kind>)> = if quick {
        vec![
            (
                Net::VETH,
                vec![
                    Kind::Routed,
                    Kind::KernelVxlan,
                    Kind::EbpfTc,
                    Kind::DockerSwarm,
                ],
            ),
            (Net::NIC, vec![Kind::EbpfTc, Kind::EbpfXdp]),
            (Net::SWITCHED, vec![Kind::EbpfTc]),
        ]
    } else {
        [
            Net::VETH,
            Net::CSUM,
            Net::NIC,
            Net::SWITCHED,
            Net::NIC_SWITCHED,
        ]
        .into_iter()
        .map(|net| {
            (
                net,
                Kind::ALL.into_iter().filter(|k| k.runs_on(net)).collect(),
            )
        })
        .collect()
    };
    let mut v: Vec<Spec> = plan
        .into_iter()
        .filter(|(net, _)| nets.is_empty() || nets.iter().any(|n| n == net.name()))
        .flat_map(|(net, kinds)| {
            kinds.into_iter().map(move |kind| Spec {
                kind,
                net,
                fdb_entries: None,
                baseline: false,
            })
        })
        .collect();
    if baseline {
        let base: Vec<Spec> = v
            .iter()
            .filter(|s| s.kind.is_ebpf())
            .map(|s| Spec {
                baseline: true,
                ..*s
            })
            .collect();
        v.extend(base);
    }
    v
}

pub fn run(binary: &Path, opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    let mut plan = if opts.quick { QUICK } else { FULL };
    if let Some(r) = opts.rounds {
        plan.rounds = r;
    }
    let load_before = load_average();
    println!(
        "bench: {} run, {} rounds, load average {load_before}",
        if opts.quick { "quick" } else { "full" },
        plan.rounds
    );

    let mut cases = Vec::new();
    for spec in specs(opts.quick, opts.baseline.is_some(), &opts.nets) {
        println!("bench: building {}", spec.label());
        let agent = match (&opts.baseline, spec.baseline) {
            (Some(base), true) => base.as_path(),
            _ => binary,
        };
        cases.push(Case::build(spec, agent)?);
    }
    let mut scale_cases = Vec::new();
    if !opts.nets.is_empty() && !opts.nets.iter().any(|n| n == Net::VETH.name()) {
        plan.scale = &[];
    }
    for &n in plan.scale {
        let spec = Spec {
            kind: Kind::EbpfTc,
            net: Net::VETH,
            fdb_entries: Some(n),
            baseline: false,
        };
        println!("bench: building {}", spec.label());
        scale_cases.push(Case::build(spec, binary)?);
    }

    println!("bench: program costs (BPF_PROG_TEST_RUN)");
    let mut costs = Vec::new();
    let mut insns = Vec::new();
    for baseline in [false, true] {
        let find = |kind| {
            cases
                .iter()
                .find(|c| c.spec.kind == kind && c.spec.baseline == baseline)
        };
        if let (Some(tc), Some(xdp)) = (find(Kind::EbpfTc), find(Kind::EbpfXdp)) {
            let (mut c, mut i) = progcost::measure(tc, xdp, plan.prog_samples)?;
            if baseline {
                c.iter_mut().for_each(|c| c.program += " (baseline)");
                i.iter_mut().for_each(|i| i.program += " (baseline)");
            }
            costs.extend(c);
            insns.extend(i);
        }
    }

    println!("bench: programs in traffic (kernel.bpf_stats_enabled, briefly)");
    let live = {
        let _stats = progcost::BpfStats::enable()?;
        let mut v = Vec::new();
        // The scale cases too: their programs' cost per packet with 10 and with
        // 100 000 entries is the dataplane's own share of any difference.
        for case in cases
            .iter()
            .chain(&scale_cases)
            .filter(|c| c.spec.kind.is_ebpf())
        {
            let (client, server, ip) = (case.client_ns(), case.server_ns(), case.server_ip);
            let secs = plan.tcp_secs.min(2);
            v.extend(progcost::live(case, "TCP 1 stream", || {
                metrics::iperf_tcp(&client, ip, cases::IPERF_PORT, secs, 1).map(|_| ())
            })?);
            v.extend(progcost::live(case, "UDP 64 B", || {
                metrics::udp64(&client, &server, ip, cases::UDP_PORT, f64::from(secs)).map(|_| ())
            })?);
        }
        v
    };

    // The recordings stay for `perf report -i` (with call graphs); the
    // results keep only their summary.
    let perf_dir = crate::workspace_root().join("target/bench-perf");
    std::fs::create_dir_all(&perf_dir)?;
    println!(
        "bench: where the time goes (perf record, TCP 1 stream; recordings in {})",
        perf_dir.display()
    );
    let profiles = cases
        .iter()
        .map(|case| profile::record(case, plan.tcp_secs.min(3), &perf_dir))
        .collect::<Result<Vec<_>>>()?;

    let mut samples: Vec<BTreeMap<&'static str, Vec<f64>>> = vec![BTreeMap::new(); cases.len()];
    let mut scale_samples: Vec<Vec<f64>> = vec![Vec::new(); scale_cases.len()];
    for round in 0..plan.rounds {
        let n = cases.len();
        for k in 0..n {
            // Rotating order: each case goes first once every n rounds.
            let i = (k + round as usize) % n;
            let case = &mut cases[i];
            measure_case(case, &plan, &mut samples[i])
                .with_context(|| format!("round {}: {}", round + 1, case.spec.label()))?;
        }
        for k in 0..scale_cases.len() {
            let i = (k + round as usize) % scale_cases.len();
            let case = &scale_cases[i];
            let t = metrics::iperf_tcp(
                &case.client_ns(),
                case.server_ip,
                cases::IPERF_PORT,
                plan.tcp_secs,
                1,
            )
            .with_context(|| format!("round {}: {}", round + 1, case.spec.label()))?;
            scale_samples[i].push(t.gbit_per_s);
        }
        println!(
            "bench: round {}/{} done ({:.0} s so far)",
            round + 1,
            plan.rounds,
            started.elapsed().as_secs_f64()
        );
    }

    // The overlay cases must have carried the traffic themselves: their counters
    // prove the packets went through the programs, not around them.
    let mut counters = BTreeMap::new();
    for case in cases
        .iter()
        .chain(&scale_cases)
        .filter(|c| c.spec.kind.is_ebpf())
    {
        for (node, pin) in case.pin_dirs.iter().enumerate() {
            let stats = overlay_stats(binary, pin)?;
            let get = |name: &str| stats.get(name).copied().unwrap_or(0);
            ensure!(
                get("encap") > 0 && get("decap") > 0,
                "{}: node{} encapsulated {} and decapsulated {} packets: the overlay did not carry the traffic",
                case.spec.label(),
                node + 1,
                get("encap"),
                get("decap")
            );
            let drops: u64 = stats
                .iter()
                .filter(|(k, _)| k.starts_with("drop_"))
                .map(|(_, v)| v)
                .sum();
            counters.insert(
                format!("{} node{}", case.spec.label(), node + 1),
                (get("encap"), get("decap"), drops),
            );
        }
    }

    let memory = scale_cases
        .iter()
        .map(|c| map_memory(c, binary))
        .collect::<Result<Vec<_>>>()?;

    drop(scale_cases);
    let specs: Vec<Spec> = cases.iter().map(|c| c.spec).collect();
    drop(cases);

    let summary = Summary::new(
        opts.quick,
        plan.rounds,
        &specs,
        samples,
        plan.scale,
        scale_samples,
        memory,
        costs,
        insns,
        live,
        profiles,
        counters,
        load_before,
        load_average(),
        started.elapsed().as_secs_f64(),
    );
    let out = results_dir(opts.quick, opts.out.clone());
    summary.write(&out, opts.update_readme && !opts.quick)?;
    println!("{}", summary.markdown());
    println!(
        "bench: finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// Where a run's results go: `out`, or `bench/results` (full) and
/// `target/bench-quick` (quick).
fn results_dir(quick: bool, out: Option<PathBuf>) -> PathBuf {
    out.unwrap_or_else(|| {
        crate::workspace_root().join(if quick {
            "target/bench-quick"
        } else {
            "bench/results"
        })
    })
}

/// Prints a side bench's report `md` and writes it as `file` in the run's
/// results folder (see [`results_dir`]).
fn write_report(
    bench: &str,
    file: &str,
    md: &str,
    quick: bool,
    out: Option<PathBuf>,
) -> Result<()> {
    println!("{md}");
    let dir = results_dir(quick, out);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(file), md)?;
    println!("bench {bench}: written to {}", dir.join(file).display());
    Ok(())
}

fn measure_case(
    case: &mut Case,
    plan: &Plan,
    into: &mut BTreeMap<&'static str, Vec<f64>>,
) -> Result<()> {
    case.check_server()?;
    let (client, server, ip) = (case.client_ns(), case.server_ns(), case.server_ip);
    let mut put = |k: &'static str, v: f64| into.entry(k).or_default().push(v);
    let received = overlay_tests::ip_received(&server)?;
    let t1 = metrics::iperf_tcp(&client, ip, cases::IPERF_PORT, plan.tcp_secs, 1)
        .context("TCP, 1 stream")?;
    put("tcp1_gbps", t1.gbit_per_s);
    put(
        "tcp1_rx_bytes",
        overlay_tests::ip_received(&server)?.bytes_per_packet_since(&received),
    );
    put("tcp1_cpu_s_per_gbit", t1.cpu_s_per_gbit);
    put("tcp1_retransmits", t1.retransmits as f64);
    let t4 = metrics::iperf_tcp(&client, ip, cases::IPERF_PORT, plan.tcp_secs, 4)
        .context("TCP, 4 streams")?;
    put("tcp4_gbps", t4.gbit_per_s);
    let rr =
        metrics::tcp_rr(&client, &server, ip, cases::RR_PORT, plan.rr_secs).context("TCP RR")?;
    put("rr_tps", rr.transactions_per_s);
    put("rr_p50_us", rr.p50_us);
    put("rr_p99_us", rr.p99_us);
    let u =
        metrics::udp64(&client, &server, ip, cases::UDP_PORT, plan.udp_secs).context("UDP 64 B")?;
    put("udp64_kpps", u.delivered_pps / 1e3);
    put("udp64_cpu_ns_per_pkt", u.cpu_ns_per_packet);
    println!(
        "bench:   {:<30} tcp1 {:6.2} Gbit/s ({:5.0} B/pkt)  tcp4 {:6.2}  rr {:7.0}/s p50 {:5.1} µs p99 {:6.1}  udp {:6.0} kpps (sent {:.0})",
        case.spec.label(),
        t1.gbit_per_s,
        into["tcp1_rx_bytes"].last().copied().unwrap_or(0.0),
        t4.gbit_per_s,
        rr.transactions_per_s,
        rr.p50_us,
        rr.p99_us,
        u.delivered_pps / 1e3,
        u.sent_pps / 1e3
    );
    Ok(())
}

/// `overlay stats --json` of a pin directory: counter name → packets.
fn overlay_stats(binary: &Path, pin: &Path) -> Result<BTreeMap<String, u64>> {
    let out = Command::new(binary)
        .args(["stats", "--json", "--pin-dir"])
        .arg(pin)
        .output()?;
    ensure!(
        out.status.success(),
        "overlay stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(json
        .as_array()
        .context("stats is not a list")?
        .iter()
        .filter_map(|r| Some((r["counter"].as_str()?.to_owned(), r["packets"].as_u64()?)))
        .collect())
}

#[derive(Clone, Debug)]
pub struct MapMemory {
    /// Counted in the pinned FDB of node1.
    pub fdb_entries: u64,
    /// Kernel-accounted memory (`memlock`) of each table of node1.
    pub bytes: BTreeMap<String, u64>,
}

fn map_memory(case: &Case, binary: &Path) -> Result<MapMemory> {
    let pin = &case.pin_dirs[0];
    let mut bytes = BTreeMap::new();
    for map in ["FDB", "NEIGH", "VTEPS", "ENDPOINTS", "NETWORKS"] {
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(pin.join(map))
            .output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "bpftool map show {map}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        bytes.insert(
            map.to_owned(),
            json["bytes_memlock"].as_u64().context("no bytes_memlock")?,
        );
    }
    let out = Command::new(binary)
        .args(["fdb", "--json", "--pin-dir"])
        .arg(pin)
        .output()?;
    ensure!(
        out.status.success(),
        "overlay fdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fdb: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // Endpoints only: a network with a way out also holds its gateway's entry.
    let entries = fdb
        .as_array()
        .context("fdb is not a list")?
        .iter()
        .filter(|e| e["kind"] != "gateway")
        .count() as u64;
    let requested = case.spec.fdb_entries.unwrap_or(0);
    ensure!(
        entries == u64::from(requested),
        "{}: node1's FDB holds {entries} entries",
        case.spec.label()
    );
    Ok(MapMemory {
        fdb_entries: entries,
        bytes,
    })
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
