//! The plugin's configuration, as the runtime hands it on stdin: the
//! configuration list's entry for this plugin, with `cniVersion`, `name`,
//! `runtimeConfig`, `prevResult` and (for GC) the attachments that stay.

use std::{net::Ipv4Addr, path::PathBuf};

use serde_json::{Map, Value};

use super::{
    error::{CniError, DECODING_FAILURE, INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD},
    version::{self, Version},
};
use crate::{api::proto::AttachmentKey, config::rules, model::Mac};

/// The plugin's configuration as the runtime passes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: Version,
    /// The configuration's (the conflist's) name: the runtime's network.
    pub name: String,
    /// The overlay network; default: `name`.
    pub network: String,
    /// The agent's socket; default: the only one in `/run/overlay`.
    pub socket: Option<PathBuf>,
    /// `dns`, handed back in the result as it is.
    pub dns: Option<Value>,
    /// The result of the plugins before this one (ADD), or of the whole chain
    /// (DEL, CHECK).
    pub prev_result: Option<Map<String, Value>>,
    /// From `runtimeConfig`: the `ips` and `mac` capabilities.
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) mac: Option<Mac>,
}

/// Keys of the plugin's configuration this plugin reads or tolerates; any
/// other is refused with code 2, since it is most likely a typo.
const KNOWN_KEYS: [&str; 11] = [
    "cniVersion",
    "name",
    "type",
    "network",
    "socket",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    "args",
    "dns",
    "ipMasq",
];

pub(super) fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            DECODING_FAILURE,
            "the network configuration on stdin is not JSON",
            e.to_string(),
        )
    })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(CniError::new(
            DECODING_FAILURE,
            "the network configuration on stdin is not a JSON object",
            format!("got {}", kind(&other)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn string<'a>(object: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(CniError::config(format!(
            "{key} must be a string, not {}",
            kind(other)
        ))),
    }
}

/// The configuration `object` carries, checked for `command`.
pub(super) fn read(object: &Map<String, Value>, command: &str) -> Result<NetConf, CniError> {
    let Some(asked) = string(object, "cniVersion")? else {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion is missing; this plugin supports {}",
                version::supported_list().join(", ")
            ),
        ));
    };
    let cni_version = Version::parse(asked)?;
    if let Some(since) = Version::introducing(command)
        && cni_version < since
    {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "{command} needs cniVersion {since} or later; the configuration says {cni_version}"
            ),
        ));
    }
    let name = string(object, "name")?
        .ok_or_else(|| CniError::config("name (the network configuration's name) is missing"))?;
    cni_name(name).map_err(|e| CniError::config(format!("name: {e}")))?;
    for (key, value) in object {
        if key == "ipam" {
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                format!("unsupported field ipam: {value}"),
                "the overlay agent allocates the addresses; remove the ipam section",
            ));
        }
        if !KNOWN_KEYS.contains(&key.as_str()) && !key.starts_with("cni.dev/") {
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                format!("unsupported field {key}: {value}"),
                format!(
                    "overlay-cni reads {} (and cni.dev/ keys)",
                    KNOWN_KEYS.join(", ")
                ),
            ));
        }
    }
    let network = string(object, "network")?.unwrap_or(name);
    rules::network_name(network).map_err(|e| CniError::config(format!("network: {e}")))?;
    let socket = string(object, "socket")?.map(PathBuf::from);
    if let Some(s) = &socket
        && !s.is_absolute()
    {
        return Err(CniError::config(format!(
            "socket: {} is not an absolute path",
            s.display()
        )));
    }
    let prev_result = match object.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(Value::Object(prev)) => {
            super::result::check_shape(prev)?;
            Some(prev.clone())
        }
        Some(other) => {
            return Err(CniError::config(format!(
                "prevResult must be an object, not {}",
                kind(other)
            )));
        }
    };
    let (ip, mac) = runtime_config(object.get("runtimeConfig"))?;
    Ok(NetConf {
        cni_version,
        name: name.to_owned(),
        network: network.to_owned(),
        socket,
        dns: object.get("dns").cloned(),
        prev_result,
        ip,
        mac,
    })
}

/// The CNI rule for container IDs and network names: an alphanumeric, then
/// alphanumerics, `_`, `.` and `-`.
pub(super) fn cni_name(text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(format!(
            "{text:?} must start with a letter or digit, followed by letters, digits, _ . or -"
        ))
    }
}

/// The `ips` and `mac` capabilities (CNI conventions); other capabilities
/// (`portMappings`, …) are for the plugins chained after this one.
fn runtime_config(value: Option<&Value>) -> Result<(Option<Ipv4Addr>, Option<Mac>), CniError> {
    let Some(value) = value else {
        return Ok((None, None));
    };
    let Value::Object(rc) = value else {
        return Err(CniError::config(format!(
            "runtimeConfig must be an object, not {}",
            kind(value)
        )));
    };
    let ip = match rc.get("ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ips)) => {
            let mut v4 = Vec::new();
            for entry in ips {
                let text = entry.as_str().ok_or_else(|| {
                    CniError::config(format!("runtimeConfig.ips: {entry} is not a string"))
                })?;
                let address = text.split_once('/').map_or(text, |(a, _)| a);
                match address.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(ip)) => v4.push(ip),
                    Ok(std::net::IpAddr::V6(_)) => {
                        return Err(CniError::new(
                            UNSUPPORTED_FIELD,
                            format!("unsupported field runtimeConfig.ips: {text}"),
                            "the overlay carries IPv4 only",
                        ));
                    }
                    Err(_) => {
                        return Err(CniError::config(format!(
                            "runtimeConfig.ips: {text:?} is not an IP address"
                        )));
                    }
                }
            }
            match v4.as_slice() {
                [] => None,
                [one] => Some(*one),
                _ => {
                    return Err(CniError::config(format!(
                        "runtimeConfig.ips: one IPv4 address per attachment, not {v4:?}"
                    )));
                }
            }
        }
        Some(other) => {
            return Err(CniError::config(format!(
                "runtimeConfig.ips must be a list, not {}",
                kind(other)
            )));
        }
    };
    let mac = match rc.get("mac") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            text.parse::<Mac>()
                .map_err(|e| CniError::config(format!("runtimeConfig.mac: {e}")))?,
        ),
        Some(other) => {
            return Err(CniError::config(format!(
                "runtimeConfig.mac must be a string, not {}",
                kind(other)
            )));
        }
    };
    Ok((ip, mac))
}

/// GC's `cni.dev/valid-attachments` (libcni's key; the 1.1.0 text calls it
/// `cni.dev/attachments`, which is read when the other is absent). Null is an
/// empty list; absent is an error, since it would collect everything.
pub(super) fn valid_attachments(
    object: &Map<String, Value>,
) -> Result<Vec<AttachmentKey>, CniError> {
    let key = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .into_iter()
        .find(|k| object.contains_key(*k))
        .ok_or_else(|| {
            CniError::config("GC needs cni.dev/valid-attachments, the attachments that stay")
        })?;
    let list = match &object[key] {
        Value::Null => return Ok(Vec::new()),
        Value::Array(list) => list,
        other => {
            return Err(CniError::config(format!(
                "{key} must be a list, not {}",
                kind(other)
            )));
        }
    };
    list.iter()
        .map(|entry| {
            let field = |name: &str| {
                entry.get(name).and_then(Value::as_str).ok_or_else(|| {
                    CniError::config(format!(
                        "{key}: {entry} has no {name} string (want containerID and ifname)"
                    ))
                })
            };
            Ok(AttachmentKey {
                container_id: field("containerID")?.to_owned(),
                ifname: field("ifname")?.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::{
        error::INVALID_CONFIG,
        invocation::{Invocation, parse},
        test_env::{add_env, code, env},
    };

    #[test]
    fn configurations_are_checked_with_the_spec_codes() {
        let add = add_env();
        assert_eq!(code(&add, "{not json"), DECODING_FAILURE);
        assert_eq!(code(&add, "[1]"), DECODING_FAILURE);
        assert_eq!(code(&add, r#"{"name":"n"}"#), INCOMPATIBLE_VERSION);
        assert_eq!(
            code(&add, r#"{"cniVersion":"9.9.9","name":"n"}"#),
            INCOMPATIBLE_VERSION
        );
        assert_eq!(code(&add, r#"{"cniVersion":"1.0.0"}"#), INVALID_CONFIG);
        assert_eq!(
            code(&add, r#"{"cniVersion":"1.0.0","name":"-x"}"#),
            INVALID_CONFIG
        );
        let e = parse(
            &env(&add),
            br#"{"cniVersion":"1.0.0","name":"n","sokcet":"/x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, UNSUPPORTED_FIELD);
        assert!(e.msg.contains("sokcet") && e.msg.contains("/x"), "{e:?}");
        let ipam = r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#;
        assert_eq!(code(&add, ipam), UNSUPPORTED_FIELD);
        let v6 = r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["fd00::2/64"]}}"#;
        assert_eq!(code(&add, v6), UNSUPPORTED_FIELD);
        let rel = r#"{"cniVersion":"1.0.0","name":"n","socket":"x.sock"}"#;
        assert_eq!(code(&add, rel), INVALID_CONFIG);
        let mut check = add.clone();
        check[0] = ("CNI_COMMAND", "CHECK");
        assert_eq!(
            code(&check, r#"{"cniVersion":"0.3.1","name":"n"}"#),
            INCOMPATIBLE_VERSION
        );
        let status = [("CNI_COMMAND", "STATUS")];
        assert_eq!(
            code(&status, r#"{"cniVersion":"1.0.0","name":"n"}"#),
            INCOMPATIBLE_VERSION
        );
    }

    #[test]
    fn capabilities_and_defaults() {
        let conf = r#"{"cniVersion":"1.1.0","name":"blue","runtimeConfig":{"ips":["10.0.0.7/24"],"mac":"02:00:00:00:00:07","portMappings":[]}}"#;
        let Invocation::Add { conf, target } = parse(&env(&add_env()), conf.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(conf.network, "blue");
        assert_eq!(conf.socket, None);
        assert_eq!(target.ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(target.mac.unwrap().to_string(), "02:00:00:00:00:07");
    }

    #[test]
    fn gc_reads_the_attachments_that_stay() {
        let vars = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
        let conf = r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        let Invocation::Gc { valid, .. } = parse(&env(&vars), conf.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            valid,
            vec![AttachmentKey {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
        let old = r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":null}"#;
        assert!(
            matches!(parse(&env(&vars), old.as_bytes()), Ok(Invocation::Gc { valid, .. }) if valid.is_empty())
        );
        assert_eq!(
            code(&vars, r#"{"cniVersion":"1.1.0","name":"n"}"#),
            INVALID_CONFIG
        );
        assert_eq!(
            code(
                &vars,
                r#"{"cniVersion":"1.0.0","name":"n","cni.dev/attachments":[]}"#
            ),
            INCOMPATIBLE_VERSION
        );
    }
}
