//! What dockerd sends a remote network driver and a remote IPAM driver, and
//! what they answer (libnetwork `drivers/remote/api`, `ipams/remote/api`):
//! JSON with Go's field names. Every request field defaults, as Go's decoder
//! leaves absent ones zero. A response leaves out what it has not set: a
//! field Docker filled itself must never come back.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Go sends a nil map or slice as `null`: read as empty.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Both drivers on one socket, as `Plugin.Activate` says.
pub const IMPLEMENTS: [&str; 2] = ["NetworkDriver", "IpamDriver"];

/// The address space both of the IPAM's defaults are: a network whose
/// IPv4Data names another one was given Docker's default IPAM.
pub const ADDRESS_SPACE: &str = "overlay-ebpf";

/// The generic option map of CreateNetwork (`-o KEY=VALUE`).
pub const GENERIC: &str = "com.docker.network.generic";
pub const INTERNAL: &str = "com.docker.network.internal";
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// ProgramExternalConnectivity's port bindings (`-p`).
pub const PORT_MAP: &str = "com.docker.network.portmap";
/// RequestAddress's option saying that the gateway is asked for.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";

/// An answer with nothing in it: `{}`.
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct IpamData {
    pub address_space: String,
    /// CIDR.
    pub pool: String,
    /// CIDR: the address with the pool's prefix length.
    pub gateway: String,
    /// Name → CIDR.
    #[serde(deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// DeleteNetwork, and the endpoint calls that name nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(rename = "AddressIPv6", skip_serializing_if = "String::is_empty")]
    pub address_ipv6: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The container's network namespace, a path.
    pub sandbox_key: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The veth end in this namespace that Docker moves into the sandbox.
    pub src_name: String,
    /// Docker names it `<prefix><n>`: eth0, eth1, …
    pub dst_prefix: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Without a gateway, on a network that is not internal, Docker would add
    /// its docker_gwbridge: an internal network says no.
    pub disable_gateway_service: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ProgramExternalConnectivity {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, Value>,
}

/// One of `-p`'s bindings, as libnetwork's `types.PortBinding` marshals.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct PortBinding {
    /// IANA protocol number: 6 TCP, 17 UDP, 132 SCTP.
    pub proto: u8,
    pub port: u16,
    /// Empty (or unspecified): every address of the host.
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    pub host_port: u16,
    pub host_port_end: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RequestPool {
    pub address_space: String,
    pub pool: String,
    pub sub_pool: String,
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address asked for (`--ip`, `--gateway`, an aux address); empty:
    /// any.
    pub address: String,
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressResponse {
    /// CIDR.
    pub address: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReleasePool {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// A call dockerd makes with a body, decoded as the server reads it.
#[derive(Debug)]
pub enum Request {
    CreateNetwork(CreateNetwork),
    DeleteNetwork(EndpointRef),
    CreateEndpoint(CreateEndpoint),
    DeleteEndpoint(EndpointRef),
    Join(Join),
    Leave(EndpointRef),
    ProgramExternalConnectivity(ProgramExternalConnectivity),
    RevokeExternalConnectivity(EndpointRef),
    RequestPool(RequestPool),
    ReleasePool(ReleasePool),
    RequestAddress(RequestAddress),
    ReleaseAddress(ReleaseAddress),
}

impl Request {
    /// `body` as `method` (`/<Interface>.<Method>`) sends it, an empty body
    /// read as `{}`; `None` for a method that takes no body or is not served.
    pub fn decode(method: &str, body: &[u8]) -> Option<Result<Request, serde_json::Error>> {
        fn read<R: serde::de::DeserializeOwned>(
            body: &[u8],
            variant: fn(R) -> Request,
        ) -> Result<Request, serde_json::Error> {
            let body = if body.iter().all(u8::is_ascii_whitespace) {
                b"{}".as_slice()
            } else {
                body
            };
            serde_json::from_slice(body).map(variant)
        }
        Some(match method {
            "NetworkDriver.CreateNetwork" => read(body, Request::CreateNetwork),
            "NetworkDriver.DeleteNetwork" => read(body, Request::DeleteNetwork),
            "NetworkDriver.CreateEndpoint" => read(body, Request::CreateEndpoint),
            "NetworkDriver.DeleteEndpoint" => read(body, Request::DeleteEndpoint),
            "NetworkDriver.Join" => read(body, Request::Join),
            "NetworkDriver.Leave" => read(body, Request::Leave),
            "NetworkDriver.ProgramExternalConnectivity" => {
                read(body, Request::ProgramExternalConnectivity)
            }
            "NetworkDriver.RevokeExternalConnectivity" => {
                read(body, Request::RevokeExternalConnectivity)
            }
            "IpamDriver.RequestPool" => read(body, Request::RequestPool),
            "IpamDriver.ReleasePool" => read(body, Request::ReleasePool),
            "IpamDriver.RequestAddress" => read(body, Request::RequestAddress),
            "IpamDriver.ReleaseAddress" => read(body, Request::ReleaseAddress),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_docker_sends_them() {
        let create: CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"abc","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"vni":"5000"}},
            "IPv4Data":[{"AddressSpace":"overlay-ebpf","Gateway":"10.0.9.1/24","Pool":"10.0.9.0/24",
            "AuxAddresses":{"a":"10.0.9.2/24"}}],"IPv6Data":[]}"#,
        )
        .unwrap();
        let v4 = &create.ipv4_data.as_ref().unwrap()[0];
        assert_eq!(
            (v4.pool.as_str(), v4.gateway.as_str()),
            ("10.0.9.0/24", "10.0.9.1/24")
        );
        assert_eq!(v4.aux_addresses["a"], "10.0.9.2/24");
        assert_eq!(create.options[GENERIC]["vni"], "5000");
        // Go's nil maps and slices arrive as null.
        let create: CreateNetwork =
            serde_json::from_str(r#"{"NetworkID":"x","Options":null,"IPv6Data":null}"#).unwrap();
        assert!(create.ipv6_data.is_none() && create.options.is_empty());
        let pool: RequestPool = serde_json::from_str(
            r#"{"AddressSpace":"overlay-ebpf","Pool":"10.0.9.0/24","SubPool":"","Options":null,"V6":false}"#,
        )
        .unwrap();
        assert!(pool.options.is_empty());
        let binding: PortBinding = serde_json::from_str(
            r#"{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}"#,
        )
        .unwrap();
        assert_eq!(
            (binding.proto, binding.port, binding.host_port),
            (6, 80, 8080)
        );
    }

    #[test]
    fn a_body_decodes_as_its_method_says() {
        let join = Request::decode(
            "NetworkDriver.Join",
            br#"{"NetworkID":"n","EndpointID":"e","SandboxKey":"/var/run/docker/netns/x"}"#,
        );
        assert!(
            matches!(join, Some(Ok(Request::Join(j))) if j.sandbox_key == "/var/run/docker/netns/x")
        );
        // An empty body is `{}`: every field at its default.
        assert!(matches!(
            Request::decode("IpamDriver.ReleasePool", b" \n"),
            Some(Ok(Request::ReleasePool(r))) if r.pool_id.is_empty()
        ));
        assert!(matches!(
            Request::decode("NetworkDriver.Leave", b"{not json"),
            Some(Err(_))
        ));
        // Methods without a body, and unknown ones, are the server's.
        assert!(Request::decode("Plugin.Activate", b"").is_none());
        assert!(Request::decode("NetworkDriver.Jump", b"{}").is_none());
    }

    #[test]
    fn responses_leave_out_what_they_do_not_set() {
        let none = serde_json::to_string(&CreateEndpointResponse::default()).unwrap();
        assert_eq!(none, "{}");
        let mac = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:0a:00:09:02".into(),
                ..EndpointInterface::default()
            }),
        };
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#"{"Interface":{"MacAddress":"02:42:0a:00:09:02"}}"#
        );
        let join = JoinResponse {
            interface_name: InterfaceName {
                src_name: "ov1p".into(),
                dst_prefix: "eth".into(),
            },
            gateway: String::new(),
            disable_gateway_service: true,
        };
        assert_eq!(
            serde_json::to_string(&join).unwrap(),
            r#"{"InterfaceName":{"SrcName":"ov1p","DstPrefix":"eth"},"DisableGatewayService":true}"#
        );
    }
}
