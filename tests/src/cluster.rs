//! A cluster of N hosts on one L2 segment, each running an agent in gossip mode:
//! the test bed for membership. Host i is `<p>n<i>` (named as the scenario's
//! [`Names`] says) with underlay `eth0` at 172.30.0.(10+i)/24, plugged into a
//! bridge in `<p>sw`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    agent::{Agent, keygen, overlay_binary},
    cluster_file::{ClusterFile, ClusterSection},
    cmd::{TempDir, ip, output_ok},
    netns::Netns,
    scenario::{Names, UNDERLAY, gossip_addr},
};

/// Host `i`'s underlay address.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, u8::try_from(10 + i).expect("at most 245 hosts"))
}

/// One host of the cluster.
pub struct ClusterHost {
    pub index: usize,
    pub ns: Netns,
    /// Name of the host's port on the switch; down cuts it off.
    pub switch_port: String,
}

pub struct Cluster {
    pub names: Names,
    // Field order is drop order: agents, then containers, then hosts.
    pub agents: BTreeMap<usize, Agent>,
    containers: Vec<Netns>,
    pub hosts: Vec<ClusterHost>,
    switch: Netns,
    pub dir: TempDir,
    pub key_file: PathBuf,
}

impl Cluster {
    /// `n` hosts on one switch, no agents yet, a cluster key written.
    pub fn create(prefix: &str, n: usize) -> Result<Cluster> {
        let names = Names::new(prefix);
        let switch = Netns::create(&names.switch_ns())?;
        let dir = TempDir::new(prefix)?;
        let key_file = dir.path().join("cluster.key");
        keygen(&key_file)?;
        let mut cluster = Cluster {
            names,
            agents: BTreeMap::new(),
            containers: Vec::new(),
            hosts: Vec::new(),
            switch,
            dir,
            key_file,
        };
        let sw = cluster.switch.name.clone();
        ip(&format!("-n {sw} link add br0 type bridge"))?;
        ip(&format!("-n {sw} link set br0 up"))?;
        for i in 1..=n {
            let ns = Netns::create(&cluster.names.node_ns(i))?;
            let port = format!("p{i}");
            ip(&format!(
                "-n {} link add {UNDERLAY} type veth peer name {port} netns {sw}",
                ns.name
            ))?;
            ip(&format!("-n {sw} link set {port} master br0 up"))?;
            ip(&format!(
                "-n {} addr add {}/24 dev {UNDERLAY}",
                ns.name,
                node_ip(i)
            ))?;
            ip(&format!("-n {} link set {UNDERLAY} up", ns.name))?;
            ns.run_ok(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
            cluster.hosts.push(ClusterHost {
                index: i,
                ns,
                switch_port: port,
            });
        }
        Ok(cluster)
    }

    pub fn node_name(&self, i: usize) -> String {
        self.names.node_name(i)
    }

    pub fn host_ns(&self, i: usize) -> &str {
        &self.hosts[i - 1].ns.name
    }

    pub fn pin_dir(&self, i: usize) -> PathBuf {
        self.names.pin_dir(i)
    }

    /// Host `i`'s cluster file with nothing but gossip: on its underlay address,
    /// the first host as seed, under the cluster key. Networks and endpoints are
    /// the caller's to add.
    pub fn node_file(&self, i: usize) -> ClusterFile {
        ClusterFile {
            cluster: Some(ClusterSection::new(
                gossip_addr(node_ip(i)),
                vec![gossip_addr(node_ip(1))],
                &self.key_file,
            )),
            ..ClusterFile::new(self.node_name(i), UNDERLAY)
        }
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.toml"))
    }

    /// Writes `file` as host `i`'s config and starts its agent.
    pub fn start_agent(&mut self, i: usize, file: &ClusterFile, extra: &[&str]) -> Result<&Agent> {
        self.start_agent_binary(i, file, &overlay_binary()?, extra)
    }

    /// [`Cluster::start_agent`] with another build of the agent.
    pub fn start_agent_binary(
        &mut self,
        i: usize,
        file: &ClusterFile,
        binary: &Path,
        extra: &[&str],
    ) -> Result<&Agent> {
        let config = file.write(self.dir.path(), &format!("node{i}.toml"))?;
        let agent = Agent::start(
            &self.hosts[i - 1].ns.name,
            binary,
            &config,
            &self.pin_dir(i),
            extra,
        )?;
        self.agents.insert(i, agent);
        Ok(&self.agents[&i])
    }

    /// An empty namespace `<prefix><name>`, deleted with the cluster.
    pub fn container(&mut self, name: &str) -> Result<String> {
        let ns = Netns::create(&self.names.container_ns(name))?;
        let name = ns.name.clone();
        self.containers.push(ns);
        Ok(name)
    }

    /// Takes host `i` off the switch (or puts it back).
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        ip(&format!(
            "-n {} link set {} {}",
            self.switch.name,
            self.hosts[i - 1].switch_port,
            if up { "up" } else { "down" }
        ))?;
        Ok(())
    }

    /// Runs `overlay ARGS --socket <host i's agent socket>`; its stdout, or an
    /// error with its stderr.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String> {
        let agent = self
            .agents
            .get(&i)
            .with_context(|| format!("no agent on host {i}"))?;
        cli_at(&agent.socket(), args)
    }
}

/// Runs `overlay ARGS --socket SOCKET`.
pub fn cli_at(socket: &Path, args: &[&str]) -> Result<String> {
    output_ok(
        Command::new(overlay_binary()?)
            .args(args)
            .arg("--socket")
            .arg(socket),
    )
}

/// Polls `check` every 10 ms until it holds; how long that took, or an error
/// after `timeout` saying what was still missing.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
