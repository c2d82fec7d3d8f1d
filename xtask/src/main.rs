//! The project's runner: `cargo xtask build|run|test|demo`. Each first makes sure
//! of its prerequisites (see `prereqs`), so a fresh machine needs nothing else.

mod demo;
mod prereqs;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and demonstrate the overlay dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites, then build target/release/overlay (eBPF object included).
    Build,
    /// Build, then run `overlay` with the given arguments, e.g. `-- agent --config node1.toml`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run every test: unit, program (BPF_PROG_TEST_RUN), topology,
    /// interop, lifecycle and config. Needs root; nothing is skipped.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run the overlay across two hosts made of namespaces and tear it down.
    Demo,
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
            let status = Command::new(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            if !status.success() {
                bail!("overlay exited with {status}");
            }
            Ok(())
        }
        Task::Test { args } => {
            build()?;
            // One test at a time: the topology tests each run two agents and move
            // tens of megabytes on a two-core machine.
            run(Command::new("cargo")
                .current_dir(workspace_root())
                .args([
                    "test",
                    "--release",
                    "-p",
                    "overlay-userspace",
                    "-p",
                    "overlay-tests",
                    "--",
                ])
                .arg("--test-threads=1")
                .args(&args))
        }
        Task::Demo => {
            let binary = build()?;
            demo::run(&binary)
        }
    }
}

fn build() -> Result<PathBuf> {
    prereqs::ensure_all()?;
    run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "overlay-userspace",
    ]))?;
    Ok(workspace_root().join("target/release/overlay"))
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
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
