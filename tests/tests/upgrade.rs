//! Upgrades without loss: an agent of another version takes over a running
//! dataplane, swaps every program in place (TCX/XDP links updated, netlink
//! filters replaced) and migrates a map whose shape changed, under a ping that
//! must lose nothing; or refuses, naming the reason, and leaves the dataplane
//! as it was. The other version is `overlay-upgrade-variant`: the same agent
//! whose eBPF object has other program code and a FDB of half the size, and
//! which attaches endpoints as agents before netlink endpoint filters did (TCX
//! links from 6.6).

mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, ensure};
use aya::{EbpfLoader, maps::MapData, programs::SchedClassifier};
use overlay_common::{MAX_FDB_ENTRIES, map_names, program_names};
use overlay_tests::{
    Agent, Decap, LeftDataplane, Overlay, Pinger, ping,
    scenario::{C1, C2, C3},
    sh, upgrade_variant_binary,
};

/// The programs node `node`'s attachments run: its pinned links' (TCX, XDP)
/// and its netlink filters' (kernels before TCX).
fn attached_programs(o: &Overlay, node: u8) -> Result<BTreeSet<u64>> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(o.pin_dir(node).join("links"))? {
        let path = entry?.path();
        if path.is_file() {
            let link: serde_json::Value = serde_json::from_str(&sh(&format!(
                "bpftool -j link show pinned {}",
                path.display()
            ))?)?;
            ids.extend(link["prog_id"].as_u64());
        }
    }
    for filter in common::netlink_tc_filters(&o.node_ns(node))? {
        ids.extend(filter["id"].as_u64());
    }
    ensure!(!ids.is_empty(), "nothing is attached on node{node}");
    Ok(ids)
}

fn fdb_capacity(pin_dir: &Path) -> Result<u32> {
    Ok(MapData::from_pin(pin_dir.join(map_names::FDB))?
        .info()?
        .max_entries())
}

/// When each step of a hand-over was done, to tell which one lost an echo.
type Events = Vec<(&'static str, SystemTime)>;

/// Stops node1's agent leaving its dataplane, and starts `binary` on it.
fn hand_over(o: &mut Overlay, binary: &Path, events: &mut Events) -> Result<()> {
    let agent = o.agents.remove(0);
    events.push(("stopping", SystemTime::now()));
    let left: LeftDataplane = agent.stop_keeping()?;
    events.push(("stopped", SystemTime::now()));
    std::thread::sleep(Duration::from_millis(300));
    let next = left.restart(&o.node_ns(1), binary, &o.config_path(1), &["--keep"])?;
    events.push(("ready", SystemTime::now()));
    o.agents.insert(0, next);
    Ok(())
}

/// Waits until node1's attachments all run its current agent's programs.
fn wait_swapped(o: &Overlay) -> Result<BTreeSet<u64>> {
    let held = o.agents[0].programs()?;
    overlay_tests::wait_until(Duration::from_secs(10), "every hook swapped", || {
        Ok(attached_programs(o, 1)?.is_subset(&held))
    })?;
    Ok(held)
}

fn upgrade_and_back(decap: Decap) -> Result<()> {
    let mut o = Overlay::build_with(decap, &[C1, C2])?;
    o.start_agent_with(1, &["--keep"])?;
    o.start_agent(2)?;
    let first = o.agents[0].programs()?;
    ensure!(attached_programs(&o, 1)?.is_subset(&first));
    ensure!(fdb_capacity(&o.pin_dir(1))? == MAX_FDB_ENTRIES);
    let pinger = Pinger::start(&o.ns(C1), &C2.ip.to_string(), Duration::from_millis(10))?;
    std::thread::sleep(Duration::from_millis(500));

    let mut events = Events::new();
    hand_over(&mut o, &upgrade_variant_binary()?, &mut events)?;
    let second = wait_swapped(&o)?;
    events.push(("swapped", SystemTime::now()));
    let variant_log = o.agents[0].stderr();
    ensure!(
        first.is_disjoint(&second),
        "the variant runs programs of its own"
    );
    ensure!(
        fdb_capacity(&o.pin_dir(1))? == MAX_FDB_ENTRIES / 2,
        "FDB was migrated to the variant's size"
    );
    ensure!(!o.pin_dir(1).join("migrating").exists());
    ensure!(variant_log.contains("migrating it"), "{variant_log}");
    ensure!(variant_log.contains("swapped"), "{variant_log}");
    std::thread::sleep(Duration::from_millis(500));

    // And back, which migrates FDB again.
    let first_binary = o.binary.clone();
    hand_over(&mut o, &first_binary, &mut events)?;
    wait_swapped(&o)?;
    events.push(("swapped back", SystemTime::now()));
    ensure!(fdb_capacity(&o.pin_dir(1))? == MAX_FDB_ENTRIES);
    std::thread::sleep(Duration::from_millis(500));

    let log = pinger.stop()?;
    println!(
        "[{decap}] upgrade and back under a ping every 10 ms: {} of {} echoes lost; counters node1 {:?} node2 {:?}",
        log.lost(),
        log.transmitted,
        o.nonzero_counters(1)?,
        o.nonzero_counters(2)?
    );
    ensure!(
        log.lost() == 0,
        "{} of {} echoes lost across two upgrades: {:?} (seq, sent at), gaps {:?}; events {:?}; the \
         variant's log:\n{variant_log}\nthe last agent's log:\n{}",
        log.lost(),
        log.transmitted,
        log.lost_echoes(),
        log.gaps(Duration::from_millis(25)),
        events
            .iter()
            .map(|(what, at)| (
                what,
                at.duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            ))
            .collect::<Vec<_>>(),
        o.agents[0].stderr()
    );
    // Both nodes' tables still carry traffic both ways.
    o.ping_both_ways(C1, C2, 3)?;
    Ok(())
}

#[test]
fn upgrade_swaps_programs_and_migrates_fdb_without_loss_tc() -> Result<()> {
    upgrade_and_back(Decap::Tc)
}

#[test]
fn upgrade_swaps_programs_and_migrates_fdb_without_loss_xdp() -> Result<()> {
    upgrade_and_back(Decap::Xdp)
}

/// node1's endpoint pins in `links/`: (name, whether it is a link rather than
/// a netlink filter's directory).
fn endpoint_pins(o: &Overlay) -> Result<Vec<(String, bool)>> {
    let mut pins = Vec::new();
    for entry in std::fs::read_dir(o.pin_dir(1).join("links"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("endpoint-") {
            pins.push((name, entry.path().is_file()));
        }
    }
    Ok(pins)
}

/// An agent from before endpoints were netlink filters left a TCX link on its
/// endpoint's veth: this build takes the link over and swaps its program in
/// place with no echo lost, and its teardown removes the adopted link with
/// everything else.
#[test]
fn upgrade_takes_over_tcx_endpoint_links() -> Result<()> {
    let mut o = Overlay::build_with(Decap::Tc, &[C1, C2])?;
    let this_build = std::mem::replace(&mut o.binary, upgrade_variant_binary()?);
    o.start_agent_with(1, &["--keep"])?;
    o.binary = this_build.clone();
    o.start_agent(2)?;
    let variant_log = o.agents[0].stderr();
    let tcx = variant_log.contains("attaches as a TCX link");
    let left_by_variant = endpoint_pins(&o)?;
    ensure!(
        left_by_variant.len() == 1 && left_by_variant[0].1 == tcx,
        "the variant's endpoint attachment is a {} (pins {left_by_variant:?}):\n{variant_log}",
        if tcx { "TCX link" } else { "netlink filter" }
    );
    let pinger = Pinger::start(&o.ns(C1), &C2.ip.to_string(), Duration::from_millis(10))?;
    std::thread::sleep(Duration::from_millis(500));

    let left = o.agents.remove(0).stop_keeping()?;
    let agent = left.restart(&o.node_ns(1), &this_build, &o.config_path(1), &[])?;
    o.agents.insert(0, agent);
    wait_swapped(&o)?;
    ensure!(
        endpoint_pins(&o)? == left_by_variant,
        "the endpoint's attachment was taken over as it was"
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = pinger.stop()?;
    ensure!(
        log.lost() == 0,
        "{} of {} echoes lost across the take-over: {:?}; the agent's log:\n{}",
        log.lost(),
        log.transmitted,
        log.lost_echoes(),
        o.agents[0].stderr()
    );

    // `stop` also fails if the pins (the adopted link's among them) are left.
    let status = o.agents.remove(0).stop()?;
    ensure!(status.success(), "the agent's teardown failed: {status}");
    let filters = common::netlink_tc_filters(&o.node_ns(1))?;
    ensure!(filters.is_empty(), "filters left on node1: {filters:?}");
    Ok(())
}

/// A program this agent did not attach shares the FDB the upgrade must
/// replace: the agent refuses, names the map and the program, and the
/// dataplane runs on as it was.
#[test]
fn upgrade_refuses_while_another_program_uses_a_changed_map() -> Result<()> {
    let mut o = Overlay::build_with(Decap::Tc, &[C1, C3])?;
    o.start_agent_with(1, &["--keep"])?;
    let before = attached_programs(&o, 1)?;
    let fdb = o.pin_dir(1).join(map_names::FDB);
    let mut loader = EbpfLoader::new();
    loader.map_pin_path(map_names::FDB, fdb.as_path());
    // Another loader's program on our FDB (kept loaded while `other` lives).
    let mut other = loader
        .load(overlay_userspace::dataplane::ebpf_object())
        .context("loading a program on the pinned FDB")?;
    let program: &mut SchedClassifier = other
        .program_mut(program_names::ENDPOINT_INGRESS)
        .context("no endpoint_ingress")?
        .try_into()?;
    program.load()?;

    let left = o.agents.remove(0).stop_keeping()?;
    let (status, e) = Agent::run_to_completion(
        &o.node_ns(1),
        &upgrade_variant_binary()?,
        &o.config_path(1),
        left.pin_dir(),
        &[],
    )?;
    ensure!(
        !status.success(),
        "the variant started although FDB has another user"
    );
    // The kernel keeps 15 bytes of a program's name.
    ensure!(
        e.contains("cannot upgrade") && e.contains("FDB") && e.contains("endpoint_ingres"),
        "{e}"
    );
    ensure!(
        attached_programs(&o, 1)? == before,
        "the dataplane was left as it was"
    );
    ensure!(!left.pin_dir().join("migrating").exists());
    let stats = ping(&o.ns(C1), &C3.ip.to_string(), 3, &[])?;
    ensure!(stats.received == 3, "traffic goes on: {stats:?}");
    drop(other);
    // The same version takes over as usual once the other program is gone.
    let agent = left.restart(
        &o.node_ns(1),
        &upgrade_variant_binary()?,
        &o.config_path(1),
        &[],
    )?;
    o.agents.insert(0, agent);
    wait_swapped(&o)?;
    Ok(())
}
