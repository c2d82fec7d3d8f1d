//! The test bed: network namespaces as hosts, the seed article's topology, agent
//! processes, a kernel-VXLAN reference host, in-process traffic and capture, and
//! the one scenario (containers, networks, names) with the cluster files that
//! describe it. Everything it creates is removed by a guard's `Drop`, so a
//! failing test cleans up too.
//!
//! This library does not depend on the overlay crates, so `cargo xtask demo` can
//! use it without building them first.

mod agent;
mod capture;
mod cluster;
mod cluster_file;
mod cmd;
mod dockerd;
mod kernel_vxlan;
mod netns;
mod nft;
mod pinger;
pub mod prog_run;
mod scale;
pub mod scenario;
mod seed_overlay;
mod topology;
mod traffic;

#[cfg(test)]
mod selftest;

pub use agent::{Agent, LeftDataplane, keygen, overlay_binary, upgrade_variant_binary};
pub use capture::{Capture, is_arp, is_vxlan, vxlan_inner};
pub use cluster::{Cluster, ClusterHost, cli_at, node_ip, rss_kib, wait_until};
pub use cluster_file::{
    ClusterFile, ClusterSection, Decap, EndpointSection, NetworkSection, RemoteSection,
};
pub use cmd::{TempDir, ip, output_ok, sh, unique_prefix, write_config};
pub use dockerd::Dockerd;
pub use kernel_vxlan::{KernelVxlanNode, VXLAN_PORT};
pub use netns::{Netns, in_netns, netns_path};
pub use nft::NftTable;
pub use pinger::{PingLog, Pinger};
pub use scale::{TIMEOUT_SCALE_VAR, scaled, timeout_scale};
pub use seed_overlay::Overlay;
pub use topology::{NODE1_VTEP, NODE2_VTEP, OUTSIDE_IP, SeedTopology, TopologyOptions};
pub use traffic::{PingStats, TransferReport, link_stats, ping, tcp_transfer};
