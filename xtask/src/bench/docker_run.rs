//! `cargo xtask bench --docker-run`: what joining an overlay-ebpf network
//! adds to `docker run`. On the seed topology, with a dockerd per node and
//! both agents serving the drivers (the test bed's `DockerOverlay`), node1
//! runs `docker run -d busybox sleep 1d` on uber-net and with `--network
//! none`, alternately, so that a burst of load from elsewhere lands on both.
//! The clock runs from the client's start to its exit (the client's own start
//! is in both). Each container is checked (on uber-net: an address of its
//! subnet; with none: no address) and removed before the next run, untimed.
//! Target: p50 on uber-net at most 100 ms above p50 with `--network none`.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{BUSYBOX_IMAGE, DockerOverlay, DockerdOptions, unique_prefix};

use super::cni::{percentile, verdict};

const NET: &str = "uber-net";
const SUBNET: &str = "10.0.9.0/24";
const FULL_RUNS: u32 = 20;
const QUICK_RUNS: u32 = 5;
const EXTRA_P50_TARGET_MS: f64 = 100.0;

pub fn run(binary: &Path, quick: bool, rounds: Option<u32>, out: Option<PathBuf>) -> Result<()> {
    let n = rounds.unwrap_or(if quick { QUICK_RUNS } else { FULL_RUNS });
    println!("bench --docker-run: {n} runs on {NET} and {n} with --network none, alternately");
    let d = DockerOverlay::start_as(
        &unique_prefix("br"),
        binary,
        &DockerdOptions::default(),
        &[],
    )?;
    d.create_network(1, NET, SUBNET, &[])?;
    let load_before = super::load_average();
    let mut overlay = Vec::new();
    let mut none = Vec::new();
    // Run 0 of each is untimed: it warms dockerd's and the agent's paths.
    for i in 0..=n {
        for network in [NET, "none"] {
            let (ms, ip) =
                timed_run(&d, network).with_context(|| format!("run {i} on {network}"))?;
            match (network == NET, ip) {
                (true, Some(ip)) => {
                    ensure!(
                        ip.octets()[..3] == [10, 0, 9],
                        "a container on {NET} got {ip}, outside {SUBNET}"
                    );
                }
                (false, None) => {}
                (on_overlay, ip) => {
                    anyhow::bail!(
                        "run {i} on {network}: address {ip:?} (on the overlay: {on_overlay})"
                    )
                }
            }
            if i > 0 {
                if network == NET {
                    &mut overlay
                } else {
                    &mut none
                }
                .push(ms);
            }
        }
    }
    let load = format!("{load_before} before, {} after", super::load_average());
    let md = report(n, &overlay, &none, &load);
    super::write_report("--docker-run", "docker-run.md", &md, quick, out)?;
    Ok(())
}

/// One `docker run -d` on node1 on `network`: how long it took (ms), and the
/// container's address on it; the container removed.
fn timed_run(d: &DockerOverlay, network: &str) -> Result<(f64, Option<Ipv4Addr>)> {
    let started = Instant::now();
    let id = d.docker(
        1,
        &[
            "run",
            "-d",
            "--network",
            network,
            BUSYBOX_IMAGE,
            "sleep",
            "1d",
        ],
    )?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let id = id.trim();
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let address = d.docker(1, &["inspect", "--format", &format, id]);
    d.docker(1, &["rm", "-f", id])?;
    let address = address?;
    let address = address.trim();
    let ip = if address.is_empty() {
        None
    } else {
        Some(
            address
                .parse()
                .with_context(|| format!("address {address:?}"))?,
        )
    };
    Ok((ms, ip))
}

fn report(n: u32, overlay: &[f64], none: &[f64], load: &str) -> String {
    let extra = percentile(overlay, 0.5) - percentile(none, 0.5);
    let mut md = format!(
        "\n`docker run -d busybox sleep 1d` on node1, {n} runs each, alternately (ms, from the \
         client's start to its exit; a dockerd per node in its namespace, both agents serving \
         the overlay-ebpf drivers; load average {load}):\n\n\
         | network | n | p50 | p95 | max |\n|---|---|---|---|---|\n"
    );
    for (network, samples) in [(NET, overlay), ("none", none)] {
        let _ = writeln!(
            md,
            "| {network} | {} | {:.1} | {:.1} | {:.1} |",
            samples.len(),
            percentile(samples, 0.5),
            percentile(samples, 0.95),
            samples.iter().copied().fold(0.0, f64::max),
        );
    }
    let _ = writeln!(
        md,
        "\n{NET} adds {extra:+.1} ms at p50 ({}).",
        verdict(extra <= EXTRA_P50_TARGET_MS, "target ≤ +100 ms")
    );
    md
}
