//! The command line: every command and flag, with its `--help`.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use super::tables::Table;
use crate::logging::LogFormat;

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
    /// dataplane, fill its maps from the cluster file and from gossip (with a
    /// [cluster] section), serve the local API, print `ready`, and run until
    /// SIGINT/SIGTERM; then remove everything it created (unless --keep).
    ///
    /// A dataplane left by an earlier agent of the same node (--keep, or kill -9)
    /// is adopted: its pinned maps and links are reused, so traffic keeps flowing.
    Agent {
        /// The cluster file (TOML); see README.md for its fields.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Where to pin maps and links [default: /sys/fs/bpf/overlay/<node>].
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
        /// The local API socket [default: /run/overlay/<node>.sock].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Where networks and endpoints made through the API are saved
        /// [default: /var/lib/overlay/<node>].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// How often to re-apply the desired state to the maps and check that the
        /// endpoints' veths still exist, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        reconcile_interval: u64,
        /// On exit, leave programs, maps and veths in place: containers keep their
        /// connectivity until the next agent adopts them.
        #[arg(long)]
        keep: bool,
        /// How log lines are written (stderr; `RUST_LOG` filters them): text, or
        /// one JSON object per line for a log pipeline.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Write a new cluster key (32 random bytes, as 64 hex digits, mode 0600).
    /// Every node of a cluster needs the same key.
    Keygen {
        /// The file to write; without it, the key is printed.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// Create, list and remove overlay networks (cluster-wide).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Add, remove and list endpoints (containers' interfaces).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Print the cluster's nodes: VTEP, liveness, endpoint count.
    Members(ApiArgs),
    /// Print the FDB: which MAC of which network lives behind which veth or VTEP.
    Fdb(ShowArgs),
    /// Print the neighbour table that proxy ARP answers from.
    Neigh(ShowArgs),
    /// Print the local endpoints as the maps hold them (host-side veth → network, IP, MAC).
    Endpoints(ShowArgs),
    /// Print the VTEPs accepted as sources of VXLAN traffic.
    Vteps(ShowArgs),
    /// Print the dataplane's counters, summed over CPUs.
    Stats(ShowArgs),
    /// Show dropped frames as they are dropped, one line each: time, reason,
    /// interface, VNI, and the outer and inner MACs, IPs and ports. Until
    /// Ctrl-C (or --count).
    ///
    /// The programs write drop events only while a monitor is connected, at
    /// most 1000 per second and CPU; what that limit holds back is reported.
    Monitor(MonitorArgs),
    /// Log each decision the programs take on the packets of one flow, at
    /// debug level, in the agent's log (the agent must run with
    /// RUST_LOG=info,overlay_ebpf=debug), while this command runs.
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Only these reasons (repeatable), e.g. drop_spoofed_ip.
    #[arg(long, value_name = "REASON", value_parser = crate::monitor::record::parse_reason)]
    pub reason: Vec<String>,
    /// Only frames of this network.
    #[arg(long)]
    pub vni: Option<u32>,
    /// Only frames with this address anywhere in their headers (repeatable).
    #[arg(long, value_name = "IP")]
    pub ip: Vec<Ipv4Addr>,
    /// Exit after this many drops.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// One end of the flow: an (inner) IPv4 address.
    pub a: Ipv4Addr,
    /// The other end; without it, everything to and from A.
    pub b: Option<Ipv4Addr>,
    /// Only in this network.
    #[arg(long)]
    pub vni: Option<u32>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network on every node: a VNI and a subnet, the same everywhere,
    /// with a gateway on every node through which its containers reach the
    /// world outside the overlay (masqueraded), unless --internal.
    Create {
        name: String,
        /// The network's IPv4 subnet, e.g. 10.1.0.0/24; it must not overlap
        /// another overlay network's.
        #[arg(long)]
        subnet: String,
        /// VXLAN network identifier, 1..=16777215, unique in the cluster
        /// [default: allocated from the name, the same on every node].
        #[arg(long)]
        vni: Option<u32>,
        /// The gateway address [default: the subnet's first host address];
        /// never given to a container.
        #[arg(long, value_name = "IP")]
        gateway: Option<Ipv4Addr>,
        /// An address never given to a container (repeatable).
        #[arg(long = "aux-address", value_name = "IP")]
        aux_addresses: Vec<Ipv4Addr>,
        /// The containers' MTU [default: the underlay's MTU minus 50].
        #[arg(long)]
        mtu: Option<u32>,
        /// No way out: no gateway route, no ARP answer for the gateway, no NAT.
        #[arg(long)]
        internal: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the networks the cluster agrees on, and any conflicting definitions.
    Ls(ApiArgs),
    /// Remove a network from every node; refused while it has endpoints.
    Rm {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Connect a network namespace to a network: a veth with eth0 (eth1, ...)
    /// inside, an address, a MAC, and a default route through the gateway
    /// unless the network is internal.
    Add {
        #[arg(long)]
        network: String,
        /// A named network namespace (`ip netns add NAME`), or the path of a
        /// namespace file (/run/netns/NAME, /proc/PID/ns/net).
        #[arg(long)]
        netns: String,
        /// The address; without it one is allocated from this node's address
        /// blocks, so that no other node can hand out the same one.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// The MAC [default: 02:42 followed by the IPv4 address].
        #[arg(long)]
        mac: Option<String>,
        /// Attach as a container runtime does: keyed by this container ID and
        /// --ifname (which is the interface's name inside) rather than by
        /// network and namespace.
        #[arg(long, requires = "ifname", value_name = "ID")]
        container_id: Option<String>,
        /// The interface name inside the namespace, with --container-id.
        #[arg(long, requires = "container_id", value_name = "NAME")]
        ifname: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Disconnect a namespace from a network, or a runtime's attachment.
    Rm {
        #[arg(long, required_unless_present = "container_id", requires = "netns")]
        network: Option<String>,
        #[arg(long, requires = "network")]
        netns: Option<String>,
        /// The attachment of this container ID and --ifname.
        #[arg(
            long,
            requires = "ifname",
            conflicts_with = "network",
            value_name = "ID"
        )]
        container_id: Option<String>,
        #[arg(long, requires = "container_id", value_name = "NAME")]
        ifname: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List every endpoint in the cluster, with the node it lives on.
    Ls(ApiArgs),
}

/// Which agent to ask.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Ask the agent of this node (socket /run/overlay/<NODE>.sock).
    #[arg(long, short = 'n', conflicts_with = "socket")]
    pub node: Option<String>,
    /// Ask the agent listening on this socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Command {
    pub fn table(&self) -> Option<(Table, &ShowArgs)> {
        match self {
            Command::Fdb(a) => Some((Table::Fdb, a)),
            Command::Neigh(a) => Some((Table::Neigh, a)),
            Command::Endpoints(a) => Some((Table::Endpoints, a)),
            Command::Vteps(a) => Some((Table::Vteps, a)),
            Command::Stats(a) => Some((Table::Stats, a)),
            _ => None,
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
