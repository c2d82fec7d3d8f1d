//! The test bed: network namespaces as hosts, the seed article's topology, agent
//! processes, a kernel-VXLAN reference host, in-process traffic and capture, and
//! the one scenario (containers, networks, names) with the cluster files that
//! describe it, and real container engines (dockerd, Podman) with offline
//! images. Everything it creates is removed by a guard's `Drop`, so a
//! failing test cleans up too.
//!
//! This library does not depend on the overlay crates, so `cargo xtask demo` can
//! use it without building them first.

mod agent;
mod capture;
mod cluster;
mod cluster_file;
mod cmd;
pub mod cni;
mod docker_overlay;
mod docker_swarm;
mod dockerd;
mod image;
mod kernel_vxlan;
mod netns;
mod nft;
mod peers;
mod pinger;
mod podman;
pub mod prog_run;
pub mod prometheus;
mod scale;
pub mod scenario;
mod seed_overlay;
mod topology;
mod traffic;

#[cfg(test)]
mod selftest;

pub use agent::{Agent, LeftDataplane, keygen, overlay_binary, upgrade_variant_binary};
pub use capture::{
    Capture, inject, ipv4_sources_to, ipv4_udp, is_arp, is_ipv4_fragment, is_vxlan, vxlan_inner,
};
pub use cluster::{Cluster, ClusterHost, cli_at, node_ip, rss_kib, wait_until};
pub use cluster_file::{
    ClusterFile, ClusterSection, Decap, DockerSection, EndpointSection, NetworkSection,
    RemoteSection,
};
pub use cmd::{TempDir, ip, output_ok, sh, unique_prefix, write_config};
pub use docker_overlay::{DockerContainer, DockerOverlay, netns_handle};
pub use docker_swarm::DockerSwarm;
pub use dockerd::{BUSYBOX_IMAGE, DOCKER_CLIENT, Dockerd, DockerdOptions, IPERF3_IMAGE};
pub use image::{busybox_rootfs_tar, iperf3_rootfs_tar};
pub use kernel_vxlan::{KernelVxlanNode, VXLAN_PORT};
pub use netns::{Netns, in_netns, join, netns_path};
pub use nft::NftTable;
pub use peers::{
    PeerSpec, Peers, SCALE_NETWORK, SCALE_SUBNET, SCALE_VNI, ScaleBed, peer_binary, sample,
};
pub use pinger::{PingLog, Pinger};
pub use podman::{Podman, PodmanContainer, remove_podman_leftovers};
pub use scale::{TIMEOUT_SCALE_VAR, scaled, timeout_scale};
pub use seed_overlay::Overlay;
pub use topology::{NODE1_VTEP, NODE2_VTEP, OUTSIDE_IP, SeedTopology, TopologyOptions};
pub use traffic::{
    IpReceived, PingStats, TransferReport, ip_received, link_bytes, link_stats, ping, tcp_transfer,
    tcp_transfer_via,
};
