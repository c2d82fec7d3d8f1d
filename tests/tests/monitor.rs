//! `overlay monitor` against running agents: a spoofed frame from a container
//! and a VXLAN injection from an unknown VTEP show with their reason and
//! addresses; filters pick the drops asked for; with no monitor connected the
//! programs write no event, and the monitor flag goes with the last monitor,
//! even a killed one.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use overlay_common::{CONFIG_F_MONITOR, MonitorCpu};
use overlay_tests::{
    Decap, NODE2_VTEP, Overlay, in_netns, inject, overlay_binary,
    prog_run::{eth, ipv4_udp},
    scaled,
    scenario::{C1, C2, UNDERLAY, docker_mac},
    wait_until,
};
use overlay_userspace::dataplane::maps::Maps;
use serde_json::Value;

/// An `overlay monitor` process; killed on drop.
struct MonitorProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl MonitorProcess {
    /// Starts `overlay monitor --json ARGS` against `node`'s agent and waits
    /// until the agent has it registered.
    fn start(o: &Overlay, node: u8, args: &[&str]) -> Result<MonitorProcess> {
        let mut json = vec!["--json"];
        json.extend(args);
        MonitorProcess::start_text(o, node, &json)
    }

    /// Starts `overlay monitor ARGS` (text, unless ARGS say --json).
    fn start_text(o: &Overlay, node: u8, args: &[&str]) -> Result<MonitorProcess> {
        let mut child = Command::new(overlay_binary()?)
            .args(["monitor", "--socket"])
            .arg(o.scenario.names.socket(node.into()))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning overlay monitor")?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (ready_tx, ready) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = ready_tx.send(line);
            }
        });
        let first = ready
            .recv_timeout(scaled(Duration::from_secs(10)))
            .unwrap_or_else(|_| "(nothing within 10 s)".into());
        ensure!(
            first.starts_with("listening for drops"),
            "overlay monitor did not start: {first}"
        );
        Ok(MonitorProcess { child, lines })
    }

    /// The next drop it prints, parsed.
    fn next_drop(&self) -> Result<Value> {
        loop {
            let line = self
                .lines
                .recv_timeout(scaled(Duration::from_secs(10)))
                .context("overlay monitor printed no drop")?;
            let v: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
            if v["type"] == "drop" {
                return Ok(v);
            }
        }
    }

    /// The next line it prints.
    fn next_line(&self) -> Result<String> {
        self.lines
            .recv_timeout(scaled(Duration::from_secs(10)))
            .context("overlay monitor printed nothing")
    }

    /// Whether it prints nothing for a while.
    fn stays_quiet(&self) -> bool {
        self.lines.recv_timeout(Duration::from_millis(500)).is_err()
    }

    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for MonitorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn monitor_flag(pin_dir: &Path) -> Result<bool> {
    let config = Maps::from_pins(pin_dir)?.config.get(&0, 0)?;
    Ok(config.flags & CONFIG_F_MONITOR != 0)
}

fn monitor_totals(pin_dir: &Path) -> Result<MonitorCpu> {
    Maps::from_pins(pin_dir)?.monitor_totals()
}

/// A frame c1 sends from `src` instead of its own address, to c2.
fn spoofed_from_c1(src: Ipv4Addr) -> Vec<u8> {
    eth(
        mac_bytes(&C2.mac()),
        mac_bytes(&C1.mac()),
        0x0800,
        &ipv4_udp(src, C2.ip, 40000, 7777, b"spoofed"),
    )
}

fn mac_bytes(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("a MAC from the scenario");
    }
    mac
}

/// The ENDPOINTS key of c1's veth on node1.
fn c1_ifindex(o: &Overlay) -> Result<u64> {
    let endpoints = o.table(1, "endpoints")?;
    endpoints
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["ip"] == C1.ip.to_string()))
        .and_then(|r| r["ifindex"].as_u64())
        .context("c1 has no ENDPOINTS entry")
}

#[test]
fn a_spoofed_frame_shows_with_its_reason_and_addresses() -> Result<()> {
    let o = Overlay::start(Decap::Tc)?;
    let monitor = MonitorProcess::start(&o, 1, &["--reason", "drop_spoofed_ip"])?;
    let spoofed = Ipv4Addr::new(10, 0, 0, 66);
    inject(&o.ns(C1), "eth0", vec![spoofed_from_c1(spoofed)])?;
    let drop = monitor.next_drop()?;
    ensure!(drop["reason"] == "drop_spoofed_ip", "{drop}");
    ensure!(drop["hook"] == "endpoint", "{drop}");
    ensure!(drop["ifindex"].as_u64() == Some(c1_ifindex(&o)?), "{drop}");
    ensure!(
        drop["interface"]
            .as_str()
            .is_some_and(|i| i.starts_with("ov")),
        "the interface is c1's host-side veth, by name: {drop}"
    );
    ensure!(drop["vni"] == C1.network.vni, "{drop}");
    ensure!(drop["outer"].is_null(), "{drop}");
    let inner = &drop["inner"];
    ensure!(
        inner["src_mac"] == C1.mac() && inner["dst_mac"] == C2.mac(),
        "{drop}"
    );
    ensure!(inner["src_ip"] == spoofed.to_string(), "{drop}");
    ensure!(inner["dst_ip"] == C2.ip.to_string(), "{drop}");
    ensure!(
        inner["l4"] == "udp" && inner["src_port"] == 40000 && inner["dst_port"] == 7777,
        "{drop}"
    );
    ensure!(
        drop["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{drop}"
    );
    Ok(())
}

#[test]
fn vxlan_from_an_unknown_vtep_shows_the_outer_source() -> Result<()> {
    let o = Overlay::start(Decap::Tc)?;
    let monitor = MonitorProcess::start(&o, 2, &["--reason", "drop_unknown_vtep"])?;
    // The router is on node2's segment but is no VTEP of the cluster.
    let inner = eth(
        mac_bytes(&C2.mac()),
        mac_bytes(&docker_mac(Ipv4Addr::new(10, 0, 0, 99))),
        0x0800,
        &ipv4_udp(Ipv4Addr::new(10, 0, 0, 99), C2.ip, 1234, 80, b"injected"),
    );
    let mut vxlan = vec![0x08, 0, 0, 0];
    vxlan.extend_from_slice(&C2.network.vni.to_be_bytes()[1..]);
    vxlan.push(0);
    vxlan.extend_from_slice(&inner);
    let router = o.topology.router().to_owned();
    in_netns(&router, move || {
        let socket = UdpSocket::bind("192.168.1.1:40001")?;
        socket.send_to(&vxlan, (NODE2_VTEP, 4789))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let drop = monitor.next_drop()?;
    ensure!(
        drop["reason"] == "drop_unknown_vtep" && drop["hook"] == "tc",
        "{drop}"
    );
    ensure!(
        drop["interface"] == UNDERLAY && drop["vni"] == C2.network.vni,
        "{drop}"
    );
    let outer = &drop["outer"];
    ensure!(
        outer["src_ip"] == "192.168.1.1" && outer["dst_ip"] == NODE2_VTEP,
        "{drop}"
    );
    ensure!(
        outer["src_port"] == 40001 && outer["dst_port"] == 4789,
        "{drop}"
    );
    let inner = &drop["inner"];
    ensure!(
        inner["src_ip"] == "10.0.0.99" && inner["dst_ip"] == C2.ip.to_string(),
        "{drop}"
    );
    ensure!(
        inner["dst_mac"] == C2.mac() && inner["dst_port"] == 80,
        "{drop}"
    );
    Ok(())
}

#[test]
fn filters_pick_the_drops_asked_for_and_text_is_one_line_each() -> Result<()> {
    let o = Overlay::start(Decap::Tc)?;
    let by_ip = MonitorProcess::start(
        &o,
        1,
        &["--ip", "10.0.0.77", "--vni", &C1.network.vni.to_string()],
    )?;
    let other_vni = MonitorProcess::start(&o, 1, &["--vni", "4098"])?;
    let mut text =
        MonitorProcess::start_text(&o, 1, &["--count", "1", "--reason", "drop_spoofed_ip"])?;
    inject(
        &o.ns(C1),
        "eth0",
        vec![
            spoofed_from_c1(Ipv4Addr::new(10, 0, 0, 66)),
            spoofed_from_c1(Ipv4Addr::new(10, 0, 0, 77)),
        ],
    )?;
    let drop = by_ip.next_drop()?;
    ensure!(
        drop["inner"]["src_ip"] == "10.0.0.77",
        "the .66 frame was not filtered out: {drop}"
    );
    ensure!(by_ip.stays_quiet(), "one drop matches, one is shown");
    ensure!(other_vni.stays_quiet(), "no drop in VNI 4098");
    let line = text.next_line()?;
    ensure!(
        wait_for_exit(&mut text.child)?.success(),
        "--count 1 ends the monitor"
    );
    ensure!(text.stays_quiet(), "one line: {line}");
    ensure!(
        line.contains(" drop_spoofed_ip on ov")
            && line.contains(&format!("vni {}", C1.network.vni))
            && line.contains("10.0.0.66:40000 > 10.0.0.4:7777 udp"),
        "{line}"
    );
    Ok(())
}

#[test]
fn nothing_is_written_without_a_monitor_and_the_flag_goes_with_the_last_one() -> Result<()> {
    let o = Overlay::start(Decap::Tc)?;
    let pins = o.pin_dir(1);
    let frames = || vec![spoofed_from_c1(Ipv4Addr::new(10, 0, 0, 66)); 5];
    let before = o.counter(1, "drop_spoofed_ip")?;
    inject(&o.ns(C1), "eth0", frames())?;
    wait_until(scaled(Duration::from_secs(5)), "five drops counted", || {
        Ok(o.counter(1, "drop_spoofed_ip")? == before + 5)
    })?;
    ensure!(
        !monitor_flag(&pins)?,
        "the monitor flag is set with no monitor"
    );
    ensure!(
        monitor_totals(&pins)? == MonitorCpu::default(),
        "events were written with no monitor: {:?}",
        monitor_totals(&pins)?
    );

    let first = MonitorProcess::start(&o, 1, &[])?;
    let second = MonitorProcess::start(&o, 1, &[])?;
    ensure!(monitor_flag(&pins)?, "two monitors listen, the flag is off");
    inject(&o.ns(C1), "eth0", frames())?;
    for m in [&first, &second] {
        for _ in 0..5 {
            ensure!(m.next_drop()?["reason"] == "drop_spoofed_ip");
        }
    }
    ensure!(
        monitor_totals(&pins)?.events == 5,
        "each drop is written once for all monitors"
    );
    // A monitor killed without a word still closes its connection.
    first.kill()?;
    std::thread::sleep(Duration::from_millis(200));
    ensure!(monitor_flag(&pins)?, "one monitor still listens");
    drop(second);
    wait_until(scaled(Duration::from_secs(5)), "the flag cleared", || {
        Ok(!monitor_flag(&pins)?)
    })?;
    inject(&o.ns(C1), "eth0", frames())?;
    wait_until(
        scaled(Duration::from_secs(5)),
        "five more drops counted",
        || Ok(o.counter(1, "drop_spoofed_ip")? == before + 15),
    )?;
    ensure!(
        monitor_totals(&pins)?.events == 5,
        "written after the last monitor left"
    );
    Ok(())
}

#[test]
fn a_monitor_of_a_stopped_agent_ends_with_an_error() -> Result<()> {
    let mut o = Overlay::start(Decap::Tc)?;
    let mut monitor = MonitorProcess::start(&o, 1, &[])?;
    o.agents.remove(0).stop()?;
    let status = wait_for_exit(&mut monitor.child)?;
    ensure!(!status.success(), "it must fail when the agent goes");
    let err = Command::new(overlay_binary()?)
        .args(["monitor", "--socket"])
        .arg(o.scenario.names.socket(1))
        .output()?;
    let text = String::from_utf8_lossy(&err.stderr);
    ensure!(
        !err.status.success() && text.contains("no agent answers"),
        "{text}"
    );
    let bad = Command::new(overlay_binary()?)
        .args(["monitor", "--reason", "encap", "--socket"])
        .arg(o.scenario.names.socket(2))
        .output()?;
    let text = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        !bad.status.success() && text.contains("is not a drop reason"),
        "{text}"
    );
    Ok(())
}

fn wait_for_exit(child: &mut Child) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(10));
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            bail!("overlay monitor kept running after its agent stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
