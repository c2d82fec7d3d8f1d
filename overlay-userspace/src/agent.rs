//! The agent: validate, load, plumb, fill, attach, serve, and undo it all on exit.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use log::{info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{ClusterConfig, DecapMode},
    loader::{self, Maps, Programs},
    membership,
    netlink::{Netlink, netns_path},
    node::{self, NodePlan},
    plumbing::{self, CreatedEndpoint},
    reconcile::{Tables, reconcile},
};

/// Runs the agent until SIGINT/SIGTERM. Every `reconcile_interval` the desired
/// state is re-applied, so entries lost or altered behind the agent's back heal
/// themselves, and endpoints whose veth vanished are withdrawn.
pub async fn run(
    config_path: PathBuf,
    pin_dir: Option<PathBuf>,
    reconcile_interval: Duration,
) -> Result<()> {
    // Take over SIGINT/SIGTERM before touching anything, so a signal during setup
    // cannot kill us half-way; it is acted on once setup is done or undone.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    let config = ClusterConfig::load(&config_path)?;
    let pin_dir = pin_dir.unwrap_or_else(|| loader::default_pin_dir(&config.node));
    let nl = Netlink::current()?;
    let plan = node::plan(config, pin_dir, &nl).await?;

    let mut node = Applied::default();
    if let Err(e) = node.apply(&plan, &nl).await {
        node.teardown(&nl).await;
        return Err(e.context("setup failed; everything it had done was undone"));
    }
    info!(
        "node {} up: VTEP {} on {} (MTU {}), decap {}, {} local endpoint(s), maps pinned in {}",
        plan.config.node,
        plan.underlay.vtep,
        plan.underlay.name,
        plan.underlay.mtu,
        plan.config.decap,
        node.endpoints.len(),
        plan.pin_dir.display()
    );
    warn_if_forwarding_disabled(&plan.underlay.name);
    if plan.config.decap == DecapMode::Xdp && plan.underlay.is_veth {
        warn!(
            "XDP decap on a veth underlay: a veth peer passes checksums it has not computed \
             (CHECKSUM_PARTIAL) and XDP_REDIRECT cannot carry that, so the sending side must \
             compute them (`ethtool -K <peer> tx off`), or TCP into containers fails; \
             TC decap has no such limit"
        );
    }
    println!("ready");
    std::io::stdout().flush().ok();

    let mut ticker = tokio::time::interval(reconcile_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => {
                node.forget_vanished_endpoints(&nl).await;
                match node.reconcile(&plan) {
                    Ok(changes) if !changes.is_empty() => warn!("reconcile healed the maps: {changes}"),
                    Ok(_) => {}
                    Err(e) => warn!("reconcile failed: {e:#}"),
                }
            }
        }
    }
    info!("shutting down");
    node.teardown(&nl).await;
    Ok(())
}

/// What this agent has put in place, so that exactly that is undone.
#[derive(Default)]
struct Applied {
    maps: Option<Maps>,
    pin_dir: Option<PathBuf>,
    programs: Option<Programs>,
    endpoints: Vec<CreatedEndpoint>,
}

impl Applied {
    async fn apply(&mut self, plan: &NodePlan, nl: &Netlink) -> Result<()> {
        let mut ebpf = Ebpf::load(loader::ebpf_object()).context("loading the eBPF object")?;
        self.pin_dir = Some(plan.pin_dir.clone());
        self.maps = Some(Maps::take_and_pin(&mut ebpf, &plan.pin_dir)?);
        self.programs = Some(Programs::load(ebpf)?);

        for endpoint in &plan.endpoints {
            self.endpoints
                .push(plumbing::create_endpoint(nl, endpoint).await?);
        }
        self.reconcile(plan)?;

        let programs = self.programs.as_mut().expect("loaded above");
        programs.attach_underlay(&plan.underlay.name, plan.config.decap)?;
        for endpoint in &self.endpoints {
            programs.attach_endpoint(&endpoint.plan.host_ifname)?;
            if plan.config.decap == DecapMode::Xdp {
                programs.attach_peer_xdp(
                    &netns_path(&endpoint.plan.netns),
                    &endpoint.plan.container_ifname,
                )?;
            }
        }
        Ok(())
    }

    /// A container's veth disappears with its namespace. Such an endpoint is
    /// withdrawn from the tables instead of being reconciled forever.
    async fn forget_vanished_endpoints(&mut self, nl: &Netlink) {
        let mut kept = Vec::with_capacity(self.endpoints.len());
        for endpoint in self.endpoints.drain(..) {
            match nl.link_by_name(&endpoint.plan.host_ifname).await {
                Ok(Some(link)) if link.index == endpoint.host_ifindex => kept.push(endpoint),
                Ok(_) => warn!(
                    "endpoint {} ({}) vanished with its veth {} (namespace {} deleted?); withdrawing it",
                    endpoint.plan.ip,
                    endpoint.plan.mac,
                    endpoint.plan.host_ifname,
                    endpoint.plan.netns
                ),
                Err(e) => {
                    warn!("checking {}: {e:#}", endpoint.plan.host_ifname);
                    kept.push(endpoint);
                }
            }
        }
        self.endpoints = kept;
    }

    fn reconcile(&mut self, plan: &NodePlan) -> Result<crate::reconcile::Changes> {
        let desired = membership::from_static_config(plan, &self.endpoints);
        let maps = self.maps.as_mut().context("maps not loaded")?;
        reconcile(maps, &Tables::from_desired(&desired))
    }

    /// Undoes everything, in reverse order, carrying on past errors.
    async fn teardown(&mut self, nl: &Netlink) {
        if let Some(programs) = self.programs.as_mut()
            && let Err(e) = programs.detach_all()
        {
            warn!("detaching programs: {e:#}");
        }
        for endpoint in self.endpoints.drain(..).rev() {
            if let Err(e) = plumbing::delete_endpoint(nl, &endpoint).await {
                warn!("{e:#}");
            }
        }
        self.programs = None;
        self.maps = None;
        if let Some(dir) = self.pin_dir.take()
            && let Err(e) = loader::unpin(&dir)
        {
            warn!("{e:#}");
        }
    }
}

/// bpf_fib_lookup refuses to route when forwarding is off on the underlay, and
/// encapsulation then takes the kernel's slower route-and-resolve path.
fn warn_if_forwarding_disabled(underlay: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{underlay}/forwarding");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
        warn!(
            "IPv4 forwarding is off on {underlay}: encapsulation falls back to the slower \
             kernel routing path (counter encap_route_fallback); enable it with \
             `sysctl -w net.ipv4.conf.{underlay}.forwarding=1`"
        );
    }
}
