//! Running a CNI plugin as a runtime does: a clean environment with the
//! protocol's variables, the configuration on stdin, inside the runtime's
//! network namespace (a test host's); the configurations for `overlay-cni`;
//! and the overlay the CNI suites and the bench run it on ([`CniBed`]).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use crate::{
    agent::{built_beside_overlay, overlay_binary},
    cluster::wait_until,
    cmd::ip,
    netns::netns_path,
    scenario::{C2, UBER_NET},
    seed_overlay::Overlay,
    traffic::ping,
};

/// Where Debian's containernetworking-plugins live (portmap, loopback, …).
pub const DEBIAN_CNI_PLUGINS: &str = "/usr/lib/cni";

/// `overlay-cni`, built next to `overlay`.
pub fn cni_binary() -> Result<PathBuf> {
    built_beside_overlay("overlay-cni")
}

/// What a plugin printed, and how it exited.
#[derive(Clone, Debug)]
pub struct CniReply {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// From start to exit.
    pub took: Duration,
}

impl CniReply {
    /// Stdout as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("the plugin's stdout is not JSON: {self:?}"))
    }

    /// An error unless the plugin exited 0.
    pub fn ok(&self) -> Result<&CniReply> {
        ensure!(self.success, "the plugin failed: {self:?}");
        Ok(self)
    }

    /// An error unless the plugin failed with `code`, in the spec's error
    /// shape, saying `text` in its message or details.
    pub fn refused(&self, code: u64, text: &str) -> Result<()> {
        ensure!(
            !self.success,
            "expected code {code}, but it succeeded: {self:?}"
        );
        let e = self.json()?;
        ensure!(
            e["code"] == code && e["cniVersion"].is_string() && e["msg"].is_string(),
            "expected code {code}: {e}"
        );
        let said = format!("{} {}", e["msg"], e["details"]);
        ensure!(said.contains(text), "expected {text:?} in {e}");
        Ok(())
    }
}

/// Runs `plugin` in the network namespace `host_ns` with only `env` (and
/// `PATH`) set and `stdin` on its standard input.
pub fn run_plugin(
    plugin: &Path,
    host_ns: &str,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Result<CniReply> {
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(host_ns).display()))
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("the plugin's stdin")?
        .write_all(stdin)?;
    let out = child.wait_with_output()?;
    Ok(CniReply {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    })
}

/// One attachment's protocol variables, as a runtime sets them.
#[derive(Clone, Debug)]
pub struct CniAttachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

impl CniAttachment {
    pub fn new(container_id: &str, netns: &Path, ifname: &str) -> CniAttachment {
        CniAttachment {
            container_id: container_id.to_owned(),
            netns: netns.display().to_string(),
            ifname: ifname.to_owned(),
        }
    }

    /// `CNI_COMMAND=command` and this attachment's variables, with Podman's
    /// `CNI_ARGS`.
    pub fn env<'a>(&'a self, command: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_PATH", DEBIAN_CNI_PLUGINS),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=test"),
        ]
    }
}

/// `overlay-cni`'s entry in a configuration list.
pub fn overlay_plugin(network: &str, socket: &Path) -> Value {
    json!({"type": "overlay-cni", "network": network, "socket": socket})
}

/// A configuration list: `name`, `plugins`, in `version`.
pub fn conflist(version: &str, name: &str, plugins: &[Value]) -> Value {
    json!({"cniVersion": version, "name": name, "plugins": plugins})
}

/// What a runtime hands one plugin of a list: its entry, with the list's
/// `cniVersion` and `name` (and the rest of `extra`) added.
pub fn plugin_stdin(list: &Value, index: usize, extra: &Value) -> Vec<u8> {
    let mut conf = list["plugins"][index].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            conf.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&conf).expect("JSON serializes")
}

/// The overlay the CNI suites and the bench run the plugin on: both nodes
/// learning each other by gossip, c2 on node2, uber-net in both files, both
/// agents running. The plugin runs on node1, as node1's runtime runs it.
pub struct CniBed {
    pub overlay: Overlay,
    plugin: PathBuf,
}

impl CniBed {
    pub fn start(tag: &str) -> Result<CniBed> {
        CniBed::start_with(tag, &overlay_binary()?)
    }

    /// With `agent` as both nodes' agent binary (a baseline build, say); the
    /// plugin is always this build's.
    pub fn start_with(tag: &str, agent: &Path) -> Result<CniBed> {
        let mut overlay = Overlay::gossip_with_c2(tag)?;
        agent.clone_into(&mut overlay.binary);
        for node in [1, 2] {
            overlay.start_agent(node)?;
        }
        Ok(CniBed {
            overlay,
            plugin: cni_binary()?,
        })
    }

    /// Node1's configuration list named `name`, in `version`.
    pub fn list(&self, version: &str, name: &str) -> Value {
        conflist(
            version,
            name,
            &[overlay_plugin(UBER_NET.name, &self.socket())],
        )
    }

    /// Node1's agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.overlay.scenario.names.socket(1)
    }

    /// Runs overlay-cni on node1.
    pub fn cni(&self, env: &[(&str, &str)], stdin: &[u8]) -> Result<CniReply> {
        run_plugin(&self.plugin, &self.overlay.node_ns(1), env, stdin)
    }

    /// A new container namespace on node1, for the attachment `ctr-<id>` eth0.
    pub fn attachment(&mut self, id: &str) -> Result<CniAttachment> {
        let ns = self.overlay.topology.container(id)?.name.clone();
        Ok(CniAttachment::new(
            &format!("ctr-{id}"),
            &netns_path(&ns),
            "eth0",
        ))
    }

    /// Whether node1 has an interface `name`.
    pub fn host_link_exists(&self, name: &str) -> bool {
        ip(&format!("-n {} link show {name}", self.overlay.node_ns(1))).is_ok()
    }

    /// Whether node1's agent lists an attachment of `container_id`.
    pub fn agent_knows(&self, container_id: &str) -> Result<bool> {
        let list: Value =
            serde_json::from_str(&self.overlay.cli(1, &["endpoint", "ls", "--json"])?)?;
        Ok(list
            .as_array()
            .context("a list")?
            .iter()
            .any(|e| e["container_id"] == container_id))
    }
}

impl CniAttachment {
    /// The namespace's name under `/run/netns`.
    pub fn ns_name(&self) -> &str {
        Path::new(&self.netns)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }
}

/// Pings c2 from `ns` until it answers; how long that took.
pub fn reaches_c2(ns: &str) -> Result<Duration> {
    wait_until(Duration::from_secs(10), "a ping to c2", || {
        Ok(ping(ns, &C2.ip.to_string(), 1, &[])?.received == 1)
    })
}
