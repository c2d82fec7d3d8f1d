//! `cargo xtask bench --cni`: what a container runtime waits for. The plugin
//! runs on node1 as a runtime runs it (a process per call, the CNI variables,
//! the configuration on stdin, in node1's namespace), against both agents
//! learning each other by gossip:
//!
//! - ADD, from the process's start to its exit (target: p95 ≤ 50 ms), also
//!   split into ADDs within an address block and those opening one (which
//!   may wait for the block's claim to settle in the cluster);
//! - from ADD's return until node2's FDB holds the new endpoint, confirmed by
//!   a ping from node2's container (target: ≤ 100 ms);
//! - DEL, and VERSION (the floor: starting the process, nothing else).
//!
//! Every ADD gets a namespace of its own, made before the clock runs.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    cni::{CniAttachment, CniBed, plugin_stdin},
    ping,
    scenario::C2,
};
use serde_json::json;

/// How many containers one run attaches (quick: fewer).
const FULL_ROUNDS: u32 = 40;
const QUICK_ROUNDS: u32 = 10;

const ADD_P95_TARGET_MS: f64 = 50.0;
const REACHABLE_TARGET_MS: f64 = 100.0;

pub fn run(
    quick: bool,
    rounds: Option<u32>,
    out: Option<PathBuf>,
    baseline: Option<PathBuf>,
) -> Result<()> {
    let n = rounds.unwrap_or(if quick { QUICK_ROUNDS } else { FULL_ROUNDS });
    println!("bench --cni: {n} containers, attached one after another on node1");
    let mut runs = vec![Run::start("this build", None, n)?];
    if let Some(agent) = baseline {
        runs.push(Run::start("baseline", Some(agent), n)?);
    }
    // Interleaved: a burst of load from elsewhere lands on both.
    for i in 0..n as usize {
        for run in &mut runs {
            run.version()?;
        }
        for run in &mut runs {
            run.add(i)
                .with_context(|| format!("{}: ADD {i}", run.label))?;
        }
    }
    for i in 0..n as usize {
        for run in &mut runs {
            run.del(i)
                .with_context(|| format!("{}: DEL {i}", run.label))?;
        }
    }
    let mut md = String::new();
    for run in &runs {
        md += &run.report(n);
    }
    super::write_report("--cni", "cni.md", &md, quick, out)?;
    Ok(())
}

/// One agent build on its own bed, and what it measured.
struct Run {
    label: &'static str,
    bed: CniBed,
    stdin: Vec<u8>,
    attachments: Vec<CniAttachment>,
    version: Vec<f64>,
    add: Vec<f64>,
    /// Per ADD: whether it took the first address of a block, and so may
    /// have waited for the block's claim to settle in the cluster.
    opened_block: Vec<bool>,
    last_block: Option<u32>,
    reach: Vec<f64>,
    del: Vec<f64>,
}

impl Run {
    fn start(label: &'static str, agent: Option<PathBuf>, n: u32) -> Result<Run> {
        let mut bed = match agent {
            Some(agent) => CniBed::start_with("bb", &agent)?,
            None => CniBed::start("bc")?,
        };
        let stdin = plugin_stdin(&bed.list("1.0.0", "uber-net"), 0, &json!({}));
        let attachments = (0..n)
            .map(|i| bed.attachment(&format!("b{i}")))
            .collect::<Result<_>>()?;
        Ok(Run {
            label,
            bed,
            stdin,
            attachments,
            version: Vec::new(),
            add: Vec::new(),
            opened_block: Vec::new(),
            last_block: None,
            reach: Vec::new(),
            del: Vec::new(),
        })
    }

    fn version(&mut self) -> Result<()> {
        let r = self
            .bed
            .cni(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#)?;
        r.ok()?;
        self.version.push(ms(r.took));
        Ok(())
    }

    /// ADD of container `i`, then the wait until node2's FDB holds it,
    /// confirmed by a ping from node2's container.
    fn add(&mut self, i: usize) -> Result<()> {
        let r = self.bed.cni(&self.attachments[i].env("ADD"), &self.stdin)?;
        let returned = Instant::now();
        r.ok()?;
        self.add.push(ms(r.took));
        let result = r.json()?;
        let mac = result["interfaces"][1]["mac"]
            .as_str()
            .context("the container's MAC")?
            .to_owned();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("the address")?
            .to_owned();
        let block = ip.parse::<Ipv4Addr>().map(|ip| u32::from(ip) >> 4)?;
        self.opened_block.push(self.last_block != Some(block));
        self.last_block = Some(block);
        let deadline = returned + Duration::from_secs(10);
        while !node2_fdb_has(&self.bed, &mac)? {
            ensure!(
                Instant::now() < deadline,
                "node2 never learned {ip} ({mac})"
            );
        }
        self.reach.push(ms(returned.elapsed()));
        let seen = ping(&self.bed.overlay.ns(C2), &ip, 1, &[])?;
        ensure!(
            seen.received == 1,
            "c2 on node2 cannot reach {ip}: {seen:?}"
        );
        Ok(())
    }

    fn del(&mut self, i: usize) -> Result<()> {
        let r = self.bed.cni(&self.attachments[i].env("DEL"), &self.stdin)?;
        r.ok()?;
        self.del.push(ms(r.took));
        Ok(())
    }

    fn report(&self, n: u32) -> String {
        let pick = |opening: bool| -> Vec<f64> {
            self.add
                .iter()
                .zip(&self.opened_block)
                .filter(|(_, o)| **o == opening)
                .map(|(ms, _)| *ms)
                .collect()
        };
        report(
            self.label,
            n,
            &self.version,
            &[&self.add, &pick(false), &pick(true)],
            &self.reach,
            &self.del,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Whether node2's FDB holds `mac`: one `overlay fdb` run, a few ms.
fn node2_fdb_has(bed: &CniBed, mac: &str) -> Result<bool> {
    Ok(bed
        .overlay
        .table(2, "fdb")?
        .as_array()
        .context("fdb is not a list")?
        .iter()
        .any(|row| row["mac"] == mac))
}

/// The value below which `p` of the samples lie (nearest rank).
pub(super) fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (p * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// `adds`: every ADD, those within a block, those that opened a block.
fn report(
    label: &str,
    n: u32,
    version: &[f64],
    adds: &[&[f64]; 3],
    reach: &[f64],
    del: &[f64],
) -> String {
    let mut md = format!(
        "CNI plugin, {label}: {n} containers attached one after another (ms; the plugin is started \
         with nsenter in node1's namespace, as the test bed runs it). A node claims a /28 \
         block of addresses through gossip when it needs one, ahead of need, and uses it \
         once the claim has settled (4 gossip intervals + 0.5 s): an ADD that opens a \
         block may wait for that.\n\n\
         | step | n | p50 | p95 | max | target |\n|---|---|---|---|---|---|\n"
    );
    md.insert(0, '\n');
    let p95_met = |s: &[f64]| verdict(percentile(s, 0.95) <= ADD_P95_TARGET_MS, "p95 ≤ 50");
    let reach_max = reach.iter().copied().fold(0.0, f64::max);
    let [all, within, opening] = *adds;
    let rows = [
        ("VERSION (starting the process)", version, String::from("—")),
        ("ADD, all", all, p95_met(all)),
        ("ADD within a block", within, p95_met(within)),
        ("ADD opening a block", opening, String::from("—")),
        (
            "node2's FDB holds it, after ADD returned",
            reach,
            verdict(reach_max <= REACHABLE_TARGET_MS, "≤ 100 (max)"),
        ),
        ("DEL", del, String::from("—")),
    ];
    for (step, samples, target) in rows {
        if samples.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {step} | {} | {:.1} | {:.1} | {:.1} | {target} |",
            samples.len(),
            percentile(samples, 0.5),
            percentile(samples, 0.95),
            samples.iter().copied().fold(0.0, f64::max),
        );
    }
    md
}

pub(super) fn verdict(met: bool, target: &str) -> String {
    format!("{target}: {}", if met { "met" } else { "missed" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let s: Vec<f64> = (1..=20).map(f64::from).collect();
        assert!((percentile(&s, 0.5) - 10.0).abs() < f64::EPSILON);
        assert!((percentile(&s, 0.95) - 19.0).abs() < f64::EPSILON);
        assert!((percentile(&[3.0], 0.95) - 3.0).abs() < f64::EPSILON);
    }
}
