//! The userspace half of the overlay dataplane: the agent and its CLI.
//!
//! The modules in the order data flows through them, from what an operator or
//! the cluster says to what the maps hold:
//!
//! 1. [`config`]: the cluster file, parsed and checked, and the [`config::rules`]
//!    the local API shares; [`model`]: the vocabulary (MAC, subnet).
//! 2. [`host`]: the file resolved against this machine ([`host::plan`]), and the
//!    interfaces, namespaces and veths it needs.
//! 3. [`cluster`] and [`gossip`]: what each node announces, how it travels, and
//!    the one view every node resolves from all announcements.
//! 4. [`desired`]: plan + resolved cluster + local endpoints → the desired state.
//! 5. [`dataplane`]: the eBPF object, pinned maps and programs; the desired state
//!    applied to the maps as a diff ([`dataplane::reconcile`]).
//!
//! Around that flow: [`agent`] (the life cycle, the event loop and the one path
//! a change takes), [`api`] (the local socket), [`docker`] (Docker's network
//! and IPAM drivers, whose calls become API requests), [`cli`] (the commands)
//! and [`cni`] (the `overlay-cni` plugin, a client of the socket).
//!
//! An endpoint goes by a different type on each floor:
//!
//! | type | what it is |
//! |---|---|
//! | [`config::EndpointConfig`] | an `[[endpoint]]` of the cluster file |
//! | [`config::RemoteConfig`] | a `[[remote]]` of the cluster file: an endpoint elsewhere, typed in |
//! | [`agent::state_file::SavedEndpoint`] | an endpoint added through the API, as saved on disk |
//! | [`host::plan::PlannedEndpoint`] | a local endpoint with every name and number decided |
//! | [`host::veth::CreatedEndpoint`] | a planned endpoint whose veth pair exists (with its ifindexes) |
//! | [`agent::endpoints::Attached`] | a created endpoint with its programs attached, and its origin |
//! | [`cluster::record::EndpointRecord`] | a local endpoint as this node announces it |
//! | [`cluster::resolve::AcceptedRemote`] | another node's announced endpoint, accepted by resolve |
//! | [`desired::LocalEndpoint`], [`desired::RemoteEndpoint`] | what the maps should hold for it |
//! | [`api::proto::EndpointInfo`] | what `overlay endpoint ls` shows |
//! | [`api::proto::Attachment`] | a runtime's attachment, as the agent answers (CNI's result is made from it) |
//! | [`overlay_common::Endpoint`] | the ENDPOINTS map's value (the ABI) |

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod cni;
pub mod config;
pub mod dataplane;
pub mod desired;
pub mod docker;
pub mod gossip;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod monitor;
