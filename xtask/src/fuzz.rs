//! `cargo xtask fuzz`: each libFuzzer target of `fuzz/` for a while (a short
//! pass in CI, ten minutes or more while developing), on its committed seeds and
//! regressions and a corpus kept in target/. A crash fails the run and leaves
//! its input in fuzz/artifacts/<target>/; it becomes a regression by moving it
//! to fuzz/regressions/<target>/, which every later run replays first.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{prereqs, workspace_root};

/// Every target, in the order they run.
pub const TARGETS: [&str; 6] = [
    "cluster_file",
    "api_request",
    "gossip_record",
    "transport_open",
    "docker_request",
    "cni_invocation",
];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Targets to run (default: all).
    targets: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    prereqs::ensure_all()?;
    prereqs::ensure_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz = root.join("fuzz");
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    for target in &targets {
        if !TARGETS.contains(target) {
            bail!(
                "no fuzz target {target}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let mut summary = Vec::new();
    for target in targets {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let mut inputs = vec![corpus];
        for dir in ["seeds", "regressions"] {
            let d = fuzz.join(dir).join(target);
            if d.is_dir() {
                inputs.push(d);
            }
        }
        let started = Instant::now();
        let out = Command::new("cargo")
            .current_dir(&fuzz)
            .args(["+nightly", "fuzz", "run", "-O", target])
            .args(&inputs)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .args(["-timeout=10", "-rss_limit_mb=4096", "-print_final_stats=1"])
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let executions = stat(&log, "stat::number_of_executed_units:");
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed after {:.0?}: its input is in {}; make it a \
                 regression in {} once fixed\n{}",
                started.elapsed(),
                fuzz.join("artifacts").join(target).display(),
                fuzz.join("regressions").join(target).display(),
                tail.join("\n")
            );
        }
        summary.push(format!(
            "{target}: {} executions in {:.0?}, no crash",
            executions.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            started.elapsed()
        ));
    }
    for line in &summary {
        println!("fuzz: {line}");
    }
    Ok(())
}

fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}
