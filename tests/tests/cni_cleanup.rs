//! What follows a CNI ADD, with the plugin run as a runtime runs it: DEL
//! however things stand (twice, with the namespace gone, with the agent
//! killed), CHECK against the system once the veth is gone, GC keeping only
//! the valid attachments of its own configuration, and chaining with
//! Debian's portmap (the result passes through, `prevResult` is extended).

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    cni::{
        CniBed, DEBIAN_CNI_PLUGINS, conflist, overlay_plugin, plugin_stdin, reaches_c2, run_plugin,
    },
    scenario::UBER_NET,
    sh,
};
use serde_json::{Value, json};

/// The first plugin of `list`, with `extra` merged into its configuration.
fn stdin(list: &Value, extra: &Value) -> Vec<u8> {
    plugin_stdin(list, 0, extra)
}

#[test]
fn del_succeeds_with_the_namespace_gone_and_twice() -> Result<()> {
    let mut o = CniBed::start("cn")?;
    let conf = o.list("1.0.0", "uber-net");
    let a = o.attachment("g1")?;
    let added = o.cni(&a.env("ADD"), &stdin(&conf, &json!({})))?;
    (added).ok()?;
    let prev = json!({ "prevResult": added.json()? });
    o.overlay.topology.remove_container("g1")?;
    ensure!(!Path::new(&a.netns).exists());
    (o.cni(&a.env("DEL"), &stdin(&conf, &prev))?).ok()?;
    ensure!(!o.agent_knows(&a.container_id)?);
    // Without CNI_NETNS at all (the spec allows it for DEL), and again.
    let env: Vec<_> = a
        .env("DEL")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    for _ in 0..2 {
        (o.cni(&env, &stdin(&conf, &json!({})))?).ok()?;
    }
    Ok(())
}

#[test]
fn check_fails_once_the_veth_is_gone() -> Result<()> {
    let mut o = CniBed::start("cn")?;
    let conf = o.list("1.0.0", "uber-net");
    let a = o.attachment("k1")?;
    let added = o.cni(&a.env("ADD"), &stdin(&conf, &json!({})))?;
    (added).ok()?;
    let result = added.json()?;
    let prev = json!({ "prevResult": result });
    (o.cni(&a.env("CHECK"), &stdin(&conf, &prev))?).ok()?;
    (o.cni(&a.env("CHECK"), &stdin(&conf, &json!({})))?).refused(7, "prevResult")?;
    let mut moved = result.clone();
    moved["ips"][0]["address"] = json!("10.0.0.250/24");
    (o.cni(
        &a.env("CHECK"),
        &stdin(&conf, &json!({ "prevResult": moved })),
    )?)
    .refused(101, "10.0.0.250")?;
    let host = result["interfaces"][0]["name"].as_str().context("host")?;
    sh(&format!("ip -n {} link del {host}", o.overlay.node_ns(1)))?;
    (o.cni(&a.env("CHECK"), &stdin(&conf, &prev))?).refused(101, host)?;
    // DEL still cleans up.
    (o.cni(&a.env("DEL"), &stdin(&conf, &prev))?).ok()?;
    Ok(())
}

#[test]
fn gc_removes_what_is_not_in_the_valid_list() -> Result<()> {
    let mut o = CniBed::start("cn")?;
    let conf = o.list("1.1.0", "uber-net");
    let other_conf = o.list("1.1.0", "uber-net-too");
    let mut hosts = Vec::new();
    let mut all = Vec::new();
    for (id, conf) in [
        ("c1", &conf),
        ("c2", &conf),
        ("c3", &conf),
        ("c4", &other_conf),
    ] {
        let a = o.attachment(&format!("gc{id}"))?;
        let r = o.cni(&a.env("ADD"), &stdin(conf, &json!({})))?;
        (r).ok()?;
        hosts.push(
            r.json()?["interfaces"][0]["name"]
                .as_str()
                .context("host")?
                .to_owned(),
        );
        all.push(a);
    }
    let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", DEBIAN_CNI_PLUGINS)];
    let valid = json!({"cni.dev/valid-attachments": [
        {"containerID": all[0].container_id, "ifname": "eth0"}
    ]});
    for _ in 0..2 {
        (o.cni(&gc_env, &stdin(&conf, &valid))?).ok()?;
    }
    let present: Vec<bool> = hosts.iter().map(|h| o.host_link_exists(h)).collect();
    ensure!(
        present == [true, false, false, true],
        "kept: the valid one and the other configuration's; {present:?}"
    );
    for (a, kept) in all.iter().zip(present) {
        ensure!(
            o.agent_knows(&a.container_id)? == kept,
            "{}",
            a.container_id
        );
    }
    Ok(())
}

#[test]
fn with_the_agent_down_add_says_try_later_and_del_still_works() -> Result<()> {
    let mut o = CniBed::start("cn")?;
    let conf = o.list("1.1.0", "uber-net");
    let socket = o.overlay.scenario.names.socket(1);
    let kept = o.attachment("d1")?;
    let deleted = o.attachment("d2")?;
    let mut hosts = Vec::new();
    for a in [&kept, &deleted] {
        let r = o.cni(&a.env("ADD"), &stdin(&conf, &json!({})))?;
        (r).ok()?;
        hosts.push(
            r.json()?["interfaces"][0]["name"]
                .as_str()
                .context("host")?
                .to_owned(),
        );
    }
    // kill -9: the dataplane stays, nothing answers on the socket.
    let left = o.overlay.agents.remove(0).kill()?;
    let late = o.attachment("d3")?;
    (o.cni(&late.env("ADD"), &stdin(&conf, &json!({})))?)
        .refused(11, &socket.display().to_string())?;
    (o.cni(&[("CNI_COMMAND", "STATUS")], &stdin(&conf, &json!({})))?).refused(51, "agent")?;
    for _ in 0..2 {
        (o.cni(&deleted.env("DEL"), &stdin(&conf, &json!({})))?).ok()?;
    }
    ensure!(
        sh(&format!("ip -n {} link show eth0", deleted.ns_name())).is_err(),
        "DEL deleted the container's interface itself"
    );
    ensure!(!o.host_link_exists(&hosts[1]), "and its veth pair with it");
    // The next agent carries out the queued detach instead of making the
    // attachment again from its state file.
    o.overlay.agents.insert(
        0,
        left.restart(
            &o.overlay.node_ns(1),
            &o.overlay.binary,
            &o.overlay.config_path(1),
            &[],
        )?,
    );
    ensure!(
        !o.agent_knows(&deleted.container_id)?,
        "the queued detach was carried out"
    );
    ensure!(!o.host_link_exists(&hosts[1]));
    ensure!(
        o.agent_knows(&kept.container_id)?,
        "the other attachment stays"
    );
    reaches_c2(kept.ns_name())?;
    ensure!(
        !socket
            .with_extension("offline")
            .join(format!("{}:eth0.json", deleted.container_id))
            .exists(),
        "the queue is empty"
    );
    (o.cni(&late.env("ADD"), &stdin(&conf, &json!({})))?).ok()?;
    Ok(())
}

#[test]
fn chained_with_portmap_the_result_passes_through() -> Result<()> {
    let mut o = CniBed::start("cn")?;
    let chain = conflist(
        "1.0.0",
        "uber-net",
        &[
            overlay_plugin(UBER_NET.name, &o.overlay.scenario.names.socket(1)),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ],
    );
    let portmap = Path::new(DEBIAN_CNI_PLUGINS).join("portmap");
    let a = o.attachment("p1")?;
    let added = o.cni(&a.env("ADD"), &plugin_stdin(&chain, 0, &json!({})))?;
    (added).ok()?;
    let ours = added.json()?;
    let mappings =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let after_portmap = run_plugin(
        &portmap,
        &o.overlay.node_ns(1),
        &a.env("ADD"),
        &plugin_stdin(
            &chain,
            1,
            &json!({"prevResult": ours, "runtimeConfig": mappings}),
        ),
    )?;
    (after_portmap).ok()?;
    let final_result = after_portmap.json()?;
    ensure!(
        final_result == ours,
        "portmap passes our result on: {final_result} vs {ours}"
    );
    let address = ours["ips"][0]["address"].as_str().context("address")?;
    let ip = address.split('/').next().context("ip")?;
    let nat = sh(&format!(
        "ip netns exec {} iptables -w -t nat -S",
        o.overlay.node_ns(1)
    ))?;
    ensure!(
        nat.contains(&format!("{ip}:80")),
        "portmap's DNAT to {ip}:80: {nat}"
    );
    // CHECK and DEL get the chain's final result, DEL in reverse order.
    let prev = json!({"prevResult": final_result, "runtimeConfig": mappings});
    (o.cni(&a.env("CHECK"), &plugin_stdin(&chain, 0, &prev))?).ok()?;
    (run_plugin(
        &portmap,
        &o.overlay.node_ns(1),
        &a.env("DEL"),
        &plugin_stdin(&chain, 1, &prev),
    )?)
    .ok()?;
    (o.cni(&a.env("DEL"), &plugin_stdin(&chain, 0, &prev))?).ok()?;

    // After a plugin that reported something already, ours is appended.
    let b = o.attachment("p2")?;
    let earlier = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": b.netns}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}], "dns": {}});
    let r = o.cni(
        &b.env("ADD"),
        &plugin_stdin(&chain, 0, &json!({"prevResult": earlier})),
    )?;
    (r).ok()?;
    let r = r.json()?;
    ensure!(
        r["interfaces"][0]["name"] == "lo" && r["interfaces"][2]["name"] == "eth0",
        "{r}"
    );
    ensure!(
        r["ips"][0]["address"] == "127.0.0.1/8" && r["ips"][1]["interface"] == 2,
        "{r}"
    );
    (o.cni(
        &b.env("CHECK"),
        &plugin_stdin(&chain, 0, &json!({"prevResult": r})),
    )?)
    .ok()?;
    Ok(())
}
