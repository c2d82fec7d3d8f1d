//! Network options through the API (as Docker's `network create` and CNI
//! configurations carry them): each refused one gets its error and changes
//! nothing; accepted ones are kept cluster-wide and honoured by allocation.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Decap, Overlay,
    scenario::{C2, state_dir_for},
    sh,
};
use overlay_userspace::api::proto::NetworkList;

/// The agent's view that a refused request must leave as it was: the
/// networks, and the state file (its snapshot and journal).
fn footprint(o: &Overlay) -> Result<(String, String)> {
    let networks = o.cli(1, &["network", "ls", "--json"])?;
    let dir = state_dir_for(&o.pin_dir(1));
    let state = std::fs::read_to_string(dir.join("state.json"))?
        + &std::fs::read_to_string(dir.join("state.journal")).unwrap_or_default();
    Ok((networks, state))
}

#[test]
fn network_options_are_checked_and_a_refusal_changes_nothing() -> Result<()> {
    let mut o = Overlay::build_with(Decap::Tc, &[C2])?;
    o.start_agent(1)?;
    let create = |extra: &[&str]| -> Result<String> {
        let mut args = vec!["network", "create", "blue"];
        args.extend(extra);
        o.cli(1, &args)
    };
    let before = footprint(&o)?;
    for (extra, expected) in [
        (
            vec!["--subnet", "10.0.0.0/16"],
            "subnet: 10.0.0.0/16 overlaps network \"uber-net\"'s subnet 10.0.0.0/24",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--vni", "4097"],
            "vni: VNI 4097 is already network uber-net's",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--vni", "0"],
            "vni: VNI 0 is outside",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--gateway", "10.6.0.1"],
            "gateway: 10.6.0.1 is outside network \"blue\"'s subnet",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--gateway", "10.5.0.255"],
            "gateway: 10.5.0.255 is the network or broadcast address",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--aux-address", "10.5.0.1"],
            "aux_addresses[0]: 10.5.0.1 is the gateway already",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--aux-address", "10.7.0.1"],
            "aux_addresses[0]: 10.7.0.1 is outside",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--mtu", "1480"],
            "mtu: 1480 does not fit",
        ),
        (
            vec!["--subnet", "10.5.0.0/24", "--mtu", "40"],
            "mtu: 40 is outside 68..=65535",
        ),
        (
            vec!["--subnet", "10.5.0.9/24"],
            "subnet: \"10.5.0.9/24\" has host bits set",
        ),
    ] {
        let err = create(&extra).expect_err(expected);
        ensure!(format!("{err:#}").contains(expected), "{extra:?}: {err:#}");
        ensure!(footprint(&o)? == before, "{extra:?} changed something");
    }
    // Accepted: an allocated VNI, the options as given, and the addresses
    // they keep are never handed out.
    create(&[
        "--subnet",
        "10.5.0.0/24",
        "--gateway",
        "10.5.0.254",
        "--aux-address",
        "10.5.0.2",
        "--mtu",
        "1400",
        "--internal",
    ])?;
    let list: NetworkList = serde_json::from_str(&o.cli(1, &["network", "ls", "--json"])?)?;
    let blue = list
        .networks
        .iter()
        .find(|n| n.name == "blue")
        .context("blue")?;
    ensure!(blue.vni >= 1 << 20, "an allocated VNI: {blue:?}");
    ensure!(
        blue.gateway == Ipv4Addr::new(10, 5, 0, 254) && blue.mtu == 1400 && blue.internal,
        "{blue:?}"
    );
    let mut given = Vec::new();
    for name in ["x1", "x2"] {
        let ns = o.topology.container(name)?.name.clone();
        let out: serde_json::Value = serde_json::from_str(&o.cli(
            1,
            &[
                "endpoint",
                "add",
                "--network",
                "blue",
                "--netns",
                &ns,
                "--json",
            ],
        )?)?;
        given.push(out["ip"].as_str().context("ip")?.to_owned());
        let routes = sh(&format!("ip -n {ns} route"))?;
        ensure!(
            !routes.contains("default"),
            "internal: no default route: {routes}"
        );
    }
    ensure!(
        given == ["10.5.0.1", "10.5.0.3"],
        "the aux address is skipped: {given:?}"
    );
    let ns = o.topology.container("x3")?.name.clone();
    for (extra, expected) in [
        (
            vec!["--ip", "10.5.0.254"],
            "10.5.0.254 is network \"blue\"'s gateway",
        ),
        (vec!["--ip", "10.5.0.2"], "10.5.0.2 is an auxiliary address"),
        (
            vec!["--ip", "10.0.0.1", "--network", "uber-net"],
            "is network \"uber-net\"'s gateway",
        ),
    ] {
        let mut args = vec!["endpoint", "add", "--netns", &ns];
        if !extra.contains(&"--network") {
            args.extend(["--network", "blue"]);
        }
        args.extend(&extra);
        let err = o.cli(1, &args).expect_err(expected);
        ensure!(format!("{err:#}").contains(expected), "{extra:?}: {err:#}");
        ensure!(
            sh(&format!("ip -n {ns} link show eth0")).is_err(),
            "nothing was plumbed"
        );
    }
    let err = o
        .cli(
            1,
            &[
                "endpoint",
                "add",
                "--network",
                "blue",
                "--netns",
                "/run/netns/no-such",
            ],
        )
        .expect_err("a missing namespace path");
    ensure!(
        format!("{err:#}").contains("network namespace /run/netns/no-such does not exist"),
        "{err:#}"
    );
    Ok(())
}
