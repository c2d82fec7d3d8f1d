//! The API container runtimes use (CNI, Docker's remote driver): attachments
//! keyed by (container ID, ifname) into namespaces named by path, in both
//! plumbing modes; idempotent removal; attachments surviving agent restarts;
//! and what an attach costs.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use overlay_tests::{
    Decap, Overlay, netns_path, ping,
    scenario::{C2, UBER_NET, docker_mac},
    sh, wait_until,
};
use overlay_userspace::{
    api::proto::{AttachRequest, Attachment, AttachmentKey, ErrorCode, Request, Response},
    model::Plumbing,
};

/// One request on the agent's socket, as a runtime sends it: a JSON line.
fn api(socket: &Path, request: &Request) -> Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(serde_json::from_str(&answer)?)
}

fn ok<T: serde::de::DeserializeOwned>(response: Response) -> Result<T> {
    if let Some(e) = response.error {
        bail!("{e} ({:?})", response.code);
    }
    Ok(serde_json::from_value(response.data)?)
}

fn failed(response: &Response, code: ErrorCode, text: &str) -> Result<()> {
    ensure!(
        response.code == Some(code) && response.error.as_deref().is_some_and(|e| e.contains(text)),
        "expected {code:?} with {text:?}: {response:?}"
    );
    Ok(())
}

fn attach_request(container_id: &str, ifname: &str, netns: &str) -> AttachRequest {
    AttachRequest {
        container_id: container_id.into(),
        ifname: ifname.into(),
        network: UBER_NET.name.into(),
        netns: netns.into(),
        ip: None,
        mac: None,
        plumbing: Plumbing::Agent,
        reserved: false,
    }
}

fn key(container_id: &str, ifname: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: container_id.into(),
        ifname: ifname.into(),
    }
}

/// [`Overlay::gossip_with_c2`] with both agents running, with `extra`.
fn gossip_overlay(extra: &[&str]) -> Result<Overlay> {
    let mut o = Overlay::gossip_with_c2("ra")?;
    for node in [1, 2] {
        o.start_agent_with(node, extra)?;
    }
    Ok(o)
}

/// A process that holds a namespace, so that `/proc/PID/ns/net` names it;
/// killed on drop.
struct Holder(Child);

impl Holder {
    /// Returns once the process is inside `ns`: until nsenter has entered it,
    /// `/proc/PID/ns/net` names this process's own namespace.
    fn start(ns: &str) -> Result<Holder> {
        use std::os::unix::fs::MetadataExt as _;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()?;
        let holder = Holder(child);
        let target = std::fs::metadata(netns_path(ns))?.ino();
        wait_until(
            Duration::from_secs(5),
            "the holder inside its namespace",
            || Ok(std::fs::metadata(holder.netns())?.ino() == target),
        )?;
        Ok(holder)
    }

    fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pings c2 from `ns` until it answers (node2 learns of it by gossip).
fn reaches_c2(ns: &str) -> Result<()> {
    wait_until(
        Duration::from_secs(10),
        "a ping from the attachment to c2",
        || Ok(ping(ns, &C2.ip.to_string(), 1, &[])?.received == 1),
    )?;
    Ok(())
}

#[test]
fn runtimes_attach_and_detach_by_container_id_and_ifname() -> Result<()> {
    let mut o = gossip_overlay(&[])?;
    let socket = o.scenario.names.socket(1);
    // CNI: a namespace path under /run/netns, the agent plumbs.
    let a1 = o.topology.container("a1")?.name.clone();
    let cni_netns = format!("/run/netns/{a1}");
    let added: Attachment = ok(api(
        &socket,
        &Request::Attach(attach_request("cni-a1", "eth0", &cni_netns)),
    )?)?;
    ensure!(added.container_id.as_deref() == Some("cni-a1") && added.ifname == "eth0");
    ensure!(added.container_ifname == "eth0" && added.netns == cni_netns);
    ensure!(added.mac.to_string() == docker_mac(added.ip), "{added:?}");
    ensure!(added.prefix_len == 24 && added.mtu == 1450, "{added:?}");
    ensure!(added.gateway == Some(UBER_NET.gateway()), "{added:?}");
    ensure!(
        added.routes.len() == 1
            && added.routes[0].dst.to_string() == "0.0.0.0/0"
            && added.routes[0].gateway == Some(UBER_NET.gateway()),
        "{added:?}"
    );
    let inside = sh(&format!(
        "ip -n {a1} -4 -o addr show dev eth0; ip -n {a1} route; ip -n {a1} link show eth0"
    ))?;
    for wanted in [
        format!("{}/24", added.ip),
        format!("default via {}", UBER_NET.gateway()),
        "mtu 1450".to_owned(),
    ] {
        ensure!(inside.contains(&wanted), "{wanted} inside: {inside}");
    }
    // The container end makes no IPv6 address (`addrgenmode none`, see
    // host/veth.rs), so it has sent nothing of IPv6: no DAD, no router
    // solicitation, no MLD report (the kernel's per-device counters).
    let ipv6 = sh(&format!(
        "ip -n {a1} -6 -o addr show dev eth0; \
         nsenter --net=/run/netns/{a1} cat /proc/sys/net/ipv6/conf/eth0/addr_gen_mode; \
         nsenter --net=/run/netns/{a1} grep -E '^(Ip6OutRequests|Ip6OutMcastPkts|Icmp6OutMsgs) ' \
           /proc/net/dev_snmp6/eth0"
    ))?;
    ensure!(
        ipv6.split_whitespace().eq([
            "1",
            "Ip6OutRequests",
            "0",
            "Ip6OutMcastPkts",
            "0",
            "Icmp6OutMsgs",
            "0"
        ]),
        "IPv6 of eth0 inside (no address, addr_gen_mode 1, nothing sent): {ipv6}"
    );
    // GRO on inside: frames redirected into the veth are merged (host/ethtool.rs).
    let features = sh(&format!("nsenter --net=/run/netns/{a1} ethtool -k eth0"))?;
    ensure!(
        features.contains("generic-receive-offload: on"),
        "GRO of eth0 inside: {features}"
    );
    // IPv6 off on the host end, which forwards (the way out).
    let host_end = sh(&format!(
        "nsenter --net=/run/netns/{ns} cat /proc/sys/net/ipv6/conf/{ifname}/disable_ipv6 \
         /proc/sys/net/ipv4/conf/{ifname}/forwarding",
        ns = o.node_ns(1),
        ifname = added.host_ifname
    ))?;
    ensure!(
        host_end.split_whitespace().eq(["1", "1"]),
        "disable_ipv6 and forwarding of the host end: {host_end}"
    );
    ensure!(
        sh(&format!(
            "ip -n {} link show {}",
            o.node_ns(1),
            added.host_ifname
        ))
        .is_ok(),
        "the host end exists"
    );
    reaches_c2(&a1)?;

    // The same key again, and the same ifname in that namespace: refused.
    failed(
        &api(
            &socket,
            &Request::Attach(attach_request("cni-a1", "eth0", &cni_netns)),
        )?,
        ErrorCode::Exists,
        "already has an attachment eth0",
    )?;
    let a1b = Request::Attach(AttachRequest {
        network: "nope".into(),
        ..attach_request("cni-a1b", "eth0", &cni_netns)
    });
    failed(
        &api(&socket, &a1b)?,
        ErrorCode::NotFound,
        "no network named nope",
    )?;

    // /proc/PID/ns/net, an address and MAC of the runtime's choosing.
    let a2 = o.topology.container("a2")?.name.clone();
    let holder = Holder::start(&a2)?;
    let ip = Ipv4Addr::new(10, 0, 0, 77);
    let explicit: Attachment = ok(api(
        &socket,
        &Request::Attach(AttachRequest {
            ip: Some(ip),
            mac: Some("02:00:00:00:00:77".parse().map_err(anyhow::Error::msg)?),
            ..attach_request("pod-a2", "net1", &holder.netns())
        }),
    )?)?;
    ensure!(
        explicit.ip == ip && explicit.container_ifname == "net1",
        "{explicit:?}"
    );
    ensure!(sh(&format!("ip -n {a2} link show net1"))?.contains("02:00:00:00:00:77"));
    reaches_c2(&a2)?;

    // Docker's Join: the agent leaves the container end in its namespace, the
    // caller moves and configures it.
    let a3 = o.topology.container("a3")?.name.clone();
    let joined: Attachment = ok(api(
        &socket,
        &Request::Attach(AttachRequest {
            plumbing: Plumbing::Caller,
            ..attach_request("docker-ep3", "eth0", &format!("/var/run/netns/{a3}"))
        }),
    )?)?;
    let src = &joined.container_ifname;
    let peer = sh(&format!("ip -n {} link show {src}", o.node_ns(1)))?;
    ensure!(
        peer.contains("mtu 1450") && peer.contains(&joined.mac.to_string()),
        "{peer}"
    );
    sh(&format!(
        "ip -n {n} link set {src} netns {a3} && ip -n {a3} link set {src} name eth0 && \
         ip -n {a3} addr add {ip}/{len} dev eth0 && ip -n {a3} link set eth0 up && \
         ip -n {a3} route add default via {gw}",
        n = o.node_ns(1),
        ip = joined.ip,
        len = joined.prefix_len,
        gw = joined.gateway.context("a gateway")?,
    ))?;
    reaches_c2(&a3)?;

    let listed: Vec<Attachment> = ok(api(&socket, &Request::Attachments)?)?;
    ensure!(listed.len() == 3, "{listed:?}");

    // Detach, then detach again: the second says it does not know it.
    for (container, ifname) in [
        ("cni-a1", "eth0"),
        ("pod-a2", "net1"),
        ("docker-ep3", "eth0"),
    ] {
        let removed: Attachment = ok(api(&socket, &Request::Detach(key(container, ifname)))?)?;
        ensure!(removed.container_id.as_deref() == Some(container));
        ensure!(
            sh(&format!(
                "ip -n {} link show {}",
                o.node_ns(1),
                removed.host_ifname
            ))
            .is_err(),
            "{} is gone",
            removed.host_ifname
        );
        failed(
            &api(&socket, &Request::Detach(key(container, ifname)))?,
            ErrorCode::NotFound,
            "has no attachment",
        )?;
    }
    ensure!(ping(&a1, &C2.ip.to_string(), 1, &[]).map_or(true, |s| s.received == 0));
    drop(holder);
    Ok(())
}

#[test]
fn attachments_with_namespace_paths_survive_agent_restarts() -> Result<()> {
    let mut o = gossip_overlay(&["--keep"])?;
    let socket = o.scenario.names.socket(1);
    let b1 = o.topology.container("b1")?.name.clone();
    let b2 = o.topology.container("b2")?.name.clone();
    let holder = Holder::start(&b2)?;
    for (container, netns) in [
        ("cni-b1", format!("/run/netns/{b1}")),
        ("cni-b2", holder.netns()),
    ] {
        ok::<Attachment>(api(
            &socket,
            &Request::Attach(attach_request(container, "eth0", &netns)),
        )?)?;
    }
    reaches_c2(&b1)?;
    let before: Vec<Attachment> = ok(api(&socket, &Request::Attachments)?)?;

    // --keep and a new agent: adopted as they are.
    let left = o.agents.remove(0).stop_keeping()?;
    o.agents.insert(
        0,
        left.restart(&o.node_ns(1), &o.binary, &o.config_path(1), &[])?,
    );
    let adopted: Vec<Attachment> = ok(api(&socket, &Request::Attachments)?)?;
    ensure!(
        adopted == before,
        "adopted: {adopted:?}\nbefore: {before:?}"
    );
    reaches_c2(&b2)?;

    // A clean stop removes the veths; the next agent makes them again from
    // its state file, with the same addresses. (The test bed's stop removes
    // the run directory, state file included: it is put back as it was, its
    // snapshot and the journal of the changes since.)
    let state_dir = overlay_tests::scenario::state_dir_for(&o.pin_dir(1));
    let saved = ["state.json", "state.journal"]
        .map(|name| (state_dir.join(name), std::fs::read(state_dir.join(name))));
    o.agents.remove(0).stop()?;
    ensure!(
        sh(&format!("ip -n {b1} link show eth0")).is_err(),
        "removed on a clean stop"
    );
    std::fs::create_dir_all(&state_dir)?;
    for (path, contents) in saved {
        std::fs::write(path, contents?)?;
    }
    o.start_agent_with(1, &["--keep"])?;
    let node1 = o.agents.pop().expect("just started");
    o.agents.insert(0, node1);
    let remade: Vec<Attachment> = ok(api(&socket, &Request::Attachments)?)?;
    ensure!(remade == before, "remade: {remade:?}\nbefore: {before:?}");
    reaches_c2(&b1)?;

    // The process holding b2's /proc path is gone: that attachment is dropped
    // at the next start, with a warning, and the other stays.
    let left = o.agents.remove(0).stop_keeping()?;
    drop(holder);
    let agent = left.restart(&o.node_ns(1), &o.binary, &o.config_path(1), &[])?;
    let stderr = agent.stderr();
    o.agents.insert(0, agent);
    ensure!(
        stderr.contains("is dropped") && stderr.contains("is gone"),
        "{stderr}"
    );
    let kept: Vec<Attachment> = ok(api(&socket, &Request::Attachments)?)?;
    ensure!(
        kept.len() == 1 && kept[0].container_id.as_deref() == Some("cni-b1"),
        "{kept:?}"
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Reported, not asserted: a runtime's attach, end to end through the socket.
#[test]
fn attach_latency_is_reported() -> Result<()> {
    const N: usize = 30;
    let mut o = Overlay::build_with(Decap::Tc, &[C2])?;
    o.start_agent(1)?;
    let socket = o.scenario.names.socket(1);
    let mut namespaces = Vec::new();
    for i in 0..N {
        namespaces.push(o.topology.container(&format!("l{i}"))?.name.clone());
    }
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    for (i, ns) in namespaces.iter().enumerate() {
        let id = format!("lat-{i}");
        let started = Instant::now();
        ok::<Attachment>(api(
            &socket,
            &Request::Attach(attach_request(&id, "eth0", &format!("/run/netns/{ns}"))),
        )?)?;
        attach.push(started.elapsed());
    }
    for i in 0..N {
        let started = Instant::now();
        ok::<Attachment>(api(
            &socket,
            &Request::Detach(key(&format!("lat-{i}"), "eth0")),
        )?)?;
        detach.push(started.elapsed());
    }
    attach.sort();
    detach.sort();
    eprintln!(
        "attach of {N} containers: p50 {:?}, p95 {:?}, max {:?}; detach: p50 {:?}, p95 {:?}",
        percentile(&attach, 0.5),
        percentile(&attach, 0.95),
        attach[N - 1],
        percentile(&detach, 0.5),
        percentile(&detach, 0.95)
    );
    Ok(())
}
