//! The results of a run: medians and spread, ratios, targets, and the files they
//! go to (JSON, Markdown, the chart, the README's section).

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    METRICS, MapMemory,
    cases::{Kind, Net, Spec},
    chart,
    profile::{self, Profile},
    progcost::{Cost, Insns, Live},
};

#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(samples: &[f64]) -> Stat {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stat {
            median,
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
        }
    }
}

pub struct CaseResult {
    pub spec: Spec,
    pub samples: BTreeMap<&'static str, Vec<f64>>,
    pub stats: BTreeMap<&'static str, Stat>,
}

pub struct Target {
    pub what: String,
    /// A ratio of medians, or nanoseconds for the program costs.
    pub value: f64,
    pub goal: f64,
    /// The goal is a ceiling (CPU, nanoseconds), not a floor.
    pub at_most: bool,
    pub in_ns: bool,
}

impl Target {
    pub fn met(&self) -> bool {
        if self.at_most {
            self.value <= self.goal
        } else {
            self.value >= self.goal
        }
    }
}

pub struct Summary {
    pub quick: bool,
    pub rounds: u32,
    pub date: String,
    pub machine: String,
    pub cases: Vec<CaseResult>,
    pub scale: Vec<(u32, Vec<f64>, Stat)>,
    pub memory: Vec<MapMemory>,
    pub costs: Vec<Cost>,
    pub insns: Vec<Insns>,
    pub live: Vec<Live>,
    pub profiles: Vec<Profile>,
    pub counters: BTreeMap<String, (u64, u64, u64)>,
    pub load: (String, String),
    pub secs: f64,
}

impl Summary {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        quick: bool,
        rounds: u32,
        specs: &[Spec],
        samples: Vec<BTreeMap<&'static str, Vec<f64>>>,
        scale_sizes: &[u32],
        scale_samples: Vec<Vec<f64>>,
        memory: Vec<MapMemory>,
        costs: Vec<Cost>,
        insns: Vec<Insns>,
        live: Vec<Live>,
        profiles: Vec<Profile>,
        counters: BTreeMap<String, (u64, u64, u64)>,
        load_before: String,
        load_after: String,
        secs: f64,
    ) -> Summary {
        let cases = specs
            .iter()
            .zip(samples)
            .map(|(spec, samples)| CaseResult {
                spec: *spec,
                stats: samples.iter().map(|(k, v)| (*k, Stat::of(v))).collect(),
                samples,
            })
            .collect();
        let scale = scale_sizes
            .iter()
            .zip(scale_samples)
            .map(|(n, s)| (*n, s.clone(), Stat::of(&s)))
            .collect();
        Summary {
            quick,
            rounds,
            date: date(),
            machine: machine(),
            cases,
            scale,
            memory,
            costs,
            insns,
            live,
            profiles,
            counters,
            load: (load_before, load_after),
            secs,
        }
    }

    fn find(&self, kind: Kind, net: Net) -> Option<&CaseResult> {
        self.cases
            .iter()
            .find(|c| c.spec.kind == kind && c.spec.net == net && !c.spec.baseline)
    }

    /// `metric` of `case` over the same metric of `base` (same wire and
    /// topology), medians.
    pub fn ratio(&self, case: &CaseResult, base: Kind, metric: &str) -> Option<f64> {
        let b = self.find(base, case.spec.net)?;
        Some(case.stats.get(metric)?.median / b.stats.get(metric)?.median)
    }

    /// The wires and topologies of this run, in case order.
    pub fn nets(&self) -> Vec<Net> {
        let mut nets: Vec<Net> = Vec::new();
        for c in &self.cases {
            if !nets.contains(&c.spec.net) {
                nets.push(c.spec.net);
            }
        }
        nets
    }

    /// Issue 13's targets. On switched segments of the veth wire plain TCP
    /// crosses the bridge as whole GSO packets while every tunnel's are segmented
    /// there, so only the ratios to kernel-vxlan are targets; the ones to routed
    /// are reported.
    pub fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        for case in self
            .cases
            .iter()
            .filter(|c| c.spec.kind.is_ebpf() && !c.spec.baseline)
        {
            let label = case.spec.label();
            let unfair = case.spec.net == Net::SWITCHED;
            for (metric, base, goal, at_most) in [
                ("tcp1_gbps", Kind::Routed, 0.95, false),
                ("tcp1_gbps", Kind::KernelVxlan, 1.15, false),
                ("tcp4_gbps", Kind::Routed, 0.95, false),
                ("tcp4_gbps", Kind::KernelVxlan, 1.15, false),
                ("tcp1_cpu_s_per_gbit", Kind::Routed, 1.10, true),
                ("rr_tps", Kind::Routed, 0.95, false),
                ("rr_tps", Kind::KernelVxlan, 1.3, false),
                ("udp64_kpps", Kind::KernelVxlan, 1.5, false),
            ] {
                if unfair && base == Kind::Routed {
                    continue;
                }
                if let Some(ratio) = self.ratio(case, base, metric) {
                    let op = if at_most { "≤" } else { "≥" };
                    t.push(Target {
                        what: format!("{label}: {metric} {op} {goal}× {}", base.name()),
                        value: ratio,
                        goal,
                        at_most,
                        in_ns: false,
                    });
                }
            }
        }
        for (path, goal) in [("encap", 500.0), ("decap (tc)", 300.0)] {
            if let Some(c) = self
                .costs
                .iter()
                .find(|c| c.path == path && !c.program.ends_with("(baseline)"))
            {
                t.push(Target {
                    what: format!("{path}: BPF_PROG_TEST_RUN net ns ≤ {goal}"),
                    value: c.net_ns as f64,
                    goal,
                    at_most: true,
                    in_ns: true,
                });
            }
        }
        if let (Some(first), Some(last)) = (self.scale.first(), self.scale.last())
            && self.scale.len() > 1
        {
            t.push(Target {
                what: format!(
                    "ebpf-tc [veth]: tcp1_gbps at {} FDB entries ≥ 0.95× at {}",
                    last.0, first.0
                ),
                value: last.2.median / first.2.median,
                goal: 0.95,
                at_most: false,
                in_ns: false,
            });
        }
        t
    }

    /// Every case produced every metric, and finite positive throughput.
    pub fn check_complete(&self) -> Result<()> {
        for c in &self.cases {
            for (m, ..) in METRICS {
                let s = c
                    .stats
                    .get(m)
                    .with_context(|| format!("{}: no {m}", c.spec.label()))?;
                anyhow::ensure!(
                    s.median.is_finite() && s.median > 0.0,
                    "{}: {m} is {}",
                    c.spec.label(),
                    s.median
                );
            }
        }
        for (n, _, s) in &self.scale {
            anyhow::ensure!(s.median > 0.0, "fdb={n}: no throughput");
        }
        Ok(())
    }

    /// Which run this was, on what.
    fn run_line(&self) -> String {
        format!(
            "Run of {} ({}, {} rounds interleaved; {}).",
            self.date,
            if self.quick { "quick" } else { "full" },
            self.rounds,
            self.machine
        )
    }

    /// The ratios of medians to kernel-vxlan and to routed: the README's one
    /// table (the rest is in latest.md).
    fn ratios_markdown(&self) -> String {
        let mut s = "| case | wire | TCP 1 stream | TCP 4 streams | TCP RR trans/s | UDP 64 B pps |\n|---|---|---|---|---|---|\n".to_owned();
        for c in self.cases.iter().filter(|c| c.spec.kind != Kind::Routed) {
            s += &format!("| {} | {} |", case_name(&c.spec), c.spec.net.name());
            for m in ["tcp1_gbps", "tcp4_gbps", "rr_tps", "udp64_kpps"] {
                let kv = self.ratio(c, Kind::KernelVxlan, m);
                let rt = self.ratio(c, Kind::Routed, m);
                let f = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.2}×"));
                s += &format!(" {} kvx, {} routed |", f(kv), f(rt));
            }
            s += "\n";
        }
        s
    }

    /// What the README shows between its bench markers: the run, and the
    /// ratios (the chart is drawn from the same figures).
    pub fn readme_markdown(&self, full_tables: &str) -> String {
        let targets = self.targets();
        let met = targets.iter().filter(|t| t.met()).count();
        format!(
            "{} Ratios of medians to kernel-vxlan and to routed on the same wire and \
             topology (higher is better for all four):\n\n{}\n{met} of {} targets met. \
             Every figure (medians with the rounds' min–max, FDB scale, table memory, \
             per-program costs, verifier counts, programs on real traffic, where the time goes, the targets): \
             [{full_tables}]({full_tables}).\n",
            self.run_line(),
            self.ratios_markdown(),
            targets.len()
        )
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "{} Medians, with min–max of the rounds.\n\n",
            self.run_line()
        );
        s += "| case | wire |";
        for (_, head, unit, _) in METRICS {
            s += &format!(" {head} ({unit}) |");
        }
        s += "\n|---|---|";
        s += &"---|".repeat(METRICS.len());
        s += "\n";
        for c in &self.cases {
            s += &format!("| {} | {} |", case_name(&c.spec), c.spec.net.name());
            for (m, ..) in METRICS {
                let st = c.stats[m];
                s += &format!(" {} ({}–{}) |", fmt(st.median), fmt(st.min), fmt(st.max));
            }
            s += "\n";
        }
        s += "\nRatios of medians to kernel-vxlan and to routed on the same wire and \
              topology (higher is better for all four):\n\n";
        s += &self.ratios_markdown();
        if !self.scale.is_empty() {
            s += "\nFDB scale, ebpf-tc [veth], TCP 1 stream (Gbit/s):\n\n| FDB entries per node | median (min–max) | vs. smallest |\n|---|---|---|\n";
            let base = self.scale[0].2.median;
            for (n, _, st) in &self.scale {
                s += &format!(
                    "| {n} | {} ({}–{}) | {:.3}× |\n",
                    fmt(st.median),
                    fmt(st.min),
                    fmt(st.max),
                    st.median / base
                );
            }
            s += "\nTable memory on node1 (kernel-accounted `memlock`, bytes):\n\n| FDB entries | FDB | NEIGH | VTEPS | total |\n|---|---|---|---|---|\n";
            for m in &self.memory {
                let total: u64 = m.bytes.values().sum();
                s += &format!(
                    "| {} | {} | {} | {} | {} |\n",
                    m.fdb_entries, m.bytes["FDB"], m.bytes["NEIGH"], m.bytes["VTEPS"], total
                );
            }
            if let (Some(a), Some(b)) = (self.memory.first(), self.memory.last())
                && b.fdb_entries > a.fdb_entries
            {
                let (ta, tb): (u64, u64) = (a.bytes.values().sum(), b.bytes.values().sum());
                s += &format!(
                    "\n{} endpoints (FDB + NEIGH entries, 240 VTEPs) take {:.1} MiB more than {}: {:.0} bytes per endpoint.\n",
                    b.fdb_entries,
                    (tb - ta) as f64 / 1048576.0,
                    a.fdb_entries,
                    (tb - ta) as f64 / (b.fdb_entries - a.fdb_entries) as f64
                );
            }
        }
        s += "\nPer-program cost (BPF_PROG_TEST_RUN; single runs timed by the kernel, median; \
              net = minus the empty program's median, i.e. the timer's own cost):\n\n\
              | path | program | single run ns | net ns | repeat=100000 mean ns |\n|---|---|---|---|---|\n";
        for c in &self.costs {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                c.path,
                c.program,
                c.single_ns,
                c.net_ns,
                c.repeat_ns
                    .map_or("— (rewrites the packet)".to_owned(), |r| r.to_string())
            );
        }
        s += "\n| program | verifier insns processed | xlated bytes | JITed bytes |\n|---|---|---|---|\n";
        for i in &self.insns {
            s += &format!(
                "| {} | {} | {} | {} |\n",
                i.program, i.verified_insns, i.xlated_bytes, i.jited_bytes
            );
        }
        s += "\nPrograms on real traffic (kernel.bpf_stats_enabled for this phase only; \
              c1 sends to c2, so node1 encapsulates and node2 decapsulates; the runs on \
              the other node are the ACKs):\n\n\
              | case | traffic | node | program | runs | ns per run |\n|---|---|---|---|---|---|\n";
        for l in &self.live {
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.0} |\n",
                l.case, l.traffic, l.node, l.program, l.runs, l.ns_per_run
            );
        }
        s += &profile::markdown(&self.profiles);
        s += "\nTargets (medians of this run):\n\n| target | value | |\n|---|---|---|\n";
        for t in self.targets() {
            let value = if t.in_ns {
                format!("{:.0}", t.value)
            } else {
                format!("{:.3}", t.value)
            };
            s += &format!(
                "| {} | {value} | {} |\n",
                t.what,
                if t.met() { "met" } else { "missed" }
            );
        }
        s += &format!(
            "\nLoad average before / after: {} / {}. CPU figures are the whole machine's busy time \
             (/proc/stat) during the run divided by the work done; they include anything else running.\n",
            self.load.0, self.load.1
        );
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let stat = |s: &Stat| json!({"median": s.median, "min": s.min, "max": s.max});
        json!({
            "date": self.date,
            "machine": self.machine,
            "quick": self.quick,
            "rounds": self.rounds,
            "seconds": self.secs,
            "load_average": {"before": self.load.0, "after": self.load.1},
            "cases": self.cases.iter().map(|c| json!({
                "case": case_name(&c.spec),
                "wire": c.spec.net.name(),
                "metrics": c.samples.iter().map(|(k, v)| (k.to_string(), json!({
                    "samples": v,
                    "stat": stat(&c.stats[k]),
                    "ratio_to_kernel_vxlan": self.ratio(c, Kind::KernelVxlan, k),
                    "ratio_to_routed": self.ratio(c, Kind::Routed, k),
                }))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "fdb_scale": self.scale.iter().map(|(n, v, s)| json!({
                "fdb_entries": n, "tcp1_gbps": {"samples": v, "stat": stat(s)},
            })).collect::<Vec<_>>(),
            "memory": self.memory.iter().map(|m| json!({
                "fdb_entries": m.fdb_entries, "memlock_bytes": m.bytes,
            })).collect::<Vec<_>>(),
            "program_costs": self.costs.iter().map(|c| json!({
                "path": c.path, "program": c.program, "single_run_median_ns": c.single_ns,
                "net_ns": c.net_ns, "repeat_mean_ns": c.repeat_ns, "verdict": c.verdict,
            })).collect::<Vec<_>>(),
            "verifier": self.insns.iter().map(|i| json!({
                "program": i.program, "verified_insns": i.verified_insns,
                "xlated_bytes": i.xlated_bytes, "jited_bytes": i.jited_bytes,
            })).collect::<Vec<_>>(),
            "live_program_costs": self.live.iter().map(|l| json!({
                "case": l.case, "traffic": l.traffic, "node": l.node, "program": l.program,
                "runs": l.runs, "ns_per_run": l.ns_per_run,
            })).collect::<Vec<_>>(),
            "profiles": self.profiles.iter().map(|p| json!({
                "case": p.case, "kernel_samples": p.samples,
                "groups": profile::group_names().zip(&p.groups)
                    .map(|(g, v)| (g.to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "top": p.top.iter().map(|(s, v)| json!({"symbol": s, "share": v})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "counters": self.counters.iter().map(|(k, (e, d, x))| (k.clone(), json!({
                "encap": e, "decap": d, "drops": x,
            }))).collect::<serde_json::Map<_, _>>(),
            "targets": self.targets().iter().map(|t| json!({
                "target": t.what, "value": t.value, "goal": t.goal, "at_most": t.at_most,
                "met": t.met(),
            })).collect::<Vec<_>>(),
        })
    }

    /// results-<stamp>.json and latest.{json,md,svg} under `dir`; with `readme`,
    /// the README's section between the bench markers too.
    pub fn write(&self, dir: &Path, readme: bool) -> Result<()> {
        self.check_complete()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stamp = sh("date -u +%Y%m%dT%H%M%SZ");
        let json = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(dir.join(format!("{stamp}.json")), &json)?;
        std::fs::write(dir.join("latest.json"), &json)?;
        let md = self.markdown();
        std::fs::write(dir.join("latest.md"), &md)?;
        let svg = dir.join("latest.svg");
        chart::draw(self, &svg)?;
        println!("bench: results in {}", dir.display());
        if readme {
            update_readme(&crate::workspace_root().join("README.md"), self, dir)?;
        }
        Ok(())
    }
}

const BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- bench:end -->";

fn update_readme(readme: &Path, summary: &Summary, dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(readme)?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        println!("bench: README has no bench markers; not updated");
        return Ok(());
    };
    let rel = dir.strip_prefix(crate::workspace_root()).unwrap_or(dir);
    let md = summary.readme_markdown(&rel.join("latest.md").display().to_string());
    let section = format!(
        "{BEGIN}\n\n![ratios to routed, per case and metric]({})\n\n{md}\n{END}",
        rel.join("latest.svg").display()
    );
    let new = format!("{}{section}{}", &text[..a], &text[b + END.len()..]);
    std::fs::write(readme, new)?;
    println!("bench: README updated");
    Ok(())
}

fn case_name(spec: &Spec) -> String {
    let mut s = spec.kind.name().to_owned();
    if spec.baseline {
        s += " (baseline)";
    }
    s
}

pub(super) fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "—".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Now, to the minute, for a run's line.
pub(super) fn date() -> String {
    sh("date -u '+%Y-%m-%d %H:%M UTC'")
}

pub(super) fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    format!(
        "{} CPUs ({model}), kernel {}, {}",
        sh("nproc"),
        sh("uname -r"),
        sh(". /etc/os-release && echo $PRETTY_NAME")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        let s = Stat::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(Stat::of(&[]).median.is_nan());
    }
}
