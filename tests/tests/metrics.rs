//! The Prometheus endpoint, scraped by a real Prometheus server (Debian's,
//! installed by `cargo xtask test`) bound to the loopback of the agent's
//! namespace, and asked through its HTTP API with PromQL: the counters rise
//! with the traffic, a member going down shows, the FDB's fill ratio is what
//! was installed. And the endpoint itself: what it answers, and a setup that
//! cannot bind it fails whole.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use overlay_common::{ABI_FINGERPRINT, Counter, FDB_KIND_GATEWAY, MAX_FDB_ENTRIES};
use overlay_tests::{
    Agent, Cluster, ClusterFile, Decap, EndpointSection, NetworkSection, Overlay, RemoteSection,
    in_netns, node_ip, ping,
    prometheus::{Prometheus, http, http_get},
    scenario::{UBER_NET, docker_mac, gossip_addr},
    unique_prefix, wait_until,
};
use overlay_userspace::dataplane::maps::Maps;

const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9090";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a literal address")
}

/// A network of remotes behind a VTEP that does not exist: table entries only.
const FAR_NET: &str = "far-net";
const FAR_REMOTES: u32 = 300;

/// Host `i`'s file: uber-net with one endpoint in namespace `ns`; host 1 also
/// serves metrics and has far-net's remotes.
fn file(c: &Cluster, i: usize, ns: &str) -> ClusterFile {
    let ip = Ipv4Addr::new(10, 0, 0, u8::try_from(10 + i).expect("few hosts"));
    let mut f = ClusterFile {
        networks: vec![UBER_NET.section()],
        endpoints: vec![EndpointSection::new(UBER_NET.name, ns, ip)],
        ..c.node_file(i)
    };
    if i == 1 {
        f.metrics_listen = Some(addr(METRICS));
        f.networks
            .push(NetworkSection::new(FAR_NET, 4099, "10.9.0.0/16"));
        f.remotes = (0..FAR_REMOTES)
            .map(|n| {
                // From .2: 10.9.0.1 is far-net's gateway.
                let ip = Ipv4Addr::new(10, 9, (n / 200) as u8, (n % 200 + 2) as u8);
                RemoteSection {
                    network: FAR_NET.into(),
                    ip,
                    mac: docker_mac(ip),
                    vtep: Ipv4Addr::new(172, 30, 0, 200),
                }
            })
            .collect();
    }
    f
}

/// The kind of each of host `i`'s FDB entries.
fn fdb_kinds(c: &Cluster, i: usize) -> Result<Vec<u32>> {
    Ok(Maps::from_pins(&c.pin_dir(i))?
        .fdb
        .iter()
        .map(|entry| entry.map(|(_, e)| e.kind))
        .collect::<Result<_, _>>()?)
}

/// Host `i`'s FDB entries of endpoints: a network with a way out also holds
/// its gateway's.
fn endpoint_entries(c: &Cluster, i: usize) -> Result<usize> {
    Ok(fdb_kinds(c, i)?
        .into_iter()
        .filter(|&kind| kind != FDB_KIND_GATEWAY)
        .count())
}

fn counter(c: &Cluster, i: usize, reason: &str) -> Result<(u64, u64)> {
    let maps = Maps::from_pins(&c.pin_dir(i))?;
    let (_, v) = maps
        .counter_totals()?
        .into_iter()
        .find(|(counter, _)| counter.name() == reason)
        .with_context(|| format!("no counter {reason}"))?;
    Ok((v.packets, v.bytes))
}

#[test]
fn prometheus_sees_the_counters_rise_and_the_fdb_fill() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("mp"), 2)?;
    let a = c.container("a")?;
    let b = c.container("b")?;
    let (fa, fb) = (file(&c, 1, &a), file(&c, 2, &b));
    c.start_agent(1, &fa, &[])?;
    c.start_agent(2, &fb, &[])?;
    let b_ip = fb.endpoints[0].ip;
    wait_until(Duration::from_secs(10), "host1 learns b", || {
        Ok(endpoint_entries(&c, 1)? == FAR_REMOTES as usize + 2)
    })?;
    let prom = Prometheus::start(c.host_ns(1), addr(PROMETHEUS), &[addr(METRICS)])?;
    let wait = Duration::from_secs(20);

    // The FDB's fill ratio is what the agent installed, as the kernel holds it.
    let installed = fdb_kinds(&c, 1)?.len() as f64;
    let ratio = prom.wait_for(
        r#"overlay_map_entries{map="FDB"} / overlay_map_max_entries{map="FDB"}"#,
        wait,
        |v| v > 0.0,
    )?;
    ensure!(
        (ratio - installed / f64::from(MAX_FDB_ENTRIES)).abs() < 1e-12,
        "FDB fill {ratio}, installed {installed} of {MAX_FDB_ENTRIES}"
    );
    ensure!(prom.value(r#"overlay_map_entries{map="NEIGH"}"#)? == Some(installed));
    ensure!(prom.value(r#"overlay_map_entries{map="VTEPS"}"#)? == Some(2.0));
    ensure!(
        prom.value(r#"overlay_endpoints{network="far-net",location="remote"}"#)?
            == Some(f64::from(FAR_REMOTES))
    );
    ensure!(prom.value(r#"overlay_endpoints{network="uber-net",location="local"}"#)? == Some(1.0));
    ensure!(prom.value(r#"overlay_endpoints{network="uber-net",location="remote"}"#)? == Some(1.0));

    // The counters rise with the traffic and settle at what the maps hold.
    let encap = r#"overlay_dataplane_packets_total{reason="encap"}"#;
    let before = prom.wait_for(encap, wait, |_| true)?;
    let pings = 20;
    ensure!(ping(&a, &b_ip.to_string(), pings, &["-i", "0.05"])?.received == u64::from(pings));
    let (packets, bytes) = counter(&c, 1, "encap")?;
    ensure!(packets as f64 >= before + f64::from(pings));
    prom.wait_for(encap, wait, |v| v == packets as f64)?;
    prom.wait_for(
        r#"overlay_dataplane_bytes_total{reason="encap"}"#,
        wait,
        |v| v == bytes as f64,
    )?;
    let (decapped, _) = counter(&c, 1, "decap")?;
    ensure!(decapped >= u64::from(pings));
    prom.wait_for(
        r#"overlay_dataplane_packets_total{reason="decap"}"#,
        wait,
        |v| v == decapped as f64,
    )?;
    ensure!(
        prom.value("rate(overlay_dataplane_packets_total{reason=\"encap\"}[10s]) > 0")?
            .is_some(),
        "Prometheus sees encap rising"
    );

    // Reconcile passes: counted, timed, none failed.
    let passes = prom.wait_for("overlay_reconcile_passes_total", wait, |v| v >= 1.0)?;
    ensure!(
        prom.value("overlay_reconcile_duration_seconds_count - overlay_reconcile_passes_total")?
            == Some(0.0),
        "every pass is in the histogram ({passes} passes)"
    );
    ensure!(prom.value("overlay_reconcile_errors_total")? == Some(0.0));
    ensure!(
        prom.value(r#"overlay_reconcile_changes_total{kind="added"}"#)?
            .is_some_and(|v| v >= installed),
        "the first pass added every entry"
    );

    // What is attached, and by which build.
    let tcx = c.agents[&1].stderr().contains("attaches as a TCX link");
    let info = format!(
        r#"overlay_dataplane_info{{decap="tc",tc_attach="{}",endpoint_tc_attach="netlink_clsact"}}"#,
        if tcx { "tcx" } else { "netlink_clsact" }
    );
    ensure!(prom.value(&info)? == Some(1.0), "{info}");
    let build = format!(r#"overlay_build_info{{abi="{ABI_FINGERPRINT:08x}"}}"#);
    ensure!(prom.value(&build)? == Some(1.0), "{build}");
    ensure!(
        prom.value(r#"overlay_monitor_events_total{result="written"}"#)? == Some(0.0),
        "no monitor, no events"
    );
    ensure!(prom.value("overlay_monitor_listeners")? == Some(0.0));
    Ok(())
}

#[test]
fn prometheus_sees_a_member_go_down_and_forged_gossip_rejected() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("mm"), 3)?;
    for i in 1..=3 {
        let ns = c.container(&format!("e{i}"))?;
        let f = file(&c, i, &ns);
        c.start_agent(
            i,
            &ClusterFile {
                remotes: Vec::new(),
                ..f
            },
            &[],
        )?;
    }
    let prom = Prometheus::start(c.host_ns(1), addr(PROMETHEUS), &[addr(METRICS)])?;
    let wait = Duration::from_secs(20);
    prom.wait_for(r#"overlay_cluster_members{state="live"}"#, wait, |v| {
        v == 3.0
    })?;
    let third = format!(r#"overlay_cluster_member_up{{node="{}"}}"#, c.node_name(3));
    ensure!(prom.value(&third)? == Some(1.0));

    let rejected = r#"overlay_gossip_datagrams_received_total{result="rejected"}"#;
    ensure!(prom.value(rejected)? == Some(0.0));
    prom.wait_for(
        r#"overlay_gossip_datagrams_received_total{result="accepted"}"#,
        wait,
        |v| v > 0.0,
    )?;
    let to = gossip_addr(node_ip(1));
    in_netns(c.host_ns(2), move || {
        UdpSocket::bind((node_ip(2), 0))?.send_to(b"OVG1 not sealed with the key", to)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    prom.wait_for(rejected, wait, |v| v == 1.0)?;

    c.set_link(3, false)?;
    prom.wait_for(r#"overlay_cluster_members{state="dead"}"#, wait, |v| {
        v == 1.0
    })?;
    ensure!(prom.value(r#"overlay_cluster_members{state="live"}"#)? == Some(2.0));
    ensure!(prom.value(&third)? == Some(0.0), "{third}");
    ensure!(
        prom.value(r#"overlay_endpoints{network="uber-net",location="remote"}"#)? == Some(1.0),
        "the dead node's endpoint is withdrawn"
    );
    Ok(())
}

#[test]
fn the_endpoint_serves_get_metrics_only_and_a_taken_port_fails_the_setup() -> Result<()> {
    let mut o = Overlay::build(Decap::Tc)?;
    let mut f = o.node_file(1);
    f.metrics_listen = Some(addr(METRICS));
    f.write(o.dir.path(), "node1.toml")?;
    o.start_agent(1)?;
    let ns = o.node_ns(1);
    let (status, body) = http_get(&ns, &format!("http://{METRICS}/metrics"))?;
    ensure!(
        status == 200 && body.ends_with("# EOF\n"),
        "{status}: {body}"
    );
    for family in [
        "# TYPE overlay_dataplane_packets counter",
        "# TYPE overlay_dataplane_bytes counter",
        "# TYPE overlay_map_entries gauge",
        "# TYPE overlay_reconcile_duration_seconds histogram",
        "# TYPE overlay_reconcile_cpu_seconds counter",
        "# TYPE overlay_build info",
        "# TYPE overlay_dataplane info",
        "overlay_dataplane_packets_total{reason=\"drop_spoofed_ip\"} 0",
    ] {
        ensure!(body.contains(family), "no {family:?} in:\n{body}");
    }
    // Every counter the programs keep is a series, the way out's included.
    for counter in Counter::ALL {
        let series = format!(
            "overlay_dataplane_packets_total{{reason=\"{}\"}}",
            counter.name()
        );
        ensure!(body.contains(&series), "no {series} in:\n{body}");
    }
    ensure!(body.contains("reason=\"to_gateway\""), "{body}");
    // Gossip is off: no transport, no members but this node.
    ensure!(!body.contains("overlay_gossip_"), "{body}");
    ensure!(
        body.contains("overlay_cluster_members{state=\"live\"} 1"),
        "{body}"
    );
    let (status, _) = http(&ns, "POST", &format!("http://{METRICS}/metrics"), &[])?;
    ensure!(status == 405, "POST: {status}");
    let (status, _) = http_get(&ns, &format!("http://{METRICS}/nothing"))?;
    ensure!(status == 404, "GET /nothing: {status}");
    o.agents.remove(0).stop()?;

    // Something else holds the port: the agent says so and leaves nothing.
    let holder = in_netns(&ns, || Ok(TcpListener::bind(METRICS)?));
    let _held = holder
        .join()
        .map_err(|_| anyhow::anyhow!("binder panicked"))??;
    let (status, stderr) =
        Agent::run_to_completion(&ns, &o.binary, &o.config_path(1), &o.pin_dir(1), &[])?;
    ensure!(
        !status.success(),
        "the agent started without its metrics port"
    );
    ensure!(
        stderr.contains(&format!("metrics_listen: binding {METRICS}/tcp"))
            && stderr.contains("everything it had done was undone"),
        "{stderr}"
    );
    ensure!(!o.pin_dir(1).exists(), "pins were left behind");
    Ok(())
}
