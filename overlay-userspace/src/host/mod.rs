//! The host floor: this machine's interfaces and namespaces. The cluster file
//! resolved against the machine ([`plan`]); rtnetlink ([`netlink`]); entering
//! namespaces ([`netns`]); an endpoint's veth pair ([`veth`]); interface
//! names ([`ifname`]); GRO on the container's end ([`ethtool`]); the way out of the overlay through this host
//! ([`egress`], and beside a dockerd [`docker_user`]); the VXLAN port's tunnel
//! socket, whose GRO merges frames before TC decap ([`tunnel_gro`]).

pub mod docker_user;
pub mod egress;
pub mod ethtool;
pub mod ifname;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod tunnel_gro;
pub mod veth;
