//! Config validation: each bad input is refused with the file, the field and the
//! problem, and the system is left untouched.

mod common;

use anyhow::{Result, ensure};
use common::{C1, Overlay};
use overlay_tests::{Agent, overlay_binary, sh, write_config};

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
    let o = Overlay::build("tc")?;
    let good = o.node_config(1, &[]);
    let c1_ns = o.ns(C1);
    let cases: Vec<(&str, String, String)> = vec![
        (
            "unknown key",
            good.replacen("decap = ", "colour = \"blue\"\ndecap = ", 1),
            "unknown field `colour`".into(),
        ),
        (
            "VNI too large",
            good.replacen("vni = 4097", "vni = 16777216", 1),
            "network[0].vni: 16777216 is outside 1..=16777215".into(),
        ),
        (
            "VNI zero",
            good.replacen("vni = 4097", "vni = 0", 1),
            "network[0].vni: 0 is outside 1..=16777215".into(),
        ),
        (
            "IP outside subnet",
            good.replacen("ip = \"10.0.0.3\"", "ip = \"10.9.0.3\"", 1),
            "endpoint[0].ip: 10.9.0.3 is outside network \"uber-net\"'s subnet 10.0.0.0/24".into(),
        ),
        (
            "duplicate IP",
            good.replacen("ip = \"10.0.0.5\"", "ip = \"10.0.0.3\"", 1),
            "is already used by endpoint[0]".into(),
        ),
        (
            "duplicate MAC",
            good.replacen(
                "mac = \"02:42:0a:00:00:04\"",
                "mac = \"02:42:0a:00:00:03\"",
                1,
            ),
            "mac: 02:42:0a:00:00:03 is already used by endpoint[0]".into(),
        ),
        (
            "two networks, one VNI",
            good.replacen("vni = 4098", "vni = 4097", 1),
            "network[1].vni: 4097 is already the VNI of network \"uber-net\"".into(),
        ),
        (
            "unknown network",
            good.replacen(
                "network = \"uber-net\"\nnetns",
                "network = \"nope\"\nnetns",
                1,
            ),
            "endpoint[0].network: no network named \"nope\"".into(),
        ),
        (
            "missing netns",
            good.replacen(&format!("netns = \"{c1_ns}\""), "netns = \"no-such-ns\"", 1),
            "endpoint[0].netns: network namespace \"no-such-ns\" does not exist".into(),
        ),
        (
            "missing underlay",
            good.replacen("underlay = \"eth0\"", "underlay = \"eth9\"", 1),
            "underlay: no interface \"eth9\"".into(),
        ),
        (
            "VTEP not on the underlay",
            good.replacen(
                "underlay = \"eth0\"",
                "underlay = \"eth0\"\nvtep = \"172.31.1.99\"",
                1,
            ),
            "vtep: 172.31.1.99 is not an address of eth0".into(),
        ),
        (
            "MTU too large",
            good.replacen(
                "subnet = \"10.0.0.0/24\"",
                "subnet = \"10.0.0.0/24\"\nmtu = 1480",
                1,
            ),
            "network[0].mtu: 1480 does not fit".into(),
        ),
    ];
    let before = system_state(&o)?;
    for (what, text, expected) in cases {
        let path = write_config(o.dir.path(), "bad.toml", &text)?;
        let (status, stderr) =
            Agent::run_to_completion(&o.node_ns(1), &overlay_binary()?, &path, &o.pin_dir(1), &[])?;
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
    let o = Overlay::build("tc")?;
    let path = o.dir.path().join("absent.toml");
    let (status, stderr) =
        Agent::run_to_completion(&o.node_ns(1), &overlay_binary()?, &path, &o.pin_dir(1), &[])?;
    ensure!(
        !status.success() && stderr.contains("cannot read the file"),
        "{stderr}"
    );
    Ok(())
}
