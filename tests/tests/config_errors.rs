//! Config validation: each bad input is refused with the file, the field and the
//! problem, and the system is left untouched.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Agent, ClusterFile, ClusterSection, Decap, DockerSection, NetworkSection, Overlay,
    scenario::{C1, C2, C3, OTHER_NET, UBER_NET},
    sh,
};
use overlay_userspace::config::{ClusterConfig, DecapMode};

/// What an agent could have changed: the interfaces of the node and of c1 (names
/// and attached XDP programs), and the node's pin dir. Not carrier state, which a
/// fresh topology is still settling.
fn system_state(o: &Overlay) -> Result<(Vec<String>, Vec<String>, bool)> {
    let interfaces = |ns: &str| -> Result<Vec<String>> {
        let links: serde_json::Value =
            serde_json::from_str(&sh(&format!("ip -n {ns} -j link show"))?)?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| format!("{} xdp={}", l["ifname"], l["xdp"]))
            .collect())
    };
    Ok((
        interfaces(&o.node_ns(1))?,
        interfaces(&o.ns(C1))?,
        o.pin_dir(1).exists(),
    ))
}

#[test]
fn bad_inputs_are_refused_with_file_field_and_problem() -> Result<()> {
    let o = Overlay::build(Decap::Tc)?;
    let good = o.node_file(1);
    let with = |change: &dyn Fn(&mut ClusterFile)| {
        let mut file = good.clone();
        change(&mut file);
        file
    };
    let gossip = ClusterSection::new(
        "172.31.1.5:7946".parse()?,
        Vec::new(),
        &o.dir.path().join("cluster.key"),
    );
    let cases: Vec<(&str, ClusterFile, String)> = vec![
        (
            "unknown key",
            good.clone().raw("colour", "blue"),
            "unknown field `colour`".into(),
        ),
        (
            "VNI too large",
            with(&|f| f.network_mut(UBER_NET.name).vni = Some(16_777_216)),
            "network[0].vni: 16777216 is outside 1..=16777215".into(),
        ),
        (
            "VNI zero",
            with(&|f| f.network_mut(UBER_NET.name).vni = Some(0)),
            "network[0].vni: 0 is outside 1..=16777215".into(),
        ),
        (
            "IP outside subnet",
            with(&|f| f.endpoint_mut(C1.ip).ip = Ipv4Addr::new(10, 9, 0, 3)),
            "endpoint[0].ip: 10.9.0.3 is outside network \"uber-net\"'s subnet 10.0.0.0/24".into(),
        ),
        (
            "duplicate IP",
            with(&|f| f.endpoint_mut(C3.ip).ip = C1.ip),
            "is already used by endpoint[0]".into(),
        ),
        (
            "duplicate MAC",
            with(&|f| f.remote_mut(C2.ip).mac = C1.mac()),
            format!("mac: {} is already used by endpoint[0]", C1.mac()),
        ),
        (
            "two networks, one VNI",
            with(&|f| f.network_mut(OTHER_NET.name).vni = Some(UBER_NET.vni.into())),
            "network[1].vni: 4097 is already the VNI of network \"uber-net\"".into(),
        ),
        (
            "unknown network",
            with(&|f| f.endpoint_mut(C1.ip).network = "nope".into()),
            "endpoint[0].network: no network named \"nope\"".into(),
        ),
        (
            "missing netns",
            with(&|f| f.endpoint_mut(C1.ip).netns = "no-such-ns".into()),
            "endpoint[0].netns: network namespace \"no-such-ns\" does not exist".into(),
        ),
        (
            "missing underlay",
            with(&|f| f.underlay = "eth9".into()),
            "underlay: no interface \"eth9\"".into(),
        ),
        (
            "VTEP not on the underlay",
            with(&|f| f.vtep = Some(Ipv4Addr::new(172, 31, 1, 99))),
            "vtep: 172.31.1.99 is not an address of eth0".into(),
        ),
        (
            "MTU too large",
            with(&|f| f.network_mut(UBER_NET.name).mtu = Some(1480)),
            "network[0].mtu: 1480 does not fit".into(),
        ),
        (
            "VXLAN port zero",
            with(&|f| f.vxlan_port = Some(0)),
            "vxlan_port: 0 is not a UDP port".into(),
        ),
        (
            "source ports reversed",
            with(&|f| f.source_ports = Some([60999, 32768])),
            "source_ports: [60999, 32768] is not a range".into(),
        ),
        (
            "metrics address without a port",
            good.clone().raw("metrics_listen", "127.0.0.1"),
            "metrics_listen: \"127.0.0.1\" is not an address and port".into(),
        ),
        (
            "overlapping subnets",
            with(&|f| f.network_mut(OTHER_NET.name).subnet = "10.0.0.128/25".into()),
            "network[1].subnet: 10.0.0.128/25 overlaps network \"uber-net\"'s subnet 10.0.0.0/24"
                .into(),
        ),
        (
            "gateway outside the subnet",
            with(&|f| f.network_mut(UBER_NET.name).gateway = Some("10.9.0.1".into())),
            "network[0].gateway: 10.9.0.1 is outside network \"uber-net\"'s subnet".into(),
        ),
        (
            "gateway not an address",
            with(&|f| f.network_mut(UBER_NET.name).gateway = Some("gw".into())),
            "network[0].gateway: \"gw\" is not an IPv4 address".into(),
        ),
        (
            "auxiliary address on the gateway",
            with(&|f| {
                f.network_mut(UBER_NET.name).aux_addresses = vec![UBER_NET.gateway().to_string()];
            }),
            "network[0].aux_addresses[0]: 10.0.0.1 is the gateway already".into(),
        ),
        (
            "endpoint on an auxiliary address",
            with(&|f| f.network_mut(UBER_NET.name).aux_addresses = vec![C1.ip.to_string()]),
            format!("endpoint[0].ip: {} is an auxiliary address", C1.ip),
        ),
        (
            "endpoint on the gateway",
            with(&|f| f.endpoint_mut(C1.ip).ip = UBER_NET.gateway()),
            "endpoint[0].ip: 10.0.0.1 is network \"uber-net\"'s gateway".into(),
        ),
        (
            "gossip interval too short",
            with(&|f| {
                f.cluster = Some(ClusterSection {
                    gossip_interval_ms: Some(5),
                    ..gossip.clone()
                });
            }),
            "cluster.gossip_interval_ms: 5 is outside 20..=10000".into(),
        ),
    ];
    let before = system_state(&o)?;
    for (what, file, expected) in cases {
        let path = file.write(o.dir.path(), "bad.toml")?;
        let (status, stderr) =
            Agent::run_to_completion(&o.node_ns(1), &o.binary, &path, &o.pin_dir(1), &[])?;
        ensure!(!status.success(), "{what}: the agent accepted it");
        let file = path.display().to_string();
        ensure!(
            stderr.contains(&format!("{file}: ")),
            "{what}: the error must name the file: {stderr}"
        );
        ensure!(
            stderr.contains(&expected),
            "{what}: expected {expected:?} in: {stderr}"
        );
        let after = system_state(&o)?;
        ensure!(
            after == before,
            "{what}: the system was changed: {before:?} -> {after:?}"
        );
    }
    Ok(())
}

#[test]
fn a_missing_file_is_reported() -> Result<()> {
    let o = Overlay::build(Decap::Tc)?;
    let path = o.dir.path().join("absent.toml");
    let (status, stderr) =
        Agent::run_to_completion(&o.node_ns(1), &o.binary, &path, &o.pin_dir(1), &[])?;
    ensure!(
        !status.success() && stderr.contains("cannot read the file"),
        "{stderr}"
    );
    Ok(())
}

/// The builder and the agent agree on every key: a file with all of them set
/// reads back through the agent's own parser as written, and none of them is
/// what the agent would have taken without it.
#[test]
fn every_key_the_builder_writes_is_read_by_the_agent() -> Result<()> {
    let parse = |file: &ClusterFile| -> Result<ClusterConfig> {
        ClusterConfig::parse(Path::new("every-key.toml"), &file.render()?)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let file = ClusterFile::with_every_key();
    let config = parse(&file)?;
    let defaults = parse(&ClusterFile {
        networks: file
            .networks
            .iter()
            .map(|n| NetworkSection {
                mtu: None,
                gateway: None,
                aux_addresses: Vec::new(),
                internal: None,
                ..n.clone()
            })
            .collect(),
        cluster: file
            .cluster
            .clone()
            .map(|c| ClusterSection::new(c.listen, c.seeds, &c.key_file)),
        docker: file.docker.clone().map(|_| DockerSection {
            plugin_socket: None,
            engine: None,
        }),
        ..ClusterFile::new(&file.node, &file.underlay)
    })?;
    ensure!((config.node.as_str(), config.underlay.as_str()) == (&*file.node, &*file.underlay));
    ensure!(config.vtep == file.vtep && defaults.vtep.is_none());
    ensure!(Some(config.vxlan_port) == file.vxlan_port && config.vxlan_port != defaults.vxlan_port);
    ensure!(
        Some(config.source_ports) == file.source_ports
            && config.source_ports != defaults.source_ports
    );
    ensure!(config.decap == DecapMode::Xdp && defaults.decap == DecapMode::Tc);
    ensure!(config.metrics_listen == file.metrics_listen && defaults.metrics_listen.is_none());

    let (network, written) = (&config.networks[0], &file.networks[0]);
    ensure!(network.name == written.name && Some(i64::from(network.vni)) == written.vni);
    ensure!(network.subnet.to_string() == written.subnet);
    ensure!(network.mtu == written.mtu && defaults.networks[0].mtu.is_none());
    let default_net = &defaults.networks[0];
    ensure!(
        Some(network.gateway.to_string()) == written.gateway
            && network.gateway != default_net.gateway
    );
    let aux: Vec<String> = network.aux.iter().map(ToString::to_string).collect();
    ensure!(aux == written.aux_addresses && default_net.aux.is_empty());
    ensure!(Some(network.internal) == written.internal && !default_net.internal);
    let (endpoint, written) = (&config.endpoints[0], &file.endpoints[0]);
    ensure!(config.networks[endpoint.network].name == written.network);
    ensure!(endpoint.netns == written.netns && endpoint.ip == written.ip);
    ensure!(Some(endpoint.mac.to_string()) == written.mac);
    let (remote, written) = (&config.remotes[0], &file.remotes[0]);
    ensure!(config.networks[remote.network].name == written.network);
    ensure!(remote.ip == written.ip && remote.vtep == written.vtep);
    ensure!(remote.mac.to_string() == written.mac);

    let cluster = config.cluster.context("the [cluster] section")?;
    let default = defaults.cluster.context("the [cluster] section")?;
    let written = file.cluster.context("the [cluster] section")?;
    ensure!(cluster.listen == written.listen && cluster.seeds == written.seeds);
    ensure!(cluster.key_file == written.key_file);
    ensure!(Some(cluster.advertise) == written.advertise && cluster.advertise != default.advertise);
    ensure!(
        Some(u64::try_from(cluster.gossip_interval.as_millis())?) == written.gossip_interval_ms
            && cluster.gossip_interval != default.gossip_interval
    );
    ensure!(
        Some(&cluster.cluster_id) == written.cluster_id.as_ref()
            && cluster.cluster_id != default.cluster_id
    );

    let docker = config.docker.context("the [docker] section")?;
    let default = defaults.docker.context("the [docker] section")?;
    let written = file.docker.context("the [docker] section")?;
    ensure!(
        Some(&docker.plugin_socket) == written.plugin_socket.as_ref()
            && docker.plugin_socket != default.plugin_socket
    );
    ensure!(
        Some(format!("unix://{}", docker.engine.display())) == written.engine
            && docker.engine != default.engine
    );
    Ok(())
}

/// `ip netns exec` remounts /sys, hiding the bpffs: the agent says so and what
/// to do instead, before it changes anything.
#[test]
fn an_agent_under_ip_netns_exec_names_the_hidden_bpffs() -> Result<()> {
    let o = Overlay::build_with(Decap::Tc, &[C1])?;
    let before = system_state(&o)?;
    let pin_dir = o.pin_dir(1);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &o.node_ns(1)])
        .arg(&o.binary)
        .arg("agent")
        .arg("--config")
        .arg(o.config_path(1))
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--socket")
        .arg(o.dir.path().join("netns-exec.sock"))
        .arg("--state-dir")
        .arg(o.dir.path().join("netns-exec-state"))
        .output()
        .context("running the agent under ip netns exec")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "the agent ran under ip netns exec: {stderr}"
    );
    ensure!(
        stderr.contains("is not on a BPF filesystem")
            && stderr.contains("ip netns exec")
            && stderr.contains("nsenter --net="),
        "{stderr}"
    );
    ensure!(system_state(&o)? == before, "the agent changed something");
    ensure!(!o.dir.path().join("netns-exec-state").exists());
    Ok(())
}
