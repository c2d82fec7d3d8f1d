//! Docker's own overlay, as users build it instead of this project's: the
//! seed topology with a dockerd on each node (in the node's namespace, see
//! [`crate::Dockerd`]), node1 a swarm manager (`docker swarm init` on its
//! underlay address), node2 joined as a worker, and `docker network create
//! -d overlay --attachable` networks for plain `docker run` containers. No
//! agent runs: Docker's kernel VXLAN datapath carries the traffic. Swarm's
//! ports (2377/tcp, 7946, 4789/udp) pass between the two node namespaces
//! through the router only.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use crate::{
    cluster::wait_until,
    docker_overlay::{ContainerRun, DockerContainer},
    dockerd::{Dockerd, DockerdOptions},
    netns::Netns,
    scale::scaled,
    topology::{NODE1_VTEP, NODE2_VTEP, SeedTopology},
};

/// See the module doc. It runs on a topology its owner keeps (and drops
/// after it).
pub struct DockerSwarm {
    // Field order is drop order: handles, then the dockerds.
    handles: Vec<Netns>,
    dockerds: Vec<Dockerd>,
    /// The topology's names' prefix: containers are `<prefix><name>`.
    prefix: String,
}

impl DockerSwarm {
    /// A dockerd per node of `topology` with the busybox and iperf3 images,
    /// and the swarm formed: node1 manager, node2 worker.
    pub fn start(topology: &SeedTopology) -> Result<DockerSwarm> {
        let mut swarm = DockerSwarm {
            handles: Vec::new(),
            dockerds: Vec::new(),
            prefix: topology.names.prefix().to_owned(),
        };
        for node in [1, 2] {
            let dockerd = Dockerd::start_with(topology.node(node), DockerdOptions::default())
                .with_context(|| format!("dockerd of node{node}"))?;
            dockerd.import_busybox()?;
            dockerd.import_iperf3()?;
            swarm.dockerds.push(dockerd);
        }
        let manager = format!("{NODE1_VTEP}:2377");
        swarm.docker(
            1,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                NODE1_VTEP,
                "--listen-addr",
                &manager,
            ],
        )?;
        let token = swarm.docker(1, &["swarm", "join-token", "-q", "worker"])?;
        swarm
            .docker(
                2,
                &[
                    "swarm",
                    "join",
                    "--token",
                    token.trim(),
                    "--advertise-addr",
                    NODE2_VTEP,
                    &manager,
                ],
            )
            .context("node2 joining the swarm")?;
        wait_until(
            scaled(Duration::from_secs(30)),
            "node2 ready in the swarm",
            || {
                let nodes = swarm.docker(1, &["node", "ls", "--format", "{{.Status}}"])?;
                Ok(nodes.lines().filter(|s| *s == "Ready").count() == 2)
            },
        )?;
        Ok(swarm)
    }

    pub fn dockerd(&self, node: u8) -> &Dockerd {
        &self.dockerds[usize::from(node) - 1]
    }

    /// `docker ARGS` on `node`.
    pub fn docker(&self, node: u8, args: &[&str]) -> Result<String> {
        self.dockerd(node).docker(args)
    }

    /// `docker network create -d overlay --attachable --subnet SUBNET NAME`
    /// on the manager.
    pub fn create_network(&self, name: &str, subnet: &str) -> Result<()> {
        self.docker(
            1,
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--attachable",
                "--subnet",
                subnet,
                name,
            ],
        )?;
        Ok(())
    }

    /// `docker run -d --name <prefix><name> --network NETWORK
    /// IMAGE_AND_COMMAND…` on `node`, with a handle on its namespace.
    pub fn run(
        &mut self,
        node: u8,
        name: &str,
        network: &str,
        image_and_command: &[&str],
    ) -> Result<DockerContainer> {
        let run = ContainerRun {
            node,
            prefix: &self.prefix,
            name,
            network,
        };
        let dockerd = &self.dockerds[usize::from(node) - 1];
        let c = run.start(dockerd, &[], image_and_command, &mut self.handles)?;
        ensure!(!c.ip.is_unspecified(), "{name} has no address on {network}");
        Ok(c)
    }
}

impl Drop for DockerSwarm {
    fn drop(&mut self) {
        // All at once: each takes a few seconds to stop.
        for d in &mut self.dockerds {
            d.begin_stop();
        }
    }
}
