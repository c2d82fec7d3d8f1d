//! The agent: validate, load (or adopt), plumb, fill, attach, join the cluster,
//! serve the local API, and on exit undo it all (or, with --keep, leave the
//! dataplane running for the next agent).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::Write as _,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};
use overlay_common::VNI_MAX;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    api::{self, Call, EndpointInfo, MemberList, NetworkInfo, NetworkList, Request, Response},
    config::{ClusterConfig, DecapMode, Mac, Subnet, check_network_name},
    gossip::{Gossip, key::ClusterKey, now_ms},
    ipam::{self, Allocation},
    loader::{self, Hook, Maps, Programs},
    membership::{
        BlockClaim, DesiredState, LocalEndpoint, NetworkDef, NodeRecord, RemoteEndpoint, Resolved,
        dataplane_config, resolve,
    },
    netlink::{Netlink, netns_path},
    node::{self, NodePlan, PlannedEndpoint, host_ifname, next_container_ifname},
    plumbing::{self, CreatedEndpoint},
    reconcile::{Prune, Tables, reconcile_with},
    state::{RuntimeEndpoint, RuntimeState, StateFile},
    tunnel_gro,
};

/// How the agent was started.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub pin_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub reconcile_interval: Duration,
    /// Leave programs, maps and veths in place on exit, for the next agent.
    pub keep: bool,
}

pub const DEFAULT_STATE_ROOT: &str = "/var/lib/overlay";

/// A restarted agent keeps remote entries it has not heard about yet for at most
/// this long, waiting for gossip to tell it the cluster's state.
const WARMUP: Duration = Duration::from_secs(5);
/// How many times an address allocation claims a new block before giving up.
const MAX_CLAIMS: u32 = 4;

pub async fn run(opts: AgentOptions) -> Result<()> {
    // Take over SIGINT/SIGTERM before touching anything, so a signal during setup
    // cannot kill us half-way; it is acted on once setup is done or undone.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    let config = ClusterConfig::load(&opts.config)?;
    let key = config
        .cluster
        .as_ref()
        .map(|c| ClusterKey::load(&c.key_file))
        .transpose()?;
    let socket = opts
        .socket
        .clone()
        .unwrap_or_else(|| api::default_socket(&config.node));
    let _lock = RunLock::acquire(&socket.with_extension("lock"), &config.node)?;
    let pin_dir = opts
        .pin_dir
        .clone()
        .unwrap_or_else(|| loader::default_pin_dir(&config.node));
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_STATE_ROOT).join(&config.node));
    let state_file = StateFile::new(&state_dir);
    let runtime = state_file.load()?;
    let nl = Netlink::current()?;
    let plan = node::plan(config, pin_dir, &nl).await?;

    let mut node = Node::new(plan, runtime, state_file);
    if let Err(e) = node.start(&nl).await {
        let note = if node.adopted {
            "; the dataplane the previous agent left is untouched"
        } else {
            "; everything it had done was undone"
        };
        node.teardown(&nl, node.teardown_after_failed_setup()).await;
        return Err(e.context(format!("setup failed{note}")));
    }
    if let (Some(section), Some(key)) = (node.plan.config.cluster.clone(), key) {
        match Gossip::start(&node.plan.config.node, &section, &key, &node.own_record()).await {
            Ok(g) => {
                node.generation = g.generation();
                node.gossip = Some(g);
                node.settle = 4 * section.gossip_interval + Duration::from_millis(500);
            }
            Err(e) => {
                node.teardown(&nl, node.teardown_after_failed_setup()).await;
                return Err(e.context("setup failed"));
            }
        }
    }
    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let server = match api::serve(&socket, calls_tx) {
        Ok(s) => s,
        Err(e) => {
            node.teardown(&nl, node.teardown_after_failed_setup()).await;
            return Err(e.context("setup failed"));
        }
    };
    node.publish_and_apply().await;

    let plan = &node.plan;
    info!(
        "node {} up: VTEP {} on {} (MTU {}), decap {}, {} local endpoint(s), maps pinned in {}, API on {}{}{}",
        plan.config.node,
        plan.underlay.vtep,
        plan.underlay.name,
        plan.underlay.mtu,
        plan.config.decap,
        node.endpoints.len(),
        plan.pin_dir.display(),
        socket.display(),
        match &plan.config.cluster {
            Some(c) => format!(", gossip on {} (seeds {:?})", c.listen, c.seeds),
            None => String::new(),
        },
        if node.adopted {
            ", adopted the running dataplane"
        } else {
            ""
        },
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

    let (retry_tx, mut retries) = mpsc::unbounded_channel::<Retry>();
    let mut ticker = tokio::time::interval(opts.reconcile_interval);
    ticker.tick().await;
    let mut warmup_check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            Some((request, reply)) = calls.recv() => {
                node.handle(&nl, request, reply, 0, &retry_tx).await;
            }
            Some(retry) = retries.recv() => {
                node.handle(&nl, retry.request, retry.reply, retry.attempt, &retry_tx).await;
            }
            _ = changed(&mut node.gossip) => node.publish_and_apply().await,
            _ = warmup_check.tick(), if node.warming_up() => node.publish_and_apply().await,
            _ = ticker.tick() => {
                node.forget_vanished_endpoints(&nl).await;
                node.publish_and_apply().await;
            }
        }
    }
    server.abort();
    let _ = std::fs::remove_file(&socket);
    info!(
        "shutting down{}",
        if opts.keep {
            "; --keep: the dataplane stays up for the next agent"
        } else {
            ""
        }
    );
    if let Some(g) = node.gossip.take() {
        g.shutdown().await;
    }
    node.teardown(
        &nl,
        if opts.keep {
            Teardown::Keep
        } else {
            Teardown::All
        },
    )
    .await;
    Ok(())
}

async fn changed(gossip: &mut Option<Gossip>) {
    match gossip {
        Some(g) => g.changed().await,
        None => std::future::pending().await,
    }
}

/// An endpoint add waiting for its address block claim to settle.
struct Retry {
    request: Request,
    reply: oneshot::Sender<Response>,
    attempt: u32,
}

/// One agent per node: an exclusive lock held for the agent's life. The kernel
/// drops it when the process dies, however it dies.
struct RunLock {
    _file: File,
}

impl RunLock {
    fn acquire(path: &Path, node: &str) -> Result<RunLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            bail!(
                "another agent is running for node {node:?} (pid {}, lock {})",
                holder.trim(),
                path.display()
            );
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(RunLock { _file: file })
    }
}

/// A local endpoint and where it came from.
struct Local {
    created: CreatedEndpoint,
    from_config: bool,
    /// Made by this agent (not adopted): deleted if setup fails.
    made_here: bool,
}

impl Local {
    fn network(&self) -> &str {
        &self.created.plan.network
    }
    fn netns(&self) -> &str {
        &self.created.plan.netns
    }
}

struct Node {
    plan: NodePlan,
    runtime: RuntimeState,
    state_file: StateFile,
    maps: Option<Maps>,
    programs: Option<Programs>,
    endpoints: Vec<Local>,
    gossip: Option<Gossip>,
    generation: u64,
    resolved: Resolved,
    adopted: bool,
    started: Instant,
    warm: bool,
    /// How long an address block claim takes to be seen by every node.
    settle: Duration,
    in_flight: BTreeSet<(String, String)>,
}

impl Node {
    fn new(plan: NodePlan, runtime: RuntimeState, state_file: StateFile) -> Node {
        Node {
            plan,
            runtime,
            state_file,
            maps: None,
            programs: None,
            endpoints: Vec::new(),
            gossip: None,
            generation: now_ms(),
            resolved: Resolved::default(),
            adopted: false,
            started: Instant::now(),
            warm: false,
            settle: Duration::ZERO,
            in_flight: BTreeSet::new(),
        }
    }

    fn name(&self) -> &str {
        &self.plan.config.node
    }

    async fn start(&mut self, nl: &Netlink) -> Result<()> {
        let vtep = self.plan.underlay.vtep;
        if self.runtime.vtep.map(|(ip, _)| ip) != Some(vtep) {
            self.runtime.vtep = Some((vtep, now_ms()));
            self.state_file.save(&self.runtime)?;
        }
        let (ebpf, maps, adopted) = loader::load_adopting(&self.plan.pin_dir)?;
        self.adopted = adopted;
        self.maps = Some(maps);
        self.programs = Some(Programs::load(ebpf, &self.plan.pin_dir)?);

        for endpoint in self.plan.endpoints.clone() {
            let (created, made_here) = plumbing::ensure_endpoint(nl, &endpoint).await?;
            self.endpoints.push(Local {
                created,
                from_config: true,
                made_here,
            });
        }
        for saved in self.runtime.endpoints.clone() {
            match self.plan_saved_endpoint(&saved).await {
                Ok(planned) => {
                    let (created, made_here) = plumbing::ensure_endpoint(nl, &planned).await?;
                    self.endpoints.push(Local {
                        created,
                        from_config: false,
                        made_here,
                    });
                }
                Err(e) => {
                    warn!(
                        "endpoint {} in network {} (namespace {}) from the state file is dropped: {e:#}",
                        saved.ip, saved.network, saved.netns
                    );
                    self.runtime.endpoints.retain(|r| r != &saved);
                    self.state_file.save(&self.runtime)?;
                }
            }
        }
        // Tables first, with the programs not yet attached to new hooks.
        self.apply(Prune::KeepStaleRemote)?;

        let programs = self.programs.as_mut().expect("loaded above");
        programs.attach_underlay(&self.plan.underlay.name, self.plan.config.decap)?;
        // XDP decap runs before GRO, so the socket would only serve others.
        match self.plan.config.decap {
            DecapMode::Tc => tunnel_gro::ensure(nl, self.plan.config.vxlan_port).await,
            DecapMode::Xdp => tunnel_gro::remove(nl, self.plan.config.vxlan_port).await,
        }
        for local in &self.endpoints {
            attach_endpoint(programs, &local.created, self.plan.config.decap)?;
        }
        for stale in programs.detach_unadopted() {
            info!("detached {stale}, left by the previous agent and no longer wanted");
        }
        Ok(())
    }

    async fn plan_saved_endpoint(&self, saved: &RuntimeEndpoint) -> Result<PlannedEndpoint> {
        let def = self
            .own_networks()
            .remove(&saved.network)
            .with_context(|| format!("network {} is not known", saved.network))?;
        let path = netns_path(&saved.netns);
        if !path.exists() {
            bail!("namespace {} is gone", saved.netns);
        }
        Ok(self.plan_endpoint(
            &def,
            &saved.netns,
            saved.ip,
            saved.mac,
            saved.container_ifname.clone(),
        ))
    }

    fn plan_endpoint(
        &self,
        def: &NetworkDef,
        netns: &str,
        ip: Ipv4Addr,
        mac: Mac,
        container_ifname: String,
    ) -> PlannedEndpoint {
        PlannedEndpoint {
            network: def.name.clone(),
            vni: def.vni,
            netns: netns.to_owned(),
            ip,
            prefix_len: def.subnet.prefix_len,
            mac,
            mtu: self.network_mtu(&def.name),
            host_ifname: host_ifname(self.name(), def.vni, ip),
            container_ifname,
        }
    }

    fn network_mtu(&self, name: &str) -> u32 {
        let default = self
            .plan
            .underlay
            .mtu
            .saturating_sub(overlay_common::VXLAN_OVERHEAD);
        self.plan
            .config
            .networks
            .iter()
            .zip(&self.plan.network_mtus)
            .find(|(n, _)| n.name == name)
            .map_or(default, |(_, mtu)| *mtu)
    }

    /// This node's own network definitions: its file's (created 0), then those
    /// created here or copied from the cluster.
    fn own_networks(&self) -> BTreeMap<String, NetworkDef> {
        let mut networks = self.runtime.networks.clone();
        for n in &self.plan.config.networks {
            networks.insert(
                n.name.clone(),
                NetworkDef {
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: n.subnet,
                    created_ms: 0,
                    origin: self.name().to_owned(),
                },
            );
        }
        networks
    }

    fn own_record(&self) -> NodeRecord {
        let mut endpoints: Vec<_> = self
            .endpoints
            .iter()
            .map(|l| crate::membership::EndpointRecord {
                network: l.network().to_owned(),
                ip: l.created.plan.ip,
                mac: l.created.plan.mac,
            })
            .collect();
        endpoints.sort();
        let mut blocks = self.runtime.blocks.clone();
        blocks.sort();
        NodeRecord {
            name: self.name().to_owned(),
            generation: self.generation,
            live: true,
            gossip_addr: self.plan.config.cluster.as_ref().map(|c| c.advertise),
            vtep: Some(self.plan.underlay.vtep),
            vtep_since_ms: self.runtime.vtep.map_or(0, |(_, since)| since),
            networks: self.own_networks(),
            removed: self.runtime.removed.clone(),
            endpoints,
            blocks,
            malformed: Vec::new(),
        }
    }

    fn warming_up(&self) -> bool {
        !self.warm
    }

    /// Resolves the cluster from every record, takes over network definitions
    /// and removals it has not got yet, announces its own record, and brings the
    /// maps to the result.
    async fn publish_and_apply(&mut self) {
        let others = match &self.gossip {
            Some(g) => g.records().await,
            None => Vec::new(),
        };
        if !self.warm {
            // Warm once gossip has shown a live peer, or nobody answered for a while.
            self.warm = self.gossip.is_none()
                || others.iter().any(|r| r.live)
                || self.started.elapsed() > WARMUP;
        }
        let resolved = resolve(&self.own_record(), &others, now_ms());
        // Taking over only copies definitions and removals that are already in
        // some record, so resolving again would give the same view.
        if self.take_over_networks(&resolved)
            && let Err(e) = self.state_file.save(&self.runtime)
        {
            warn!("saving {}: {e:#}", self.state_file.path().display());
        }
        for c in resolved
            .conflicts
            .iter()
            .filter(|c| !self.resolved.conflicts.contains(c))
        {
            warn!("{c}");
        }
        self.resolved = resolved;
        let record = self.own_record();
        if let Some(g) = self.gossip.as_mut() {
            g.publish(&record).await;
        }
        let prune = if self.warm {
            Prune::All
        } else {
            Prune::KeepStaleRemote
        };
        match self.apply(prune) {
            Ok(changes) if !changes.is_empty() => info!("maps: {changes}"),
            Ok(_) => {}
            Err(e) => warn!("reconcile failed: {e:#}"),
        }
    }

    /// Copies accepted networks this node lacks, and drops copies the cluster
    /// removed. Whether anything changed.
    fn take_over_networks(&mut self, resolved: &Resolved) -> bool {
        let mut changed = false;
        let own = self.own_networks();
        for (name, def) in &resolved.networks {
            if !own.contains_key(name) {
                self.runtime.networks.insert(name.clone(), def.clone());
                changed = true;
            }
        }
        for (name, &removed_ms) in &resolved.removed {
            if let Some(def) = self.runtime.networks.get(name)
                && def.removed_by(removed_ms)
            {
                self.runtime.networks.remove(name);
                changed = true;
            }
            if self.runtime.removed.get(name) < Some(&removed_ms) {
                self.runtime.removed.insert(name.clone(), removed_ms);
                changed = true;
            }
        }
        changed
    }

    fn desired(&self) -> DesiredState {
        let plan = &self.plan;
        let config = dataplane_config(
            plan.underlay.vtep,
            plan.underlay.index,
            plan.config.vxlan_port,
            plan.config.source_ports,
        );
        let networks = self
            .resolved
            .networks
            .values()
            .map(|n| (n.vni, self.network_mtu(&n.name)))
            .collect();
        let served = |network: &str, vni: u32| {
            self.resolved
                .networks
                .get(network)
                .is_some_and(|n| n.vni == vni)
        };
        let local = self
            .endpoints
            .iter()
            .filter(|l| served(l.network(), l.created.plan.vni))
            .map(|l| LocalEndpoint {
                vni: l.created.plan.vni,
                ip: l.created.plan.ip,
                mac: l.created.plan.mac,
                host_ifindex: l.created.host_ifindex,
            })
            .collect();
        let mut remote: Vec<RemoteEndpoint> = plan
            .config
            .remotes
            .iter()
            .map(|r| RemoteEndpoint {
                vni: plan.config.networks[r.network].vni,
                ip: r.ip,
                mac: r.mac,
                vtep: r.vtep,
            })
            .collect();
        // The file's [[remote]] entries win over gossip. Gossip's own duplicates
        // were settled by resolve, so only the file's entries need checking.
        let static_ips: BTreeSet<(u32, Ipv4Addr)> = remote.iter().map(|r| (r.vni, r.ip)).collect();
        let static_macs: BTreeSet<(u32, Mac)> = remote.iter().map(|r| (r.vni, r.mac)).collect();
        remote.extend(
            self.resolved
                .remote
                .iter()
                .map(|accepted| &accepted.endpoint)
                .filter(|e| {
                    !static_ips.contains(&(e.vni, e.ip)) && !static_macs.contains(&(e.vni, e.mac))
                })
                .cloned(),
        );
        DesiredState {
            config,
            networks,
            local,
            remote,
        }
    }

    fn apply(&mut self, prune: Prune) -> Result<crate::reconcile::Changes> {
        let tables = Tables::from_desired(&self.desired());
        let maps = self.maps.as_mut().context("maps not loaded")?;
        reconcile_with(maps, &tables, prune)
    }

    /// A container's veth disappears with its namespace. Such an endpoint is
    /// withdrawn instead of being reconciled forever.
    async fn forget_vanished_endpoints(&mut self, nl: &Netlink) {
        let saved_endpoints = self.runtime.endpoints.len();
        let mut kept = Vec::with_capacity(self.endpoints.len());
        for local in self.endpoints.drain(..) {
            let e = &local.created;
            match nl.link_by_name(&e.plan.host_ifname).await {
                Ok(Some(link)) if link.index == e.host_ifindex => kept.push(local),
                Ok(_) => {
                    warn!(
                        "endpoint {} ({}) vanished with its veth {} (namespace {} deleted?); withdrawing it",
                        e.plan.ip, e.plan.mac, e.plan.host_ifname, e.plan.netns
                    );
                    if let Some(p) = self.programs.as_mut() {
                        let _ = p.detach(&Hook::Endpoint(e.plan.host_ifname.clone()));
                        let _ = p.detach(&Hook::PeerXdp(e.plan.host_ifname.clone()));
                    }
                    self.runtime
                        .endpoints
                        .retain(|r| !(r.network == e.plan.network && r.netns == e.plan.netns));
                }
                Err(e) => {
                    warn!("checking {}: {e:#}", local.created.plan.host_ifname);
                    kept.push(local);
                }
            }
        }
        self.endpoints = kept;
        if self.runtime.endpoints.len() != saved_endpoints
            && let Err(e) = self.state_file.save(&self.runtime)
        {
            warn!("saving {}: {e:#}", self.state_file.path().display());
        }
    }

    async fn handle(
        &mut self,
        nl: &Netlink,
        request: Request,
        reply: oneshot::Sender<Response>,
        attempt: u32,
        retry: &mpsc::UnboundedSender<Retry>,
    ) {
        let result = match &request {
            Request::NetworkCreate { name, vni, subnet } => {
                self.network_create(name, *vni, subnet).await
            }
            Request::NetworkLs => Ok(Response::ok(self.network_list())),
            Request::NetworkRm { name } => self.network_rm(name).await,
            Request::EndpointAdd {
                network,
                netns,
                ip,
                mac,
            } => {
                match self
                    .endpoint_add(nl, network, netns, *ip, mac.as_deref(), attempt)
                    .await
                {
                    Ok(Added::Done(info)) => Ok(Response::ok(info)),
                    Ok(Added::AfterClaim) => {
                        // Answer once the claim has settled.
                        let retry = retry.clone();
                        let settle = self.settle;
                        tokio::spawn(async move {
                            tokio::time::sleep(settle).await;
                            let _ = retry.send(Retry {
                                request,
                                reply,
                                attempt: attempt + 1,
                            });
                        });
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            Request::EndpointRm { network, netns } => self.endpoint_rm(nl, network, netns).await,
            Request::EndpointLs => Ok(Response::ok(self.endpoint_list())),
            Request::Members => Ok(Response::ok(MemberList {
                node: self.name().to_owned(),
                gossip: self.gossip.is_some(),
                members: self.resolved.members.clone(),
                transport: self.gossip.as_ref().map(Gossip::transport_counts),
                conflicts: self.resolved.conflicts.clone(),
            })),
        };
        let _ = reply.send(result.unwrap_or_else(|e| Response::err(&e)));
    }

    fn network_info(&self, def: &NetworkDef) -> NetworkInfo {
        let local = self
            .endpoints
            .iter()
            .filter(|l| l.network() == def.name)
            .count();
        let remote = self
            .resolved
            .remote
            .iter()
            .filter(|r| r.network == def.name)
            .count();
        NetworkInfo {
            name: def.name.clone(),
            vni: def.vni,
            subnet: def.subnet.to_string(),
            origin: def.origin.clone(),
            from_config: def.from_config(),
            endpoints: local + remote,
        }
    }

    fn network_list(&self) -> NetworkList {
        NetworkList {
            networks: self
                .resolved
                .networks
                .values()
                .map(|d| self.network_info(d))
                .collect(),
            conflicts: self.resolved.conflicts.clone(),
        }
    }

    async fn network_create(&mut self, name: &str, vni: u32, subnet: &str) -> Result<Response> {
        check_network_name(name).map_err(anyhow::Error::msg)?;
        if !(1..=VNI_MAX).contains(&vni) {
            bail!("VNI {vni} is outside 1..={VNI_MAX}");
        }
        let subnet: Subnet = subnet.parse().map_err(anyhow::Error::msg)?;
        if subnet.prefix_len > 30 {
            bail!("subnet {subnet} is too small for endpoints (at most /30)");
        }
        if let Some(existing) = self
            .resolved
            .networks
            .get(name)
            .or(self.own_networks().get(name))
        {
            bail!(
                "network {name} already exists (VNI {}, {}, from {})",
                existing.vni,
                existing.subnet,
                existing.origin
            );
        }
        if let Some(other) = self.resolved.networks.values().find(|n| n.vni == vni) {
            bail!("VNI {vni} is already network {}'s", other.name);
        }
        let def = NetworkDef {
            name: name.to_owned(),
            vni,
            subnet,
            created_ms: now_ms().max(1),
            origin: self.name().to_owned(),
        };
        self.runtime.networks.insert(name.to_owned(), def.clone());
        if let Err(e) = self.state_file.save(&self.runtime) {
            self.runtime.networks.remove(name);
            return Err(e);
        }
        self.publish_and_apply().await;
        info!("network {name} created: VNI {vni}, {subnet}");
        Ok(Response::ok(self.network_info(&def)))
    }

    async fn network_rm(&mut self, name: &str) -> Result<Response> {
        let def = self
            .resolved
            .networks
            .get(name)
            .cloned()
            .with_context(|| format!("no network named {name}"))?;
        if def.from_config() {
            bail!(
                "network {name} is defined in {}'s cluster file; remove it there",
                def.origin
            );
        }
        let mut users: BTreeSet<String> = self
            .endpoints
            .iter()
            .filter(|l| l.network() == name)
            .map(|_| self.name().to_owned())
            .collect();
        users.extend(
            self.resolved
                .remote
                .iter()
                .filter(|r| r.network == name)
                .map(|r| r.node.clone()),
        );
        if !users.is_empty() {
            bail!(
                "network {name} still has endpoints (on {}); remove them first",
                users.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let before = self.runtime.clone();
        self.runtime.networks.remove(name);
        // Removes every run-time definition of the name made up to now, the
        // conflicting ones too (wall clocks: a node whose clock lags by more than
        // the time to the next `create` would hide that new network).
        self.runtime
            .removed
            .insert(name.to_owned(), now_ms().max(def.created_ms));
        self.runtime.blocks.retain(|b| b.network != name);
        if let Err(e) = self.state_file.save(&self.runtime) {
            self.runtime = before;
            return Err(e);
        }
        self.publish_and_apply().await;
        info!("network {name} removed");
        Ok(Response::ok(serde_json::json!({ "removed": name })))
    }

    #[allow(clippy::too_many_arguments)]
    async fn endpoint_add(
        &mut self,
        nl: &Netlink,
        network: &str,
        netns: &str,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
        attempt: u32,
    ) -> Result<Added> {
        let def = self
            .resolved
            .networks
            .get(network)
            .cloned()
            .with_context(|| format!("no network named {network} (see `overlay network ls`)"))?;
        let path = netns_path(netns);
        if netns.is_empty() || netns.contains('/') || !path.exists() {
            bail!(
                "network namespace {netns:?} does not exist ({}); create it with `ip netns add {netns}`",
                path.display()
            );
        }
        let key = (network.to_owned(), netns.to_owned());
        if self
            .endpoints
            .iter()
            .any(|l| l.network() == network && l.netns() == netns)
        {
            bail!("namespace {netns} already has an endpoint in network {network}");
        }
        if attempt == 0 && !self.in_flight.insert(key.clone()) {
            bail!("an endpoint for namespace {netns} in network {network} is already being added");
        }
        let result = self
            .endpoint_add_inner(nl, &def, netns, ip, mac, attempt)
            .await;
        if !matches!(result, Ok(Added::AfterClaim)) {
            self.in_flight.remove(&key);
        }
        result
    }

    async fn endpoint_add_inner(
        &mut self,
        nl: &Netlink,
        def: &NetworkDef,
        netns: &str,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
        attempt: u32,
    ) -> Result<Added> {
        let network = def.name.as_str();
        let mut used: BTreeSet<Ipv4Addr> = self
            .resolved
            .used_ips
            .iter()
            .filter(|(n, _)| n == network)
            .map(|(_, ip)| *ip)
            .collect();
        used.extend(
            self.plan
                .config
                .remotes
                .iter()
                .filter(|r| self.plan.config.networks[r.network].name == network)
                .map(|r| r.ip),
        );
        let ip = match ip {
            Some(ip) => {
                if !def.subnet.contains(ip) || def.subnet.is_reserved(ip) {
                    bail!(
                        "{ip} is not a host address of network {network} ({})",
                        def.subnet
                    );
                }
                if used.contains(&ip) {
                    bail!("{ip} is already in use in network {network}");
                }
                ip
            }
            None => match ipam::allocate(
                network,
                def.subnet,
                self.name(),
                &self.resolved.claims,
                &used,
            ) {
                Allocation::Address(ip) => ip,
                Allocation::Claim(index) if attempt < MAX_CLAIMS => {
                    self.runtime.blocks.push(BlockClaim {
                        network: network.to_owned(),
                        index,
                        claimed_ms: now_ms(),
                    });
                    self.state_file.save(&self.runtime)?;
                    self.publish_and_apply().await;
                    if self.gossip.is_none() {
                        // Alone: nobody to wait for.
                        return Box::pin(self.endpoint_add_inner(
                            nl,
                            def,
                            netns,
                            None,
                            mac,
                            attempt + 1,
                        ))
                        .await;
                    }
                    return Ok(Added::AfterClaim);
                }
                Allocation::Claim(_) => bail!(
                    "could not claim an address block in network {network}: other nodes kept winning the claims"
                ),
                Allocation::Exhausted => {
                    bail!(
                        "network {network} ({}) has no free address block left",
                        def.subnet
                    )
                }
            },
        };
        let mac: Mac = match mac {
            Some(m) => m.parse().map_err(anyhow::Error::msg)?,
            None => Mac::from_ipv4(ip),
        };
        if self.resolved.used_macs.contains(&(network.to_owned(), mac)) {
            bail!("MAC {mac} is already in use in network {network}");
        }
        let inside = Netlink::in_netns(&netns_path(netns))?;
        let container_ifname = next_container_ifname(&inside).await?;
        let planned = self.plan_endpoint(def, netns, ip, mac, container_ifname.clone());
        if nl.link_by_name(&planned.host_ifname).await?.is_some() {
            bail!("interface {} already exists", planned.host_ifname);
        }
        let created = plumbing::create_endpoint(nl, &planned).await?;
        let programs = self.programs.as_mut().context("programs not loaded")?;
        let saved = RuntimeEndpoint {
            network: network.to_owned(),
            netns: netns.to_owned(),
            ip,
            mac,
            container_ifname,
        };
        self.runtime.endpoints.push(saved.clone());
        let done = match attach_endpoint(programs, &created, self.plan.config.decap) {
            Ok(()) => self.state_file.save(&self.runtime),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            let _ = programs.detach(&Hook::Endpoint(planned.host_ifname.clone()));
            let _ = programs.detach(&Hook::PeerXdp(planned.host_ifname.clone()));
            let _ = plumbing::delete_endpoint(nl, &created).await;
            self.runtime.endpoints.retain(|r| r != &saved);
            return Err(e);
        }
        self.endpoints.push(Local {
            created,
            from_config: false,
            made_here: true,
        });
        self.publish_and_apply().await;
        info!("endpoint {ip} ({mac}) added in network {network}, namespace {netns}");
        Ok(Added::Done(
            self.local_info(self.endpoints.last().expect("just pushed")),
        ))
    }

    async fn endpoint_rm(&mut self, nl: &Netlink, network: &str, netns: &str) -> Result<Response> {
        let index = self
            .endpoints
            .iter()
            .position(|l| l.network() == network && l.netns() == netns)
            .with_context(|| {
                format!("namespace {netns} has no endpoint in network {network} on this node")
            })?;
        if self.endpoints[index].from_config {
            bail!(
                "the endpoint of namespace {netns} in network {network} is defined in the cluster file {}; remove it there",
                self.plan.config.path.display()
            );
        }
        let local = self.endpoints.remove(index);
        let e = &local.created;
        self.runtime
            .endpoints
            .retain(|r| !(r.network == network && r.netns == netns));
        // Withdraw from the maps and the cluster before the veth goes.
        self.publish_and_apply().await;
        if let Some(p) = self.programs.as_mut() {
            p.detach(&Hook::Endpoint(e.plan.host_ifname.clone()))?;
            p.detach(&Hook::PeerXdp(e.plan.host_ifname.clone()))?;
        }
        plumbing::delete_endpoint(nl, e).await?;
        self.state_file.save(&self.runtime)?;
        info!(
            "endpoint {} removed from network {network}, namespace {netns}",
            e.plan.ip
        );
        Ok(Response::ok(self.local_info(&local)))
    }

    fn local_info(&self, l: &Local) -> EndpointInfo {
        EndpointInfo {
            network: l.network().to_owned(),
            ip: l.created.plan.ip,
            mac: l.created.plan.mac.to_string(),
            node: self.name().to_owned(),
            netns: Some(l.netns().to_owned()),
            host_ifname: Some(l.created.plan.host_ifname.clone()),
        }
    }

    fn endpoint_list(&self) -> Vec<EndpointInfo> {
        let mut list: Vec<EndpointInfo> =
            self.endpoints.iter().map(|l| self.local_info(l)).collect();
        list.extend(self.resolved.remote.iter().map(|r| EndpointInfo {
            network: r.network.clone(),
            ip: r.endpoint.ip,
            mac: r.endpoint.mac.to_string(),
            node: r.node.clone(),
            netns: None,
            host_ifname: None,
        }));
        list.sort_by(|a, b| (&a.network, a.ip).cmp(&(&b.network, b.ip)));
        list
    }

    /// Undoes everything, in reverse order, carrying on past errors; or, when
    /// keeping, leaves programs, links, maps and veths for the next agent. The
    /// state file stays either way: it is this node's configuration.
    async fn teardown(&mut self, nl: &Netlink, how: Teardown) {
        match how {
            Teardown::Keep => {
                if let Some(p) = self.programs.as_mut() {
                    p.keep_all();
                }
                return;
            }
            Teardown::KeepAdopted => {
                // Setup failed after adopting a running dataplane: remove only
                // what this agent added to it.
                for local in self.endpoints.drain(..).filter(|l| l.made_here) {
                    if let Some(p) = self.programs.as_mut() {
                        let _ = p.detach(&Hook::Endpoint(local.created.plan.host_ifname.clone()));
                        let _ = p.detach(&Hook::PeerXdp(local.created.plan.host_ifname.clone()));
                    }
                    let _ = plumbing::delete_endpoint(nl, &local.created).await;
                }
                if let Some(p) = self.programs.as_mut() {
                    p.keep_all();
                }
                return;
            }
            Teardown::All => {}
        }
        if let Some(programs) = self.programs.as_mut()
            && let Err(e) = programs.detach_all()
        {
            warn!("detaching programs: {e:#}");
        }
        for local in self.endpoints.drain(..).rev() {
            if let Err(e) = plumbing::delete_endpoint(nl, &local.created).await {
                warn!("{e:#}");
            }
        }
        tunnel_gro::remove(nl, self.plan.config.vxlan_port).await;
        self.programs = None;
        self.maps = None;
        if let Err(e) = loader::unpin(&self.plan.pin_dir) {
            warn!("{e:#}");
        }
    }

    fn teardown_after_failed_setup(&self) -> Teardown {
        if self.adopted {
            Teardown::KeepAdopted
        } else {
            Teardown::All
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Teardown {
    All,
    Keep,
    KeepAdopted,
}

enum Added {
    Done(EndpointInfo),
    /// A block claim was announced; the add resumes once it has settled.
    AfterClaim,
}

fn attach_endpoint(programs: &mut Programs, e: &CreatedEndpoint, decap: DecapMode) -> Result<()> {
    programs.attach_endpoint(&e.plan.host_ifname)?;
    if decap == DecapMode::Xdp {
        programs.attach_peer_xdp(
            &e.plan.host_ifname,
            &netns_path(&e.plan.netns),
            &e.plan.container_ifname,
        )?;
    }
    Ok(())
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
