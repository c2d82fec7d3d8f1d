//! The ADD result, in the version the runtime asked for, and what CHECK reads
//! back from it.
//!
//! A result lists the host veth, then the container's interface with its
//! `sandbox`; the address with its gateway on the container's interface; the
//! default route unless the network is internal. Given a `prevResult` (plugins
//! before this one in the chain), the result is that one with this
//! attachment's entries appended, so nothing earlier plugins reported is lost.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    error::{CniError, NOT_AS_ADDED},
    version::Version,
};
use crate::api::proto::Attachment;

/// The ADD result for `attachment`, made in namespace `netns`.
pub fn add_result(
    version: Version,
    attachment: &Attachment,
    netns: &str,
    dns: Option<&Value>,
    prev: Option<&Map<String, Value>>,
) -> Result<Value, CniError> {
    let mut result = prev.cloned().unwrap_or_default();
    result.insert("cniVersion".into(), json!(version.as_str()));
    let with_mtu = |mut interface: Value| {
        if version.interface_has_mtu() {
            interface["mtu"] = json!(attachment.mtu);
        }
        interface
    };
    let mut host = json!({ "name": attachment.host_ifname });
    if let Some(mac) = attachment.host_mac {
        host["mac"] = json!(mac.to_string());
    }
    let container = json!({
        "name": attachment.ifname,
        "mac": attachment.mac.to_string(),
        "sandbox": netns,
    });
    let interfaces = list(&mut result, "interfaces")?;
    let container_index = interfaces.len() + 1;
    interfaces.push(with_mtu(host));
    interfaces.push(with_mtu(container));

    let mut ip = json!({
        "address": format!("{}/{}", attachment.ip, attachment.prefix_len),
        "interface": container_index,
    });
    if let Some(gateway) = attachment.gateway {
        ip["gateway"] = json!(gateway.to_string());
    }
    if version.ip_has_version() {
        ip["version"] = json!("4");
    }
    list(&mut result, "ips")?.push(ip);

    let routes = list(&mut result, "routes")?;
    for route in &attachment.routes {
        let mut entry = json!({ "dst": route.dst.to_string() });
        if let Some(gw) = route.gateway {
            entry["gw"] = json!(gw.to_string());
        }
        routes.push(entry);
    }

    let prev_dns_empty = result
        .get("dns")
        .is_none_or(|d| d.as_object().is_none_or(Map::is_empty));
    if prev_dns_empty {
        result.insert("dns".into(), dns.cloned().unwrap_or_else(|| json!({})));
    }
    Ok(Value::Object(result))
}

/// A `prevResult` this plugin can extend: its lists are lists.
pub fn check_shape(prev: &Map<String, Value>) -> Result<(), CniError> {
    for key in ["interfaces", "ips", "routes"] {
        if let Some(value) = prev.get(key)
            && !value.is_array()
        {
            return Err(CniError::config(format!(
                "prevResult.{key} must be a list, not {value}"
            )));
        }
    }
    Ok(())
}

/// The list under `key` of a result, made if absent.
fn list<'a>(result: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, CniError> {
    match result.entry(key).or_insert_with(|| json!([])) {
        Value::Array(list) => Ok(list),
        other => Err(CniError::config(format!(
            "prevResult.{key} must be a list, not {other}"
        ))),
    }
}

/// What a result says about one attachment's container interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    pub mac: Option<String>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

#[derive(Deserialize)]
struct PrevResult {
    #[serde(default)]
    interfaces: Vec<PrevInterface>,
    #[serde(default)]
    ips: Vec<PrevIp>,
}

#[derive(Deserialize)]
struct PrevInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct PrevIp {
    address: String,
    #[serde(default)]
    interface: Option<usize>,
}

/// CHECK's reading of the chain's result: the interface `ifname` in the
/// sandbox `netns`, and its IPv4 address. Later plugins may have changed
/// routes; interfaces and addresses must be as ADD reported them.
pub fn reported(
    prev: &Map<String, Value>,
    ifname: &str,
    netns: &str,
) -> Result<Reported, CniError> {
    let not_as_added = |problem: String| {
        CniError::new(
            NOT_AS_ADDED,
            "the attachment is not as ADD reported it",
            problem,
        )
    };
    let prev: PrevResult = serde_json::from_value(Value::Object(prev.clone()))
        .map_err(|e| CniError::config(format!("prevResult: {e}")))?;
    let (index, interface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.as_deref() == Some(netns))
        .ok_or_else(|| {
            not_as_added(format!(
                "prevResult lists no interface {ifname} in sandbox {netns}"
            ))
        })?;
    let address = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .find_map(|ip| {
            let (addr, len) = ip.address.split_once('/')?;
            Some((addr.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?))
        })
        .ok_or_else(|| {
            not_as_added(format!(
                "prevResult lists no IPv4 address on interface {index} ({ifname})"
            ))
        })?;
    Ok(Reported {
        mac: interface.mac.clone(),
        ip: address.0,
        prefix_len: address.1,
    })
}

/// Whether the agent's attachment is what the result reported.
pub fn matches(reported: &Reported, attachment: &Attachment) -> Result<(), CniError> {
    let mut problems = Vec::new();
    if (reported.ip, reported.prefix_len) != (attachment.ip, attachment.prefix_len) {
        problems.push(format!(
            "address: the result says {}/{}, the agent has {}/{}",
            reported.ip, reported.prefix_len, attachment.ip, attachment.prefix_len
        ));
    }
    if let Some(mac) = &reported.mac
        && !mac.eq_ignore_ascii_case(&attachment.mac.to_string())
    {
        problems.push(format!(
            "MAC: the result says {mac}, the agent has {}",
            attachment.mac
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            NOT_AS_ADDED,
            "the attachment is not as ADD reported it",
            problems.join("; "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::proto::Route,
        model::{Mac, Plumbing, Subnet},
    };

    fn attachment(internal: bool) -> Attachment {
        let gateway = (!internal).then_some(Ipv4Addr::new(10, 0, 0, 1));
        Attachment {
            container_id: Some("c0ffee".into()),
            ifname: "eth0".into(),
            network: "uber-net".into(),
            vni: 4097,
            netns: "/run/netns/x".into(),
            plumbing: Plumbing::Agent,
            host_ifname: "ov12345678".into(),
            host_mac: gateway.map(Mac::from_ipv4),
            container_ifname: "eth0".into(),
            mac: Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 3)),
            ip: Ipv4Addr::new(10, 0, 0, 3),
            prefix_len: 24,
            gateway,
            routes: gateway
                .map(|gw| Route {
                    dst: "0.0.0.0/0".parse::<Subnet>().unwrap(),
                    gateway: Some(gw),
                })
                .into_iter()
                .collect(),
            mtu: 1450,
            ports: Vec::new(),
        }
    }

    #[test]
    fn results_follow_the_version_asked_for() {
        let a = attachment(false);
        let v1 = add_result(Version::V1_0_0, &a, "/run/netns/x", None, None).unwrap();
        assert_eq!(
            v1,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "ov12345678", "mac": "02:42:0a:00:00:01"},
                    {"name": "eth0", "mac": "02:42:0a:00:00:03", "sandbox": "/run/netns/x"}
                ],
                "ips": [{"address": "10.0.0.3/24", "gateway": "10.0.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
                "dns": {}
            })
        );
        let v04 = add_result(Version::V0_4_0, &a, "/run/netns/x", None, None).unwrap();
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(v04["interfaces"][1].get("mtu").is_none());
        let v11 = add_result(Version::V1_1_0, &a, "/run/netns/x", None, None).unwrap();
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert!(v11["ips"][0].get("version").is_none());
        let internal = add_result(Version::V1_0_0, &attachment(true), "/n", None, None).unwrap();
        assert!(internal["routes"].as_array().unwrap().is_empty());
        assert!(internal["ips"][0].get("gateway").is_none());
        assert!(internal["interfaces"][0].get("mac").is_none());
    }

    #[test]
    fn a_previous_result_is_kept_and_extended() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "dummy0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "192.168.5.2/24", "interface": 0}],
            "dns": {"nameservers": ["192.168.5.1"]},
            "custom": true
        });
        let dns = json!({"nameservers": ["10.0.0.1"]});
        let r = add_result(
            Version::V1_0_0,
            &attachment(false),
            "/run/netns/x",
            Some(&dns),
            prev.as_object(),
        )
        .unwrap();
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][0]["address"], "192.168.5.2/24");
        assert_eq!(r["dns"]["nameservers"][0], "192.168.5.1");
        assert_eq!(r["custom"], true);
        let broken = json!({"interfaces": 3});
        assert!(
            add_result(
                Version::V1_0_0,
                &attachment(false),
                "/n",
                None,
                broken.as_object()
            )
            .is_err()
        );
    }

    #[test]
    fn check_finds_the_interface_it_reported() {
        let a = attachment(false);
        let result = add_result(Version::V1_0_0, &a, "/run/netns/x", None, None).unwrap();
        let prev = result.as_object().unwrap();
        let seen = reported(prev, "eth0", "/run/netns/x").unwrap();
        assert_eq!(seen.ip, a.ip);
        matches(&seen, &a).unwrap();
        assert_eq!(
            reported(prev, "eth1", "/run/netns/x").unwrap_err().code,
            NOT_AS_ADDED
        );
        assert_eq!(
            reported(prev, "eth0", "/run/netns/y").unwrap_err().code,
            NOT_AS_ADDED
        );
        let moved = Attachment {
            ip: Ipv4Addr::new(10, 0, 0, 9),
            ..a
        };
        let e = matches(&seen, &moved).unwrap_err();
        assert!(e.details.contains("10.0.0.9"), "{e:?}");
    }
}
