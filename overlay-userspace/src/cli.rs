//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::show::Table;

/// An eBPF/XDP VXLAN overlay dataplane: Docker-style overlay networks whose
/// switching, encapsulation, decapsulation and proxy ARP run in TC/XDP programs.
#[derive(Debug, Parser)]
#[command(name = "overlay", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: create the local endpoints, load and attach the
    /// dataplane, fill its maps from the cluster file, print `ready`, and run
    /// until SIGINT/SIGTERM; then remove everything it created.
    Agent {
        /// The static cluster file (TOML); see README.md for its fields.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Where to pin the maps [default: /sys/fs/bpf/overlay/<node>].
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
        /// How often to re-apply the desired state to the maps and check that the
        /// endpoints' veths still exist, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        reconcile_interval: u64,
    },
    /// Print the FDB: which MAC of which network lives behind which veth or VTEP.
    Fdb(ShowArgs),
    /// Print the neighbour table that proxy ARP answers from.
    Neigh(ShowArgs),
    /// Print the local endpoints (host-side veth → network, IP, MAC).
    Endpoints(ShowArgs),
    /// Print the VTEPs accepted as sources of VXLAN traffic.
    Vteps(ShowArgs),
    /// Print the dataplane's counters, summed over CPUs.
    Stats(ShowArgs),
}

impl Command {
    pub fn table(&self) -> Option<(Table, &ShowArgs)> {
        match self {
            Command::Agent { .. } => None,
            Command::Fdb(a) => Some((Table::Fdb, a)),
            Command::Neigh(a) => Some((Table::Neigh, a)),
            Command::Endpoints(a) => Some((Table::Endpoints, a)),
            Command::Vteps(a) => Some((Table::Vteps, a)),
            Command::Stats(a) => Some((Table::Stats, a)),
        }
    }
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Read the maps of this node, pinned under /sys/fs/bpf/overlay/<NODE>.
    #[arg(long, short = 'n', conflicts_with = "pin_dir")]
    pub node: Option<String>,
    /// Read the maps pinned in this directory.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
