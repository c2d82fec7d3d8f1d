//! The local API's messages: one JSON request and one JSON response per
//! connection, each a line.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{cluster::resolve::Member, gossip::transport::TransportCounts};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    NetworkCreate {
        name: String,
        vni: u32,
        subnet: String,
    },
    NetworkLs,
    NetworkRm {
        name: String,
    },
    EndpointAdd {
        network: String,
        netns: String,
        ip: Option<Ipv4Addr>,
        mac: Option<String>,
    },
    EndpointRm {
        network: String,
        netns: String,
    },
    EndpointLs,
    Members,
}

impl Request {
    /// Decodes one request line as the socket receives it.
    pub fn decode(line: &str) -> Result<Request, serde_json::Error> {
        serde_json::from_str(line)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Response {
        Response {
            error: None,
            data: serde_json::to_value(data).expect("API types serialize"),
        }
    }
    pub fn err(e: &anyhow::Error) -> Response {
        Response {
            error: Some(format!("{e:#}")),
            data: serde_json::Value::Null,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub origin: String,
    pub from_config: bool,
    pub endpoints: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkList {
    pub networks: Vec<NetworkInfo>,
    pub conflicts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub node: String,
    /// Local endpoints only.
    pub netns: Option<String>,
    pub host_ifname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    pub node: String,
    pub gossip: bool,
    pub members: Vec<Member>,
    pub transport: Option<TransportCounts>,
    pub conflicts: Vec<String>,
}

/// A request on its way to the agent, with where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);
