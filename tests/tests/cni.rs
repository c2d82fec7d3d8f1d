//! The CNI plugin, run as the spec says a runtime runs it (a clean
//! environment with the CNI variables, the configuration on stdin, inside the
//! node's namespace), against real agents: VERSION, ADD, CHECK and DEL in
//! every version, STATUS, and every error code for a bad environment, a bad
//! configuration, an unknown network or what exists already. What follows an
//! ADD (DEL however things stand, CHECK against the system, GC, chaining) is
//! `cni_cleanup`.

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Netns,
    cni::{
        CniAttachment, CniBed, DEBIAN_CNI_PLUGINS, cni_binary, plugin_stdin, reaches_c2, run_plugin,
    },
    scenario::UBER_NET,
    sh, unique_prefix,
};
use serde_json::{Value, json};

/// The first plugin of `list`, with `extra` merged into its configuration.
fn stdin(list: &Value, extra: &Value) -> Vec<u8> {
    plugin_stdin(list, 0, extra)
}

#[test]
fn version_answers_in_the_version_asked_for() -> Result<()> {
    let ns = Netns::create(&unique_prefix("cnv"))?;
    let plugin = cni_binary()?;
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let reply = run_plugin(
            &plugin,
            &ns.name,
            &[("CNI_COMMAND", "VERSION")],
            json!({ "cniVersion": version }).to_string().as_bytes(),
        )?;
        (reply).ok()?;
        let v = reply.json()?;
        ensure!(v["cniVersion"] == version, "{v}");
        let supported = v["supportedVersions"].as_array().context("a list")?;
        for wanted in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            ensure!(supported.contains(&json!(wanted)), "{wanted} in {v}");
        }
    }
    // Podman's probe sends dummy values with it; they do not matter.
    let reply = run_plugin(
        &plugin,
        &ns.name,
        &[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_CONTAINERID", "dummy"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
        ],
        b"",
    )?;
    (reply).ok()?;
    ensure!(reply.json()?["cniVersion"] == "1.1.0");
    Ok(())
}

/// An invocation the plugin must refuse, and how.
struct Refused {
    what: &'static str,
    env: Vec<(&'static str, &'static str)>,
    stdin: String,
    code: u64,
    names: &'static str,
}

#[test]
fn a_bad_environment_or_configuration_gets_the_spec_code() -> Result<()> {
    let ns = Netns::create(&unique_prefix("cne"))?;
    let plugin = cni_binary()?;
    let good = json!({"cniVersion": "1.0.0", "name": "uber-net", "type": "overlay-cni",
        "socket": "/run/overlay-tests/nobody/api.sock"});
    let with = |key: &str, value: Value| {
        let mut conf = good.clone();
        conf[key] = value;
        conf.to_string()
    };
    let add: Vec<(&str, &str)> = vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-1"),
        ("CNI_NETNS", "/run/netns/nothing"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", DEBIAN_CNI_PLUGINS),
    ];
    let env = |var: &'static str, value: Option<&'static str>| {
        let mut env: Vec<_> = add.iter().copied().filter(|(k, _)| *k != var).collect();
        env.extend(value.map(|v| (var, v)));
        env
    };
    let case = |what, env, stdin: String, code, names| Refused {
        what,
        env,
        stdin,
        code,
        names,
    };
    let g = || good.to_string();
    let cases = [
        case(
            "no command",
            env("CNI_COMMAND", None),
            g(),
            4,
            "CNI_COMMAND",
        ),
        case(
            "an unknown command",
            env("CNI_COMMAND", Some("RUN")),
            g(),
            4,
            "CNI_COMMAND",
        ),
        case(
            "ADD without a namespace",
            env("CNI_NETNS", None),
            g(),
            4,
            "CNI_NETNS",
        ),
        case(
            "DEL without an ifname",
            vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "ctr-1")],
            g(),
            4,
            "CNI_IFNAME",
        ),
        case(
            "GC without CNI_PATH",
            vec![("CNI_COMMAND", "GC")],
            g(),
            4,
            "CNI_PATH",
        ),
        case(
            "a bad container ID",
            env("CNI_CONTAINERID", Some("../x")),
            g(),
            4,
            "CNI_CONTAINERID",
        ),
        case(
            "a bad ifname",
            env("CNI_IFNAME", Some("eth:0")),
            g(),
            4,
            "CNI_IFNAME",
        ),
        case(
            "a relative namespace",
            env("CNI_NETNS", Some("netns-1")),
            g(),
            4,
            "CNI_NETNS",
        ),
        case(
            "unknown CNI_ARGS",
            env("CNI_ARGS", Some("COLOR=blue")),
            g(),
            4,
            "COLOR",
        ),
        case(
            "stdin not JSON",
            add.clone(),
            "{\"cniVersion\":".into(),
            6,
            "not JSON",
        ),
        case(
            "an old version",
            add.clone(),
            with("cniVersion", json!("0.2.0")),
            1,
            "0.2.0",
        ),
        case(
            "no version",
            add.clone(),
            json!({"name": "n"}).to_string(),
            1,
            "cniVersion",
        ),
        case(
            "no name",
            add.clone(),
            json!({"cniVersion": "1.0.0"}).to_string(),
            7,
            "name",
        ),
        case(
            "an unknown key",
            add.clone(),
            with("sokcet", json!("/x.sock")),
            2,
            "sokcet",
        ),
        case(
            "ipam",
            add.clone(),
            with("ipam", json!({"type": "host-local"})),
            2,
            "ipam",
        ),
        case(
            "IPv6",
            add.clone(),
            with("runtimeConfig", json!({"ips": ["fd00::5/64"]})),
            2,
            "IPv4",
        ),
        case(
            "a bad MAC",
            add.clone(),
            with("runtimeConfig", json!({"mac": "zz"})),
            7,
            "mac",
        ),
        case(
            "a bad prevResult",
            add.clone(),
            with("prevResult", json!({"ips": 1})),
            7,
            "ips",
        ),
        case(
            "CHECK in 0.3.1",
            env("CNI_COMMAND", Some("CHECK")),
            with("cniVersion", json!("0.3.1")),
            1,
            "CHECK",
        ),
        case(
            "STATUS in 1.0.0",
            vec![("CNI_COMMAND", "STATUS")],
            g(),
            1,
            "STATUS",
        ),
        case(
            "GC without the valid list",
            vec![("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            with("cniVersion", json!("1.1.0")),
            7,
            "valid-attachments",
        ),
        case(
            "a namespace that is not there",
            add.clone(),
            g(),
            3,
            "/run/netns/nothing",
        ),
    ];
    for c in cases {
        let reply = run_plugin(&plugin, &ns.name, &c.env, c.stdin.as_bytes())?;
        (reply).refused(c.code, c.names).with_context(|| c.what)?;
    }
    Ok(())
}

/// The result of ADD, as the spec lays it out for `version`.
fn check_result(o: &CniBed, version: &str, a: &CniAttachment, r: &Value) -> Result<()> {
    ensure!(r["cniVersion"] == version, "{r}");
    let interfaces = r["interfaces"].as_array().context("interfaces")?;
    ensure!(interfaces.len() == 2, "host veth and eth0: {r}");
    let host = interfaces[0]["name"].as_str().context("a host name")?;
    ensure!(o.host_link_exists(host), "{host} exists on node1");
    ensure!(interfaces[0].get("sandbox").is_none(), "{r}");
    ensure!(
        interfaces[1]["name"] == "eth0" && interfaces[1]["sandbox"] == a.netns.as_str(),
        "{r}"
    );
    let ip = &r["ips"][0];
    let address = ip["address"].as_str().context("an address")?;
    ensure!(
        address.starts_with("10.0.0.") && address.ends_with("/24"),
        "{r}"
    );
    ensure!(
        ip["gateway"] == UBER_NET.gateway().to_string() && ip["interface"] == 1,
        "{r}"
    );
    ensure!(
        (version == "0.4.0") == (ip.get("version") == Some(&json!("4"))),
        "an IP's version field is 0.4.0's only: {r}"
    );
    ensure!(
        (version == "1.1.0") == interfaces[1].get("mtu").is_some(),
        "an interface's mtu is 1.1.0's only: {r}"
    );
    ensure!(
        r["routes"] == json!([{"dst": "0.0.0.0/0", "gw": UBER_NET.gateway().to_string()}]),
        "{r}"
    );
    let inside = sh(&format!(
        "ip -n {ns} -4 -o addr show dev eth0; ip -n {ns} route",
        ns = a.ns_name()
    ))?;
    ensure!(
        inside.contains(address) && inside.contains("default via 10.0.0.1"),
        "{inside}"
    );
    Ok(())
}

#[test]
fn add_check_del_in_every_version() -> Result<()> {
    let mut o = CniBed::start("cn")?;
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let conf = o.list(version, "uber-net");
        let a = o.attachment(&format!("v{}", version.replace('.', "")))?;
        let added = o.cni(&a.env("ADD"), &stdin(&conf, &json!({})))?;
        (added).ok()?;
        let result = added.json()?;
        check_result(&o, version, &a, &result).with_context(|| version.to_owned())?;
        reaches_c2(a.ns_name())?;
        let with_prev = stdin(&conf, &json!({ "prevResult": result }));
        let checked = o.cni(&a.env("CHECK"), &with_prev)?;
        (checked).ok()?;
        ensure!(
            checked.stdout.is_empty(),
            "CHECK prints nothing: {checked:?}"
        );
        if version == "1.1.0" {
            (o.cni(&[("CNI_COMMAND", "STATUS")], &stdin(&conf, &json!({})))?).ok()?;
        }
        let host = result["interfaces"][0]["name"]
            .as_str()
            .context("host")?
            .to_owned();
        for _ in 0..2 {
            let deleted = o.cni(&a.env("DEL"), &with_prev)?;
            (deleted).ok()?;
            ensure!(deleted.stdout.is_empty(), "DEL prints nothing: {deleted:?}");
        }
        ensure!(!o.host_link_exists(&host), "{host} is gone after DEL");
        ensure!(
            !o.agent_knows(&a.container_id)?,
            "the agent forgot {}",
            a.container_id
        );
        ensure!(
            sh(&format!("ip -n {} link show eth0", a.ns_name())).is_err(),
            "eth0 went with its veth pair"
        );
    }
    Ok(())
}

#[test]
fn add_refuses_unknown_networks_and_what_exists_already() -> Result<()> {
    let mut o = CniBed::start("cn")?;
    let conf = o.list("1.0.0", "uber-net");
    let a = o.attachment("x1")?;
    let mut unknown = conf.clone();
    unknown["plugins"][0]["network"] = json!("no-such-net");
    (o.cni(&a.env("ADD"), &stdin(&unknown, &json!({})))?).refused(7, "no-such-net")?;
    (o.cni(&a.env("ADD"), &stdin(&conf, &json!({})))?).ok()?;
    // The same attachment again; an ifname taken inside the container.
    (o.cni(&a.env("ADD"), &stdin(&conf, &json!({})))?).refused(100, "already has an attachment")?;
    let taken = o.attachment("x3")?;
    sh(&format!(
        "ip -n {} link add eth0 type veth peer name peer0",
        taken.ns_name()
    ))?;
    (o.cni(&taken.env("ADD"), &stdin(&conf, &json!({})))?).refused(100, "interface eth0")?;
    // The node's own namespace is no container's.
    let own = CniAttachment::new(
        "ctr-own",
        &overlay_tests::netns_path(&o.overlay.node_ns(1)),
        "eth9",
    );
    (o.cni(&own.env("ADD"), &stdin(&conf, &json!({})))?).refused(7, "the agent's own")?;
    // An address the runtime asks for (the ips capability).
    let b = o.attachment("x2")?;
    let asked = json!({"runtimeConfig": {"ips": ["10.0.0.200/24"]}});
    let r = o.cni(&b.env("ADD"), &stdin(&conf, &asked))?;
    (r).ok()?;
    ensure!(r.json()?["ips"][0]["address"] == "10.0.0.200/24", "{r:?}");
    Ok(())
}

#[test]
fn status_says_whether_add_can_be_served() -> Result<()> {
    let o = CniBed::start("cn")?;
    let env = [("CNI_COMMAND", "STATUS")];
    (o.cni(&env, &stdin(&o.list("1.1.0", "uber-net"), &json!({})))?).ok()?;
    let mut unknown = o.list("1.1.0", "uber-net");
    unknown["plugins"][0]["network"] = json!("nowhere");
    (o.cni(&env, &stdin(&unknown, &json!({})))?).refused(50, "nowhere")?;
    Ok(())
}
