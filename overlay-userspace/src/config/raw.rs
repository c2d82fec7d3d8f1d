//! The cluster file as TOML gives it: strings and numbers, not yet checked.
//! Unknown keys are refused here, so a typo never passes silently.

use serde::Deserialize;

use super::DecapMode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: String,
    pub underlay: String,
    pub vtep: Option<String>,
    pub vxlan_port: Option<u16>,
    pub source_ports: Option<[u16; 2]>,
    pub decap: Option<DecapMode>,
    pub metrics_listen: Option<String>,
    #[serde(default, rename = "network")]
    pub networks: Vec<RawNetwork>,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<RawEndpoint>,
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RawRemote>,
    pub cluster: Option<RawCluster>,
    pub docker: Option<RawDocker>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocker {
    pub plugin_socket: Option<String>,
    pub engine: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub listen: String,
    pub advertise: Option<String>,
    #[serde(default)]
    pub seeds: Vec<String>,
    pub key_file: String,
    pub gossip_interval_ms: Option<u64>,
    pub cluster_id: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub name: String,
    pub vni: Option<i64>,
    pub subnet: String,
    pub mtu: Option<u32>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub aux_addresses: Vec<String>,
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub network: String,
    pub netns: String,
    pub ip: String,
    pub mac: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    pub network: String,
    pub ip: String,
    pub mac: String,
    pub vtep: String,
}
