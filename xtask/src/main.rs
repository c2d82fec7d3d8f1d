//! The project's runner: `cargo xtask build|run|test|demo`. Each first makes sure
//! of its prerequisites (see `prereqs`), so a fresh machine needs nothing else.

mod bench;
mod demo;
mod fuzz;
mod prereqs;
mod vmtest;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run, test and demonstrate the overlay dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites, then build target/release/overlay (eBPF object
    /// included), the CNI plugin target/release/overlay-cni and the scale
    /// tests' target/release/overlay-peer.
    Build,
    /// Build, then run `overlay` with the given arguments, e.g. `-- agent --config node1.toml`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build (and the upgrade suite's second build), then run every test: the
    /// test bed's self-tests, unit, program and properties (BPF_PROG_TEST_RUN),
    /// drop events, topology, interop, lifecycle, config, gossip cluster and security,
    /// monitor, metrics (installs Debian's prometheus), logs, upgrade and faults.
    /// Needs root; nothing is skipped.
    Test {
        /// Extra arguments for the test binaries, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check formatting (`cargo fmt --check`) and lints (`cargo clippy -D
    /// warnings`, for the host crates and for the eBPF crate on its BPF target),
    /// as CI does.
    Lint,
    /// Build, then run the kernel tests inside qemu VMs on Debian's 6.1 and 6.12
    /// kernels (fetched with apt-get, cached under target/vmtest).
    Vmtest(vmtest::Args),
    /// Run each libFuzzer target (cluster file, API request, gossip record,
    /// transport open) for --seconds, on its seeds, regressions and corpus.
    Fuzz(fuzz::Args),
    /// Build, then run the overlay in gossip mode across two hosts made of namespaces,
    /// add a container through the CLI, and tear it all down.
    Demo {
        /// Instead, the same two hosts run as Docker and Podman users run
        /// them: a dockerd on each (in its namespace) with the overlay-ebpf
        /// drivers, Podman with overlay-cni on node2; `docker network create`
        /// on one host, containers of both on both hosts, ping across, the
        /// way out to a host outside, teardown. Installs docker.io and podman.
        #[arg(long)]
        containers: bool,
    },
    /// Build, then benchmark routed, kernel VXLAN, Docker's swarm overlay and
    /// this dataplane side by side. Installs docker.io if missing.
    Bench {
        /// A small run that checks every case delivers: six cases and two FDB
        /// scale runs, two rounds (about 3.5 minutes on the 2-core VM).
        #[arg(long)]
        quick: bool,
        /// Rounds per case (default 5, quick 2).
        #[arg(long)]
        rounds: Option<u32>,
        /// Results directory (default bench/results, quick: target/bench-quick).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Leave README.md as it is.
        #[arg(long)]
        no_readme: bool,
        /// Also measure the eBPF cases with this agent binary (a before/after
        /// comparison, interleaved in the same run).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Only these wires and topologies (repeatable): veth, csum, nic,
        /// switched (veth wire), nic-switched. The FDB scale cases run with veth.
        /// Leaves README.md as it is.
        #[arg(long = "net", value_name = "NET",
              value_parser = ["veth", "csum", "nic", "switched", "nic-switched"])]
        nets: Vec<String>,
        /// Only the CNI case: ADD's latency and how soon the other node
        /// reaches the new container (--rounds: how many containers;
        /// --baseline: another agent build, interleaved).
        #[arg(long, conflicts_with = "nets")]
        cni: bool,
        /// Only `docker run`'s cost: on an overlay-ebpf network against
        /// `--network none`, alternately, on real dockerds (--rounds: runs
        /// of each, default 20, quick 5). Installs docker.io if missing.
        #[arg(long, conflicts_with_all = ["cni", "baseline"])]
        docker_run: bool,
        /// Only Docker containers on the overlay, beside the hand-built
        /// ebpf-tc and kernel-vxlan cases: overlay-ebpf, Docker's swarm
        /// overlay, and the way out against a plain bridge network (writes
        /// docker.md). Installs docker.io if missing.
        #[arg(long, conflicts_with_all = ["cni", "baseline", "docker_run", "nets", "scale"])]
        docker: bool,
        /// Only the cluster at scale (real agents and overlay-peer members:
        /// 50 nodes, 20,000 endpoints; quick: 9 and 2,000) and endpoint adds
        /// on one node up to 2,000 (--baseline: another agent build beside
        /// it); writes scale.md.
        #[arg(long, conflicts_with_all = ["cni", "docker_run", "nets"])]
        scale: bool,
        /// With --scale, only one of its two parts: `cluster` or `adds`
        /// (the endpoint adds, about 2 minutes alone); writes scale-cluster.md
        /// or scale-adds.md instead.
        #[arg(long, requires = "scale", value_parser = ["cluster", "adds"])]
        part: Option<String>,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    match Cli::parse().command {
        Task::Build => {
            let binary = build()?;
            println!("built {}", binary.display());
            Ok(())
        }
        Task::Run { args } => {
            let binary = build()?;
            // exec: the agent gets the terminal's signals and its exit code is ours.
            let err = Command::new(&binary).args(&args).exec();
            Err(err).with_context(|| format!("executing {}", binary.display()))
        }
        Task::Test { args } => {
            prereqs::ensure_for_tests()?;
            let binary = build()?;
            build_upgrade_variant()?;
            prereqs::ensure_prometheus()?;
            // One test at a time: the topology tests each run two agents and move
            // tens of megabytes on a two-core machine. overlay-userspace is there
            // for its own unit tests.
            run(Command::new("cargo")
                .current_dir(workspace_root())
                .args(["test", "--release", "-p", "overlay-tests"])
                .args([
                    "-p",
                    "overlay-userspace",
                    "-p",
                    "xtask",
                    "--",
                    "--test-threads=1",
                ])
                .args(&args))?;
            // The quick bench keeps the harness from rotting: it fails if a case
            // measures nothing or the overlay did not carry the traffic. The
            // performance targets are reported, not asserted: timings here are noisy.
            if args.is_empty() {
                bench::run(
                    &binary,
                    &bench::Options {
                        quick: true,
                        rounds: None,
                        out: None,
                        update_readme: false,
                        baseline: None,
                        nets: Vec::new(),
                    },
                )?;
            }
            Ok(())
        }
        Task::Lint => lint(),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Vmtest(args) => {
            let binary = build()?;
            let variant = build_upgrade_variant()?;
            vmtest::run(&args, &binary, &variant)
        }
        Task::Demo { containers } => {
            let binary = build()?;
            if containers {
                prereqs::ensure_container_engines("the containers demo")?;
            }
            demo::run(&binary, containers)
        }
        Task::Bench {
            quick,
            rounds,
            out,
            no_readme,
            baseline,
            nets,
            cni,
            docker_run,
            docker,
            scale,
            part,
        } => {
            let binary = build()?;
            if scale {
                let part = match part.as_deref() {
                    Some("cluster") => bench::scale::Part::Cluster,
                    Some("adds") => bench::scale::Part::Adds,
                    _ => bench::scale::Part::Both,
                };
                return bench::scale::run(&binary, quick, part, out, baseline.as_deref());
            }
            if docker {
                prereqs::ensure_container_engines("bench --docker")?;
                return bench::docker::run(&binary, quick, rounds, out);
            }
            if docker_run {
                prereqs::ensure_container_engines("bench --docker-run")?;
                return bench::docker_run::run(&binary, quick, rounds, out);
            }
            if cni {
                return bench::cni::run(quick, rounds, out, baseline);
            }
            // The docker-swarm case runs dockerds.
            prereqs::ensure_container_engines("bench")?;
            // Where the time goes: perf record of each case.
            prereqs::ensure_debian_packages("bench's profiles", &["linux-perf"])?;
            bench::run(
                &binary,
                &bench::Options {
                    quick,
                    rounds,
                    out,
                    update_readme: !no_readme && baseline.is_none() && nets.is_empty(),
                    baseline,
                    nets,
                },
            )
            .map(|_| ())
        }
    }
}

/// Prerequisites, then the release build of the `overlay` and `overlay-cni`
/// binaries, and of the scale tests' `overlay-peer`; the path of `overlay`.
fn build() -> Result<PathBuf> {
    prereqs::ensure_all()?;
    run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "overlay-userspace",
        "-p",
        "overlay-peer",
    ]))?;
    let binary = workspace_root().join("target/release/overlay");
    for built in [
        &binary,
        &binary.with_file_name("overlay-cni"),
        &binary.with_file_name("overlay-peer"),
    ] {
        if !built.exists() {
            bail!("the build succeeded but left no {}", built.display());
        }
    }
    Ok(binary)
}

/// The upgrade suite's second version of the agent (feature
/// `upgrade-test-variant`: other program code, another FDB size), next to the
/// first in target/release; its path. Only overlay-userspace is rebuilt for it.
fn build_upgrade_variant() -> Result<PathBuf> {
    run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "overlay-userspace",
        "--bin",
        "overlay-upgrade-variant",
        "--features",
        "upgrade-test-variant",
    ]))?;
    Ok(workspace_root().join("target/release/overlay-upgrade-variant"))
}

/// `cargo fmt --check`, then clippy with warnings denied. The eBPF crate only
/// builds for the BPF target (its panic handler clashes with std on the host),
/// so it is linted there, with the nightly toolchain that builds it.
fn lint() -> Result<()> {
    prereqs::ensure_all()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--exclude",
        "overlay-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo")
        .current_dir(root.join("overlay-ebpf"))
        .args(["+nightly", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]))?;
    println!("lint: fmt and clippy are clean");
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command with inherited stdio; an error if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Whether a command runs and succeeds, quietly.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
