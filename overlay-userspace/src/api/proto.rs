//! The local API's messages: one JSON request and one JSON response per
//! connection, each a line, on the agent's unix socket (mode 0600).
//!
//! A request is an object whose `op` names it, with its fields beside it:
//! `{"op":"attach","container_id":"…","ifname":"eth0","network":"uber-net","netns":"/run/netns/cni-…"}`.
//! A response is `{"data":…}` or `{"error":"…","code":"not_found"}`.
//!
//! Container runtimes use [`Request::NetworkCreate`] (Docker's CreateNetwork),
//! [`Request::Attach`] (CNI ADD, Docker's Join), [`Request::Detach`] (CNI DEL,
//! Docker's Leave), [`Request::Check`] (CNI CHECK) and [`Request::Attachments`]
//! (CNI GC); Docker's driver also [`Request::NetworkCheck`],
//! [`Request::ReserveAddress`] and [`Request::ReleaseAddress`] (its IPAM) and
//! [`Request::Publish`] (`-p`). The CLI's `endpoint add/rm --netns` are
//! [`Request::EndpointAdd`] and
//! [`Request::EndpointRm`].

use std::{fmt, net::Ipv4Addr};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    cluster::resolve::Member,
    gossip::transport::TransportCounts,
    model::{Mac, Plumbing, PortMapping, Subnet},
    monitor::record::Filter,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a network on every node. Answered with a [`NetworkInfo`].
    NetworkCreate(NetworkCreate),
    /// Checks a create without making anything: Docker's CreateNetwork, which
    /// comes before Docker tells the network's name. An empty `name` leaves
    /// the name's checks to the create. Answered with the [`NetworkInfo`] it
    /// would make.
    NetworkCheck(NetworkCreate),
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
    /// Checks one attachment against the system (CNI CHECK): its veth pair,
    /// and inside the namespace its interface's MAC and address. Answered with
    /// the [`Attachment`]; [`ErrorCode::NotFound`] for an unknown key,
    /// [`ErrorCode::Failed`] saying what is wrong.
    Check(AttachmentKey),
    /// Takes an address for an endpoint still to come (Docker's IPAM
    /// RequestAddress): `ip` if given and free, else the next free one of this
    /// node's address blocks. No one else on this node gets it until
    /// [`Request::ReleaseAddress`]; an attach takes it with `reserved`.
    /// Answered with an [`AddressReservation`].
    ReserveAddress {
        network: String,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
    },
    /// Gives a reserved address back (Docker's IPAM ReleaseAddress);
    /// `not_found` if it was not reserved.
    ReleaseAddress {
        network: String,
        ip: Ipv4Addr,
    },
    /// Sets an attachment's published ports, replacing the ones it had
    /// (Docker's ProgramExternalConnectivity; none: RevokeExternalConnectivity).
    /// Answered with the [`Attachment`].
    Publish {
        container_id: String,
        ifname: String,
        ports: Vec<PortMapping>,
    },
    EndpointLs,
    Members,
}

/// The requests whose connection stays open ([`crate::api::stream`]); the
/// agent's loop never sees them. The same `op` tag as [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StreamRequest {
    /// Streams the drops that match `filter` until the client goes.
    Monitor {
        #[serde(default)]
        filter: Filter,
    },
    /// Logs the decisions on packets between `a` and `b` (or anything, without
    /// `b`) in network `vni` (or any) until the client goes.
    Trace {
        a: Ipv4Addr,
        b: Option<Ipv4Addr>,
        vni: Option<u32>,
    },
}

/// One request line as the socket receives it: a stream's, which keeps the
/// connection, or one for the agent's loop. Both share the `op` tag and no op
/// name, so a line is at most one of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Stream(StreamRequest),
    Call(Request),
}

impl Incoming {
    /// Decodes one line, a stream's request first; the error is the one-shot
    /// decoder's, which names the ops a client most likely meant.
    pub fn decode(line: &str) -> Result<Incoming, serde_json::Error> {
        if let Ok(request) = serde_json::from_str::<StreamRequest>(line) {
            return Ok(Incoming::Stream(request));
        }
        serde_json::from_str(line).map(Incoming::Call)
    }

    /// The line a client sends for this request (without its newline).
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        match self {
            Incoming::Stream(request) => serde_json::to_string(request),
            Incoming::Call(request) => serde_json::to_string(request),
        }
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
    /// `ip` was taken with [`Request::ReserveAddress`] (Docker's IPAM): the
    /// attach uses that reservation. Without it, a reserved `ip` is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserved: bool,
}

/// An address taken for an endpoint still to come.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressReservation {
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
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
    /// The host end's MAC when the agent sets it (the gateway's, on a network
    /// with a way out); `None` leaves it the kernel's.
    #[serde(default)]
    pub host_mac: Option<Mac>,
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
    /// Its published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
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
    fn stream_requests_read_back() {
        for text in [
            r#"{"op":"monitor","filter":{"reasons":[],"vni":null,"ips":[]}}"#,
            r#"{"op":"monitor","filter":{"reasons":["drop_no_fdb"],"vni":4097,"ips":["10.0.0.1"]}}"#,
            r#"{"op":"trace","a":"10.0.0.3","b":null,"vni":null}"#,
        ] {
            let r: Result<StreamRequest, _> = serde_json::from_str(text);
            assert!(r.is_ok(), "{text}: {r:?}");
        }
    }

    #[test]
    fn a_line_is_a_stream_or_a_call_as_its_op_says() {
        let monitor = Incoming::decode(r#"{"op":"monitor"}"#).unwrap();
        assert!(matches!(
            monitor,
            Incoming::Stream(StreamRequest::Monitor { .. })
        ));
        let members = Incoming::decode(r#"{"op":"members"}"#).unwrap();
        assert_eq!(members, Incoming::Call(Request::Members));
        let again = Incoming::decode(&members.encode().unwrap()).unwrap();
        assert_eq!(again, members);
        let err = Incoming::decode(r#"{"op":"nonsense"}"#).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

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
