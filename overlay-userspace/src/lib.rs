//! The userspace half of the overlay dataplane: the agent and its CLI.
//!
//! - [`config`]: the cluster file, parsed and validated.
//! - [`node`]: the file resolved against this machine (underlay, VTEP, names).
//! - [`netlink`], [`plumbing`]: interfaces, namespaces and endpoint veths.
//! - [`loader`]: the eBPF object, its maps (pinned) and program attachments.
//! - [`membership`]: sources of cluster membership, producing a desired state.
//! - [`reconcile`]: desired state → map contents, applied as a diff.
//! - [`tunnel_gro`]: the UDP tunnel socket whose GRO merges frames before TC decap.
//! - [`agent`], [`cli`], [`show`]: the agent's life cycle and the commands.
pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod gossip;
pub mod ipam;
pub mod kernel;
pub mod loader;
pub mod membership;
pub mod netlink;
pub mod node;
pub mod plumbing;
pub mod reconcile;
pub mod show;
pub mod state;
pub mod tunnel_gro;
