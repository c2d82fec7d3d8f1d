//! The seed topology run as Docker users run it: a dockerd on each node (in
//! the node's namespace, see [`crate::Dockerd`]), each node's agent serving
//! the `overlay-ebpf` drivers to it and learning the other node by gossip.
//! Containers are Docker's; each gets a named handle on its network namespace
//! (`ip netns attach`), so the test bed's traffic tools reach inside.

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    agent::{keygen, overlay_binary},
    cluster::wait_until,
    cluster_file::{Decap, DockerSection},
    cmd::{TempDir, ip, unique_prefix},
    dockerd::{BUSYBOX_IMAGE, Dockerd, DockerdOptions},
    netns::Netns,
    scenario::Scenario,
    seed_overlay::Overlay,
    topology::TopologyOptions,
};

/// The name both drivers go by.
pub const DRIVER: &str = "overlay-ebpf";

/// The name of the handle on the namespace of the container `name` of the
/// overlay with names built on `prefix`.
pub fn netns_handle(prefix: &str, name: &str) -> String {
    format!("{prefix}d{name}")
}

/// A running Docker container on the overlay.
#[derive(Clone, Debug)]
pub struct DockerContainer {
    pub name: String,
    pub node: u8,
    pub id: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The named handle on its network namespace.
    pub netns: String,
}

impl DockerContainer {
    /// `docker exec` in the container, through `dockerd` (its node's).
    pub fn exec(&self, dockerd: &Dockerd, args: &[&str]) -> Result<String> {
        let mut all = vec!["exec", self.id.as_str()];
        all.extend(args);
        dockerd.docker(&all)
    }
}

/// One `docker run -d` of a named container on a node's dockerd, and the
/// handle on its namespace that makes it reachable to the test bed's tools.
pub(crate) struct ContainerRun<'a> {
    pub node: u8,
    /// The bed's names' prefix: the container is `<prefix><name>`.
    pub prefix: &'a str,
    pub name: &'a str,
    pub network: &'a str,
}

impl ContainerRun<'_> {
    /// `docker run -d --name <prefix><name> --network NETWORK EXTRA…
    /// IMAGE_AND_COMMAND…`; its address on the network and the handle (in
    /// `handles`, which drops it).
    pub fn start(
        &self,
        dockerd: &Dockerd,
        extra: &[&str],
        image_and_command: &[&str],
        handles: &mut Vec<Netns>,
    ) -> Result<DockerContainer> {
        let full = format!("{}{}", self.prefix, self.name);
        let mut args = vec!["run", "-d", "--name", &full, "--network", self.network];
        args.extend(extra);
        args.extend(image_and_command);
        let id = dockerd.docker(&args)?.trim().to_owned();
        let network = self.network;
        let format = format!(
            "{{{{.State.Pid}}}} {{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}} \
             {{{{(index .NetworkSettings.Networks \"{network}\").MacAddress}}}}"
        );
        let out = dockerd.docker(&["inspect", "--format", &format, &id])?;
        let fields: Vec<&str> = out.split_whitespace().collect();
        let [pid, address, mac] = fields[..] else {
            bail!("docker inspect {id}: {out:?}");
        };
        let handle = netns_handle(self.prefix, self.name);
        ip(&format!("netns attach {handle} {pid}"))?;
        handles.push(Netns {
            name: handle.clone(),
        });
        Ok(DockerContainer {
            name: self.name.to_owned(),
            node: self.node,
            id,
            ip: address
                .parse()
                .with_context(|| format!("{}'s address {address:?}", self.name))?,
            mac: mac.to_owned(),
            netns: handle,
        })
    }
}

/// See the module doc.
pub struct DockerOverlay {
    // Field order is drop order: handles, then the dockerds (their containers
    // are removed while the agents still answer), then agents and namespaces.
    handles: Vec<Netns>,
    pub dockerds: Vec<Dockerd>,
    pub overlay: Overlay,
}

impl DockerOverlay {
    /// The topology, a dockerd per node with the busybox image, and both
    /// agents (with `agent_args`) serving the drivers.
    pub fn start(opts: &DockerdOptions, agent_args: &[&str]) -> Result<DockerOverlay> {
        DockerOverlay::start_as(&unique_prefix("dk"), &overlay_binary()?, opts, agent_args)
    }

    /// [`DockerOverlay::start`] with every name built on `prefix` (the
    /// demo's fixed one) and the agents running `binary`.
    pub fn start_as(
        prefix: &str,
        binary: &Path,
        opts: &DockerdOptions,
        agent_args: &[&str],
    ) -> Result<DockerOverlay> {
        DockerOverlay::start_on(prefix, binary, opts, agent_args, TopologyOptions::default())
    }

    /// [`DockerOverlay::start_as`] on the wire and topology `wire`.
    pub fn start_on(
        prefix: &str,
        binary: &Path,
        opts: &DockerdOptions,
        agent_args: &[&str],
        wire: TopologyOptions,
    ) -> Result<DockerOverlay> {
        let dir = TempDir::new(prefix)?;
        let key = dir.path().join("cluster.key");
        keygen(&key)?;
        let scenario = Scenario::new(prefix, Decap::Tc)
            .with_containers(&[])
            .with_gossip(&key);
        let mut d = DockerOverlay {
            handles: Vec::new(),
            dockerds: Vec::new(),
            overlay: Overlay::create_on(scenario, dir, wire)?,
        };
        d.overlay.binary = binary.to_owned();
        for node in [1, 2] {
            // As on a host that did not forward before Docker: dockerd turns
            // forwarding on and sets its FORWARD policy to DROP.
            ip(&format!(
                "netns exec {} sysctl -qw net.ipv4.ip_forward=0",
                d.overlay.node_ns(node)
            ))?;
            let dockerd = Dockerd::start_with(&d.overlay.node_ns(node), opts.clone())
                .with_context(|| format!("dockerd of node{node}"))?;
            dockerd.import_busybox()?;
            d.dockerds.push(dockerd);
            d.write_file(node)?;
        }
        for node in [1, 2] {
            d.overlay.start_agent_with(node, agent_args)?;
        }
        Ok(d)
    }

    /// Writes `node`'s cluster file: the scenario's, with a `[docker]`
    /// section for its dockerd.
    fn write_file(&self, node: u8) -> Result<()> {
        let dockerd = self.dockerd(node);
        let mut file = self.overlay.node_file(node);
        file.docker = Some(DockerSection::new(
            &dockerd.plugins_dir().join(format!("{DRIVER}.sock")),
            &dockerd.socket(),
        ));
        file.write(self.overlay.dir.path(), &format!("node{node}.toml"))?;
        Ok(())
    }

    pub fn dockerd(&self, node: u8) -> &Dockerd {
        &self.dockerds[usize::from(node) - 1]
    }

    pub fn dockerd_mut(&mut self, node: u8) -> &mut Dockerd {
        &mut self.dockerds[usize::from(node) - 1]
    }

    /// `docker ARGS` on `node`.
    pub fn docker(&self, node: u8, args: &[&str]) -> Result<String> {
        self.dockerd(node).docker(args)
    }

    /// `docker network create -d overlay-ebpf --ipam-driver overlay-ebpf
    /// --subnet SUBNET EXTRA… NAME` on `node`.
    pub fn create_network(&self, node: u8, name: &str, subnet: &str, extra: &[&str]) -> Result<()> {
        let mut args = vec!["network", "create", "-d", DRIVER, "--ipam-driver", DRIVER];
        args.extend(["--subnet", subnet]);
        args.extend(extra);
        args.push(name);
        self.docker(node, &args)?;
        Ok(())
    }

    /// The names of `node`'s networks of this driver.
    pub fn networks(&self, node: u8) -> Result<Vec<String>> {
        let out = self.docker(
            node,
            &[
                "network",
                "ls",
                "--filter",
                &format!("driver={DRIVER}"),
                "--format",
                "{{.Name}}",
            ],
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Waits until `node`'s dockerd has (or has not) network `name`; how
    /// long that took.
    pub fn wait_network(
        &self,
        node: u8,
        name: &str,
        present: bool,
        timeout: Duration,
    ) -> Result<Duration> {
        let what = format!(
            "network {name} {} node{node}'s dockerd",
            if present { "in" } else { "gone from" }
        );
        wait_until(timeout, &what, || {
            Ok(self.networks(node)?.iter().any(|n| n == name) == present)
        })
    }

    /// `docker run -d --name NAME --network NETWORK EXTRA… busybox sleep 1d`
    /// on `node`, with a handle on its namespace.
    pub fn run(
        &mut self,
        node: u8,
        name: &str,
        network: &str,
        extra: &[&str],
    ) -> Result<DockerContainer> {
        self.run_image(node, name, network, extra, &[BUSYBOX_IMAGE, "sleep", "1d"])
    }

    /// `docker run -d --name NAME --network NETWORK EXTRA… IMAGE_AND_COMMAND…`
    /// on `node`, with a handle on its namespace.
    pub fn run_image(
        &mut self,
        node: u8,
        name: &str,
        network: &str,
        extra: &[&str],
        image_and_command: &[&str],
    ) -> Result<DockerContainer> {
        let run = ContainerRun {
            node,
            prefix: self.overlay.prefix(),
            name,
            network,
        };
        let dockerd = &self.dockerds[usize::from(node) - 1];
        run.start(dockerd, extra, image_and_command, &mut self.handles)
    }

    /// `docker rm -f` of the container, and its handle dropped.
    pub fn remove(&mut self, c: &DockerContainer) -> Result<Duration> {
        let started = Instant::now();
        self.docker(c.node, &["rm", "-f", &c.id])?;
        let took = started.elapsed();
        self.handles.retain(|h| h.name != c.netns);
        Ok(took)
    }

    /// `docker exec` in the container.
    pub fn exec(&self, c: &DockerContainer, args: &[&str]) -> Result<String> {
        c.exec(self.dockerd(c.node), args)
    }

    /// The agents' stderr and the dockerds' logs, for a failure's report.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.overlay.agents.iter().enumerate() {
            out += &format!("--- agent {}:\n{}\n", i + 1, a.stderr());
        }
        for (i, d) in self.dockerds.iter().enumerate() {
            let log = d.log();
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("level=warning") || l.contains("level=error"))
                .collect();
            out += &format!(
                "--- dockerd of node{} (warnings and errors):\n{}\n",
                i + 1,
                notable.join("\n")
            );
        }
        out
    }

    /// Runs `test` on this overlay; on failure the logs go with the error.
    pub fn check(&mut self, test: impl FnOnce(&mut DockerOverlay) -> Result<()>) -> Result<()> {
        test(self).map_err(|e| e.context(format!("logs:\n{}", self.logs())))
    }

    /// Stops the dockerds (SIGTERM to all, then waits), containers first.
    /// Dropping does the same.
    pub fn stop_dockerds(&mut self) -> Result<()> {
        for d in &mut self.dockerds {
            d.begin_stop();
        }
        self.handles.clear();
        for d in self.dockerds.drain(..) {
            d.stop()?;
        }
        Ok(())
    }
}

impl Drop for DockerOverlay {
    fn drop(&mut self) {
        // All at once: each takes a few seconds to stop.
        for d in &mut self.dockerds {
            d.begin_stop();
        }
    }
}
