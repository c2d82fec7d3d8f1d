//! `cargo xtask bench --scale`: the cluster at scale, and endpoint adds on a
//! full node. Two parts, one after the other (each alone on the machine):
//!
//! - **Cluster**: real agents and `overlay-peer`'s members (the test bed's
//!   `ScaleBed`) on one switch, 50 nodes and 20,000 endpoints announced by the
//!   peers. Each agent starts fresh once the peers agree: how long until its
//!   maps hold every endpoint (target ≤ 5 s, from the agent's start). Then, at
//!   rest: the gossip bytes on each agent's underlay (≤ 50 KB/s), its RSS
//!   (≤ 64 MiB), and the CPU time of its reconcile passes, run every 2 s
//!   (`overlay_reconcile_cpu_seconds_total` over `_passes_total`, ≤ 50 ms).
//!   Last, changes made by rotating peers: when the agents (their metrics,
//!   polled) and a few watching peers saw each (p95 ≤ 1 s). A watching peer's
//!   time is an upper bound: it reads its whole view on the one thread all
//!   peers share before it reports, so only a few watch.
//! - **Endpoint add**: `overlay endpoint add` (the CLI process, start to exit)
//!   on one agent, 0 to 2,000 endpoints already there, each in a namespace of
//!   its own made before the clock runs: p50 per window of the count (p50 ≤ 30
//!   ms with 2,000 there, no growth beyond noise). With `--baseline` another
//!   build runs beside it on a bed of its own, adds interleaved.
//!
//! Targets are reported met or missed, not asserted: timings here are noisy.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    SCALE_NETWORK, ScaleBed, cli_at, link_bytes, rss_kib, sample, unique_prefix, wait_until,
};

use super::cni::{percentile, verdict};

/// Sizes of one run.
struct Plan {
    agents: usize,
    peers: usize,
    /// Peers that report arrivals (the others make the changes).
    watchers: usize,
    endpoints: usize,
    changes: usize,
    rest: Duration,
    adds: usize,
    window: usize,
}

const FULL: Plan = Plan {
    agents: 2,
    peers: 48,
    watchers: 3,
    endpoints: 20_000,
    changes: 20,
    rest: Duration::from_secs(20),
    // The last window, 2,000 there, as long as the others: a window of 50
    // moved the growth figure by 0.2 from run to run.
    adds: 2_250,
    window: 250,
};

/// Small enough for `cargo xtask test`'s quick bench.
const QUICK: Plan = Plan {
    agents: 1,
    peers: 8,
    watchers: 3,
    endpoints: 2_000,
    changes: 3,
    rest: Duration::from_secs(4),
    adds: 60,
    window: 20,
};

const FULL_VIEW_TARGET_S: f64 = 5.0;
const PROPAGATION_P95_TARGET_MS: f64 = 1_000.0;
const GOSSIP_TARGET_KBPS: f64 = 50.0;
const RSS_TARGET_MIB: f64 = 64.0;
const RECONCILE_CPU_TARGET_MS: f64 = 50.0;
const ADD_P50_TARGET_MS: f64 = 30.0;
/// "No growth beyond noise": the last window's p50 within this factor of the first's.
const ADD_GROWTH_NOISE: f64 = 1.25;

/// Where the changes go: past every address the peers' layout uses.
fn change_ip(round: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        200,
        250,
        u8::try_from(round + 1).expect("at most 254 changes"),
    )
}

/// Where endpoint add `k` goes: the upper half of the /16, clear of the peers.
fn add_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 128, 1)) + u32::try_from(k).expect("small"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which parts of the run to do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Both,
    Cluster,
    Adds,
}

pub fn run(
    binary: &Path,
    quick: bool,
    part: Part,
    out: Option<PathBuf>,
    baseline: Option<&Path>,
) -> Result<()> {
    let plan = if quick { &QUICK } else { &FULL };
    let started = Instant::now();
    let load_before = super::load_average();
    // A part that fails is reported in scale.md, the other still runs; the
    // bench fails at the end.
    let mut md = String::new();
    let mut failed = Vec::new();
    let mut record = |name: &'static str, result: Result<String>| match result {
        Ok(text) => md += &text,
        Err(e) => {
            let _ = writeln!(md, "\n**{name} failed:** {e:#}\n");
            failed.push(name);
        }
    };
    if part != Part::Adds {
        record("the cluster part", cluster(plan));
    }
    if part != Part::Cluster {
        record(
            "the endpoint add part",
            endpoint_adds(plan, binary, baseline),
        );
    }
    let _ = writeln!(
        md,
        "\nLoad average before / after: {load_before} / {}; {:.0} s in all.",
        super::load_average(),
        started.elapsed().as_secs_f64()
    );
    // A part alone leaves the whole run's scale.md as it is.
    let file = match part {
        Part::Both => "scale.md",
        Part::Cluster => "scale-cluster.md",
        Part::Adds => "scale-adds.md",
    };
    super::write_report("--scale", file, &md, quick, out)?;
    ensure!(failed.is_empty(), "{} failed", failed.join(" and "));
    Ok(())
}

/// One agent at rest: what it costs.
struct Rest {
    gossip_kbps: f64,
    rss_mib: f64,
    reconcile_cpu_ms: Option<f64>,
    passes: f64,
    process_cpu: f64,
}

fn cluster(plan: &Plan) -> Result<String> {
    let nodes = plan.agents + plan.peers;
    println!(
        "bench --scale: {nodes} nodes ({} agents, {} peers), {} endpoints",
        plan.agents, plan.peers, plan.endpoints
    );
    let mut bed = ScaleBed::create(&unique_prefix("bsc"), plan.agents)?;
    let peers_started = Instant::now();
    bed.start_peers(plan.peers, plan.endpoints)?;
    let want = plan.endpoints as u64;
    wait_until(Duration::from_secs(120), "the peers agreeing", || {
        Ok(bed.peers()?.view()?.0 == want)
    })?;
    let peers_agree = peers_started.elapsed();
    println!("  peers agree after {:.1} s", peers_agree.as_secs_f64());

    let mut full_view = Vec::new();
    for i in 1..=plan.agents {
        let start = Instant::now();
        // Periodic passes every 2 s: at rest they are the passes measured.
        bed.start_agent(i, &["--reconcile-interval", "2"])?;
        let ready = start.elapsed();
        let mut last = None;
        wait_until(Duration::from_secs(60), "a fresh agent's full view", || {
            // A busy agent may not answer a scrape in time: not there yet.
            let seen = bed.remote_endpoints(i);
            let full = seen
                .as_ref()
                .is_ok_and(|(remote, fdb)| *remote == want && *fdb >= want);
            last = Some(seen.map_err(|e| format!("{e:#}")));
            Ok(full)
        })
        .with_context(|| {
            format!(
                "agent {i}: last scrape (remote endpoints, FDB entries) {last:?}; its log:\n{}",
                bed.cluster.agents[&i].stderr()
            )
        })?;
        full_view.push((start.elapsed(), ready));
        println!(
            "  agent {i}: full view {:.2} s",
            start.elapsed().as_secs_f64()
        );
    }

    // Settle (the starting agents' records spread), then measure at rest.
    std::thread::sleep(Duration::from_secs(3));
    let rest = at_rest(&bed, plan)?;

    let mut delays = Vec::new();
    let mut agent_delays = Vec::new();
    for round in 0..plan.changes {
        let ip = change_ip(round);
        let origin = plan.watchers + round % (plan.peers - plan.watchers);
        let peers = bed.peers()?;
        peers.watch(ip, plan.watchers)?;
        let at = peers.add(origin, ip)?;
        let expect = want + round as u64 + 1;
        let mut pending: Vec<usize> = (1..=plan.agents).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pending.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "change {ip}: agents {pending:?} never saw it"
            );
            let mut left = Vec::new();
            for &i in &pending {
                if bed
                    .remote_endpoints(i)
                    .is_ok_and(|(remote, _)| remote == expect)
                {
                    agent_delays.push((now_ms().saturating_sub(at)) as f64);
                } else {
                    left.push(i);
                }
            }
            pending = left;
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = bed
            .peers()?
            .seen(ip, plan.watchers, Duration::from_secs(30))?;
        delays.extend(seen.iter().map(|t| t.saturating_sub(at) as f64));
    }
    let all: Vec<f64> = delays.iter().chain(&agent_delays).copied().collect();

    let mut md = format!(
        "## Cluster: {nodes} nodes ({} agents, {} overlay-peer members), {} endpoints\n\n\
         The peers agreed {:.1} s after they started; then each agent started fresh.\n\n\
         | figure | measured | target |\n|---|---|---|\n",
        plan.agents,
        plan.peers,
        plan.endpoints,
        peers_agree.as_secs_f64()
    );
    for (i, (full, ready)) in full_view.iter().enumerate() {
        let s = full.as_secs_f64();
        let _ = writeln!(
            md,
            "| agent {}: maps hold all {} endpoints, from its start (ready after {:.2} s) | {s:.2} s | {} |",
            i + 1,
            plan.endpoints,
            ready.as_secs_f64(),
            verdict(
                s <= FULL_VIEW_TARGET_S,
                &format!("≤ {FULL_VIEW_TARGET_S} s")
            )
        );
    }
    let p95 = percentile(&all, 0.95);
    let _ = writeln!(
        md,
        "| one change reaches the nodes: p50 / p95 / max of {} arrivals ({} changes; at the agents and {} watching peers) | {:.0} / {p95:.0} / {:.0} ms | {} |",
        all.len(),
        plan.changes,
        plan.watchers,
        percentile(&all, 0.5),
        percentile(&all, 1.0),
        verdict(
            p95 <= PROPAGATION_P95_TARGET_MS,
            &format!("p95 ≤ {PROPAGATION_P95_TARGET_MS} ms")
        )
    );
    let _ = writeln!(
        md,
        "| … at the agents only (their metrics, polled) p50 / max | {:.0} / {:.0} ms | — |",
        percentile(&agent_delays, 0.5),
        percentile(&agent_delays, 1.0)
    );
    for (i, r) in rest.iter().enumerate() {
        let a = i + 1;
        let _ = writeln!(
            md,
            "| agent {a}: gossip on its underlay at rest, in + out | {:.1} KB/s | {} |",
            r.gossip_kbps,
            verdict(
                r.gossip_kbps <= GOSSIP_TARGET_KBPS,
                &format!("≤ {GOSSIP_TARGET_KBPS} KB/s")
            )
        );
        let _ = writeln!(
            md,
            "| agent {a}: RSS | {:.1} MiB | {} |",
            r.rss_mib,
            verdict(
                r.rss_mib <= RSS_TARGET_MIB,
                &format!("≤ {RSS_TARGET_MIB} MiB")
            )
        );
        match r.reconcile_cpu_ms {
            Some(ms) => {
                let _ = writeln!(
                    md,
                    "| agent {a}: CPU of one reconcile pass at {} remote endpoints (mean of {:.0}) | {ms:.1} ms | {} |",
                    plan.endpoints,
                    r.passes,
                    verdict(
                        ms <= RECONCILE_CPU_TARGET_MS,
                        &format!("≤ {RECONCILE_CPU_TARGET_MS} ms")
                    )
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| agent {a}: no reconcile pass at rest | — | ≤ {RECONCILE_CPU_TARGET_MS} ms: not measured |"
                );
            }
        }
        let _ = writeln!(
            md,
            "| agent {a}: its process's CPU at rest | {:.1} % of a core | — |",
            r.process_cpu * 100.0
        );
    }
    Ok(md)
}

/// CPU time (user + system) of process `pid` so far, in seconds.
fn process_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command's closing parenthesis: utime is the 12th.
    let after = stat.rsplit_once(')').context("no ) in stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn at_rest(bed: &ScaleBed, plan: &Plan) -> Result<Vec<Rest>> {
    struct Mark {
        bytes: u64,
        cpu: f64,
        passes: f64,
        process: f64,
    }
    let mark = |i: usize| -> Result<Mark> {
        let (rx, tx) = link_bytes(bed.cluster.host_ns(i), "eth0")?;
        // A busy agent may miss a scrape's 5 s; its next pass lets it answer.
        let body = (0..5)
            .find_map(|_| bed.metrics(i).ok())
            .with_context(|| format!("agent {i} answered no scrape of 5"))?;
        Ok(Mark {
            bytes: rx + tx,
            cpu: sample(&body, "overlay_reconcile_cpu_seconds_total").unwrap_or(0.0),
            passes: sample(&body, "overlay_reconcile_passes_total").unwrap_or(0.0),
            process: process_cpu_s(bed.cluster.agents[&i].pid())?,
        })
    };
    let before = (1..=plan.agents).map(mark).collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    std::thread::sleep(plan.rest);
    let after = (1..=plan.agents).map(mark).collect::<Result<Vec<_>>>()?;
    let secs = start.elapsed().as_secs_f64();
    before
        .iter()
        .zip(&after)
        .enumerate()
        .map(|(n, (b, a))| {
            let passes = a.passes - b.passes;
            Ok(Rest {
                gossip_kbps: (a.bytes - b.bytes) as f64 / secs / 1000.0,
                rss_mib: rss_kib(bed.cluster.agents[&(n + 1)].pid())? as f64 / 1024.0,
                reconcile_cpu_ms: (passes > 0.0).then(|| (a.cpu - b.cpu) / passes * 1000.0),
                passes,
                process_cpu: (a.process - b.process) / secs,
            })
        })
        .collect()
}

/// One agent build adding endpoints on a bed of its own.
struct Adder {
    label: String,
    bed: ScaleBed,
    ms: Vec<f64>,
}

fn endpoint_adds(plan: &Plan, binary: &Path, baseline: Option<&Path>) -> Result<String> {
    println!("bench --scale: {} endpoint adds on one agent", plan.adds);
    let mut builds = vec![("this build".to_owned(), binary.to_owned())];
    if let Some(b) = baseline {
        builds.push((format!("baseline ({})", b.display()), b.to_owned()));
    }
    let mut adders = Vec::new();
    for (label, build) in builds {
        let mut bed = ScaleBed::create(&unique_prefix("bsa"), 1)?;
        bed.start_agent_binary(1, &build, &[])?;
        adders.push(Adder {
            label,
            bed,
            ms: Vec::new(),
        });
    }
    for k in 0..plan.adds {
        for adder in &mut adders {
            let ns = adder.bed.cluster.container(&format!("e{k}"))?;
            let socket = adder.bed.cluster.agents[&1].socket();
            let ip = add_ip(k).to_string();
            let start = Instant::now();
            cli_at(
                &socket,
                &[
                    "endpoint",
                    "add",
                    "--network",
                    SCALE_NETWORK,
                    "--netns",
                    &ns,
                    "--ip",
                    &ip,
                ],
            )
            .with_context(|| format!("{}: endpoint add {k}", adder.label))?;
            adder.ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        if (k + 1) % 500 == 0 {
            println!("  {} adds", k + 1);
        }
    }
    let mut md = String::from(
        "\n## Endpoint add on one node\n\n`overlay endpoint add` with its address, from the CLI's start to its exit (ms), \
         one after another; each endpoint in a namespace of its own. p50 per window of the endpoints already there:\n\n| endpoints there |",
    );
    for adder in &adders {
        let _ = write!(md, " {} p50 | p95 |", adder.label);
    }
    md += "\n|---|";
    md += &"---|---|".repeat(adders.len());
    md += "\n";
    let windows: Vec<(usize, usize)> = (0..plan.adds)
        .step_by(plan.window)
        .map(|s| (s, (s + plan.window).min(plan.adds)))
        .collect();
    for (s, e) in &windows {
        let _ = write!(md, "| {s}–{} |", e - 1);
        for adder in &adders {
            let w = &adder.ms[*s..*e];
            let _ = write!(
                md,
                " {:.1} | {:.1} |",
                percentile(w, 0.5),
                percentile(w, 0.95)
            );
        }
        md += "\n";
    }
    for adder in &adders {
        let first = &adder.ms[windows[0].0..windows[0].1];
        let (ls, le) = *windows.last().expect("adds");
        let last = &adder.ms[ls..le];
        let (p_first, p_last) = (percentile(first, 0.5), percentile(last, 0.5));
        let _ = writeln!(
            md,
            "\n{}: p50 with {ls}+ there {p_last:.1} ms ({}); last window / first {:.2} ({}).",
            adder.label,
            verdict(
                p_last <= ADD_P50_TARGET_MS,
                &format!("≤ {ADD_P50_TARGET_MS} ms")
            ),
            p_last / p_first,
            verdict(
                p_last <= p_first * ADD_GROWTH_NOISE,
                &format!("no growth beyond ×{ADD_GROWTH_NOISE}")
            )
        );
    }
    Ok(md)
}
