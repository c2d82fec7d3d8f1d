//! What a runtime asks, read from the environment and stdin as the CNI spec
//! lays them out, checked before anything is sent anywhere. [`parse`] is a
//! plain function of the variables and the bytes, so it can be fuzzed.

use std::net::Ipv4Addr;

use serde_json::Value;

use super::{
    conf::{NetConf, cni_name, decode, read, valid_attachments},
    error::{CniError, INVALID_ENVIRONMENT},
    version::Version,
};
use crate::{api::proto::AttachmentKey, config::rules, model::Mac};

/// The environment variables of the protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    /// `CNI_*` from `vars`; unset and empty are the same (as in libcni).
    pub fn from_vars<K: AsRef<str>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        let mut env = Env::default();
        for (key, value) in vars {
            let value: String = value.into();
            if value.is_empty() {
                continue;
            }
            let slot = match key.as_ref() {
                "CNI_COMMAND" => &mut env.command,
                "CNI_CONTAINERID" => &mut env.container_id,
                "CNI_NETNS" => &mut env.netns,
                "CNI_IFNAME" => &mut env.ifname,
                "CNI_ARGS" => &mut env.args,
                "CNI_PATH" => &mut env.path,
                _ => continue,
            };
            *slot = Some(value);
        }
        env
    }

    /// The process's own environment (variables that are not UTF-8 count as
    /// unset).
    pub fn from_process() -> Env {
        Env::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }
}

/// One request, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Invocation {
    /// `asked` is the input's `cniVersion`, echoed in the answer.
    Version {
        asked: Option<String>,
    },
    Add {
        conf: NetConf,
        target: Target,
    },
    /// `target.netns` may be absent: the namespace may be gone.
    Del {
        conf: NetConf,
        target: Target,
    },
    Check {
        conf: NetConf,
        target: Target,
    },
    Status {
        conf: NetConf,
    },
    /// The attachments that stay; the plugin's others go.
    Gc {
        conf: NetConf,
        valid: Vec<AttachmentKey>,
    },
}

impl Invocation {
    /// The version the answer is written in.
    pub fn version(&self) -> Version {
        match self {
            Invocation::Version { .. } => Version::NEWEST,
            Invocation::Add { conf, .. }
            | Invocation::Del { conf, .. }
            | Invocation::Check { conf, .. }
            | Invocation::Status { conf }
            | Invocation::Gc { conf, .. } => conf.cni_version,
        }
    }
}

/// The attachment a command is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<String>,
    /// `IP=` from `CNI_ARGS`, or the `ips` capability.
    pub ip: Option<Ipv4Addr>,
    /// `MAC=` from `CNI_ARGS`, or the `mac` capability.
    pub mac: Option<Mac>,
}

impl Target {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// Reads one invocation: `env` as the runtime set it, `stdin` as it sent it.
pub fn parse(env: &Env, stdin: &[u8]) -> Result<Invocation, CniError> {
    let command = env
        .command
        .as_deref()
        .ok_or_else(|| CniError::environment("CNI_COMMAND", "missing"))?;
    if command == "VERSION" {
        return Ok(Invocation::Version {
            asked: asked_version(stdin),
        });
    }
    let required: &[&str] = match command {
        "ADD" | "CHECK" => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        "DEL" => &["CNI_CONTAINERID", "CNI_IFNAME"],
        "GC" => &["CNI_PATH"],
        "STATUS" => &[],
        other => {
            return Err(CniError::environment(
                "CNI_COMMAND",
                format!("{other:?} is not a CNI command (ADD, DEL, CHECK, STATUS, GC or VERSION)"),
            ));
        }
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|name| value_of(env, name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            INVALID_ENVIRONMENT,
            format!(
                "required environment variables missing: {}",
                missing.join(", ")
            ),
            format!("{command} needs {}", required.join(", ")),
        ));
    }
    let object = decode(stdin)?;
    let conf = read(&object, command)?;
    let target = || target(env, &conf);
    Ok(match command {
        "ADD" => Invocation::Add {
            target: target()?,
            conf,
        },
        "DEL" => Invocation::Del {
            target: target()?,
            conf,
        },
        "CHECK" => Invocation::Check {
            target: target()?,
            conf,
        },
        "STATUS" => Invocation::Status { conf },
        _ => Invocation::Gc {
            valid: valid_attachments(&object)?,
            conf,
        },
    })
}

fn value_of<'a>(env: &'a Env, name: &str) -> Option<&'a str> {
    match name {
        "CNI_CONTAINERID" => env.container_id.as_deref(),
        "CNI_NETNS" => env.netns.as_deref(),
        "CNI_IFNAME" => env.ifname.as_deref(),
        "CNI_PATH" => env.path.as_deref(),
        _ => None,
    }
}

/// VERSION's input version, if stdin says one.
fn asked_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    let asked = value.get("cniVersion")?.as_str()?;
    (!asked.is_empty() && asked.len() <= 32).then(|| asked.to_owned())
}

/// The CNI rule for interface names: 1-15 bytes, not `.` or `..`, without
/// `/`, `:` or whitespace.
fn cni_ifname(text: &str) -> Result<(), String> {
    if text.is_empty()
        || text.len() > 15
        || text == "."
        || text == ".."
        || text
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Err(format!(
            "{text:?} is not an interface name (1-15 bytes, not . or .., no / : or whitespace)"
        ))
    } else {
        Ok(())
    }
}

fn target(env: &Env, conf: &NetConf) -> Result<Target, CniError> {
    let container_id = env.container_id.clone().unwrap_or_default();
    cni_name(&container_id).map_err(|e| CniError::environment("CNI_CONTAINERID", e))?;
    let ifname = env.ifname.clone().unwrap_or_default();
    cni_ifname(&ifname).map_err(|e| CniError::environment("CNI_IFNAME", e))?;
    if let Some(netns) = &env.netns
        && (!netns.starts_with('/') || rules::netns(netns).is_err())
    {
        return Err(CniError::environment(
            "CNI_NETNS",
            format!("{netns:?} is not an absolute path to a network namespace"),
        ));
    }
    let args = cni_args(env.args.as_deref().unwrap_or_default())?;
    Ok(Target {
        container_id,
        ifname,
        netns: env.netns.clone(),
        ip: conf.ip.or(args.ip),
        mac: conf.mac.or(args.mac),
    })
}

#[derive(Default)]
struct CniArgs {
    ip: Option<Ipv4Addr>,
    mac: Option<Mac>,
}

/// `CNI_ARGS`: `K=V;K=V`. `IP` and `MAC` are read; `K8S_POD_*` (what kubelet
/// and Podman send) are accepted; anything else only with `IgnoreUnknown=1`.
fn cni_args(text: &str) -> Result<CniArgs, CniError> {
    let bad = |problem: String| CniError::environment("CNI_ARGS", problem);
    let mut pairs = Vec::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("{pair:?} is not KEY=VALUE")))?;
        pairs.push((key, value));
    }
    let ignore_unknown = pairs
        .iter()
        .any(|(k, v)| *k == "IgnoreUnknown" && ["1", "true", "True"].contains(v));
    let mut args = CniArgs::default();
    for (key, value) in pairs {
        match key {
            "IP" => {
                let address = value.split_once('/').map_or(value, |(a, _)| a);
                args.ip = Some(
                    address
                        .parse()
                        .map_err(|_| bad(format!("IP={value} is not an IPv4 address")))?,
                );
            }
            "MAC" => args.mac = Some(value.parse().map_err(|e| bad(format!("MAC: {e}")))?),
            "IgnoreUnknown" => {}
            k if k.starts_with("K8S_POD_") || ignore_unknown => {}
            k => {
                return Err(bad(format!(
                    "unknown argument {k}={value} (add IgnoreUnknown=1 to pass it anyway)"
                )));
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::test_env::{add_env, code, env};
    use std::path::PathBuf;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"uber-net","type":"overlay-cni","network":"uber-net","socket":"/run/overlay/node1.sock"}"#;

    #[test]
    fn an_add_reads_its_attachment_and_configuration() {
        let mut vars = add_env();
        vars.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.9"));
        let Invocation::Add { conf, target } = parse(&env(&vars), CONF.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(conf.cni_version, Version::V1_0_0);
        assert_eq!(
            (conf.name.as_str(), conf.network.as_str()),
            ("uber-net", "uber-net")
        );
        assert_eq!(conf.socket, Some(PathBuf::from("/run/overlay/node1.sock")));
        assert_eq!(target.key().container_id, "c0ffee");
        assert_eq!(target.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(target.ip, Some(Ipv4Addr::new(10, 0, 0, 9)));
    }

    #[test]
    fn the_environment_is_checked_and_named() {
        assert_eq!(code(&[], CONF), INVALID_ENVIRONMENT);
        assert_eq!(code(&[("CNI_COMMAND", "JUMP")], CONF), INVALID_ENVIRONMENT);
        let e = parse(&env(&[("CNI_COMMAND", "ADD")]), CONF.as_bytes()).unwrap_err();
        assert!(
            e.msg.contains("CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME"),
            "{e:?}"
        );
        // DEL needs no namespace; GC needs CNI_PATH.
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(matches!(
            parse(&env(&del), CONF.as_bytes()),
            Ok(Invocation::Del { .. })
        ));
        assert_eq!(code(&[("CNI_COMMAND", "GC")], CONF), INVALID_ENVIRONMENT);
        for (var, value) in [
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "sixteen-chars-xx"),
            ("CNI_NETNS", "relative"),
            ("CNI_ARGS", "FOO=bar"),
            ("CNI_ARGS", "junk"),
        ] {
            let mut vars = add_env();
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            let e = parse(&env(&vars), CONF.as_bytes()).unwrap_err();
            assert_eq!(e.code, INVALID_ENVIRONMENT, "{var}={value}");
            assert!(e.details.contains(var), "{e:?}");
        }
    }

    #[test]
    fn version_needs_nothing_but_the_command() {
        let vars = [("CNI_COMMAND", "VERSION")];
        assert_eq!(
            parse(&env(&vars), br#"{"cniVersion":"1.0.0"}"#).unwrap(),
            Invocation::Version {
                asked: Some("1.0.0".into())
            }
        );
        assert_eq!(
            parse(&env(&vars), b"").unwrap(),
            Invocation::Version { asked: None }
        );
    }
}
