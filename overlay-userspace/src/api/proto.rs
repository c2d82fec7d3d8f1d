//! The local API's messages: one JSON request and one JSON response per
//! connection, each a line, on the agent's unix socket (mode 0600).
//!
//! A request is an object whose `op` names it, with its fields beside it:
//! `{"op":"attach","container_id":"…","ifname":"eth0","network":"uber-net","netns":"/run/netns/cni-…"}`.
//! A response is `{"data":…}` or `{"error":"…","code":"not_found"}`.
//!
//! Container runtimes use [`Request::NetworkCreate`] (Docker's CreateNetwork),
//! [`Request::Attach`] (CNI ADD, Docker's Join), [`Request::Detach`] (CNI DEL,
//! Docker's Leave) and [`Request::Attachments`] (CNI CHECK and GC); the CLI's
//! `endpoint add/rm --netns` are [`Request::EndpointAdd`] and
//! [`Request::EndpointRm`].

use std::{fmt, net::Ipv4Addr};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    cluster::resolve::Member,
    gossip::transport::TransportCounts,
    model::{Mac, Plumbing, Subnet},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a network on every node. Answered with a [`NetworkInfo`].
    NetworkCreate(NetworkCreate),
    NetworkLs,
    /// Refused while any node has an endpoint in it.
    NetworkRm {
        name: String,
    },
    /// The CLI's `endpoint add`: the agent plumbs a veth into `netns` as the
    /// next free `ethN`. Answered with an [`EndpointInfo`].
    EndpointAdd {
        network: String,
        /// A namespace name or path.
        netns: String,
        ip: Option<Ipv4Addr>,
        mac: Option<String>,
    },
    /// The CLI's `endpoint rm`: by network and namespace.
    EndpointRm {
        network: String,
        netns: String,
    },
    /// Attaches a runtime's container to a network. Answered with an
    /// [`Attachment`]: what the runtime reports (CNI's result, Docker's Join
    /// answer).
    Attach(AttachRequest),
    /// Detaches an attachment by its key. Answered with the [`Attachment`]
    /// removed; an unknown key is an error with [`ErrorCode::NotFound`], which
    /// an idempotent CNI DEL takes as done.
    Detach(AttachmentKey),
    /// This node's attachments (made by runtimes, the CLI or the file), as a
    /// list of [`Attachment`].
    Attachments,
    EndpointLs,
    Members,
}

impl Request {
    /// Decodes one request line as the socket receives it.
    pub fn decode(line: &str) -> Result<Request, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// A network to create, with the options Docker's `network create` and CNI
/// configurations carry. Absent options take their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    /// 1..=16777215; without it one is allocated from the name, the same on
    /// every node (see `config::rules::allocate_vni`).
    #[serde(default)]
    pub vni: Option<u32>,
    /// IPv4 CIDR; must not overlap another overlay network's subnet.
    pub subnet: String,
    /// Default: the subnet's first host address. Never given to an endpoint.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Addresses never given to an endpoint (Docker's `--aux-address`).
    #[serde(default)]
    pub aux_addresses: Vec<Ipv4Addr>,
    /// The containers' MTU; default: the underlay's MTU minus 50.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// No way out: no gateway route, no ARP answer for the gateway, no NAT.
    #[serde(default)]
    pub internal: bool,
}

/// What names an attachment on a node: the runtime's container (CNI's
/// `CNI_CONTAINERID`; for Docker the EndpointID) and the interface name it
/// asked for (CNI's `CNI_IFNAME`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// A runtime's request to attach a container to a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    pub container_id: String,
    /// With [`Plumbing::Agent`], the container end's name inside the
    /// namespace; it must not exist there yet. With [`Plumbing::Caller`] only
    /// part of the key.
    pub ifname: String,
    pub network: String,
    /// The container's network namespace: a path (`/run/netns/cni-…`,
    /// `/proc/PID/ns/net`, `/var/run/docker/netns/ID`) or a name in
    /// `/var/run/netns`. Saved: an attachment whose namespace is gone when the
    /// agent starts is dropped.
    pub netns: String,
    /// Without it, one is allocated from this node's address blocks.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Default: 02:42 followed by the IPv4 address.
    #[serde(default)]
    pub mac: Option<Mac>,
    /// Default: the agent plumbs the container end.
    #[serde(default)]
    pub plumbing: Plumbing,
}

/// One attachment, as a runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `None` for endpoints of the CLI and the cluster file.
    pub container_id: Option<String>,
    /// The key's interface name (for the CLI's endpoints, their name inside).
    pub ifname: String,
    pub network: String,
    pub vni: u32,
    pub netns: String,
    pub plumbing: Plumbing,
    /// The end in the agent's namespace, with the programs attached.
    pub host_ifname: String,
    /// The other end: inside the namespace under `ifname` ([`Plumbing::Agent`]),
    /// or in the agent's namespace under this name until the caller moves it
    /// ([`Plumbing::Caller`]: Docker's `SrcName`).
    pub container_ifname: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The gateway to report; `None` on an internal network.
    pub gateway: Option<Ipv4Addr>,
    /// Routes beside the subnet's own: the default route through the gateway
    /// (set inside with [`Plumbing::Agent`]; the caller's to set otherwise).
    pub routes: Vec<Route>,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `0.0.0.0/0` for the default route.
    pub dst: Subnet,
    pub gateway: Option<Ipv4Addr>,
}

/// Why a request failed, for callers that act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or an option is refused (CNI: 7).
    Invalid,
    /// No such network, endpoint or attachment (CNI: 3 for DEL's purposes).
    NotFound,
    /// It exists already: a network name, an attachment key, an interface.
    Exists,
    /// No agent answers, or it is shutting down (CNI: 11, try again later).
    Unavailable,
    /// Anything else: the system refused (netlink, nftables, the state file).
    Failed,
}

/// An error with a code, anywhere in an `anyhow` chain; the client returns
/// one for every failure, so callers can `downcast_ref::<ApiError>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// An error carrying `code`, for a handler to return.
pub fn api_error(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ApiError {
        code,
        message: message.into(),
    })
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Response {
        Response {
            error: None,
            code: None,
            data: serde_json::to_value(data).expect("API types serialize"),
        }
    }
    /// The error's message, with the code of the first [`ApiError`] in its
    /// chain ([`ErrorCode::Failed`] if none).
    pub fn err(e: &anyhow::Error) -> Response {
        let code = e
            .chain()
            .find_map(|c| c.downcast_ref::<ApiError>())
            .map_or(ErrorCode::Failed, |a| a.code);
        Response {
            error: Some(format!("{e:#}")),
            code: Some(code),
            data: serde_json::Value::Null,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub aux_addresses: Vec<Ipv4Addr>,
    /// The containers' MTU on the node that answers.
    pub mtu: u32,
    #[serde(default)]
    pub internal: bool,
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
    /// Local attachments made by a runtime only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented_and_old_fields_still_parse() {
        let attach: Request = serde_json::from_str(
            r#"{"op":"attach","container_id":"c0ffee","ifname":"eth0","network":"n","netns":"/proc/1/ns/net"}"#,
        )
        .unwrap();
        let Request::Attach(a) = attach else {
            panic!("{attach:?}")
        };
        assert_eq!(a.plumbing, Plumbing::Agent);
        assert!(a.ip.is_none() && a.mac.is_none());
        let caller: AttachRequest = serde_json::from_str(
            r#"{"container_id":"e","ifname":"eth0","network":"n","netns":"/x","plumbing":"caller","mac":"02:42:0a:00:00:09"}"#,
        )
        .unwrap();
        assert_eq!(caller.plumbing, Plumbing::Caller);
        // An older CLI's create, with a VNI and nothing else.
        let old: Request = serde_json::from_str(
            r#"{"op":"network_create","name":"b","vni":300,"subnet":"10.3.0.0/24"}"#,
        )
        .unwrap();
        assert_eq!(
            old,
            Request::NetworkCreate(NetworkCreate {
                name: "b".into(),
                vni: Some(300),
                subnet: "10.3.0.0/24".into(),
                ..NetworkCreate::default()
            })
        );
        let detach = serde_json::to_string(&Request::Detach(AttachmentKey {
            container_id: "c".into(),
            ifname: "eth0".into(),
        }))
        .unwrap();
        assert_eq!(
            detach,
            r#"{"op":"detach","container_id":"c","ifname":"eth0"}"#
        );
    }

    #[test]
    fn an_error_carries_the_code_of_its_cause() {
        let e = api_error(ErrorCode::NotFound, "no attachment").context("detaching");
        let r = Response::err(&e);
        assert_eq!(r.code, Some(ErrorCode::NotFound));
        assert_eq!(r.error.as_deref(), Some("detaching: no attachment"));
        let plain = Response::err(&anyhow::anyhow!("netlink said no"));
        assert_eq!(plain.code, Some(ErrorCode::Failed));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"error":"detaching: no attachment","code":"not_found","data":null}"#
        );
    }
}
