//! What the programs report besides counting, through BPF_PROG_TEST_RUN: drop
//! events in EVENTS (only while the monitor flag is set, rate limited per
//! CPU, the frame's start included), and aya-log records of their rare events
//! and of a traced flow (rate limited too). The fixture is `fixture/`.

mod fixture;

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use aya::maps::{Map, MapData, RingBuf};
use aya_log::EbpfLogger;
use fixture::*;
use overlay_common::{
    CONFIG_F_MONITOR, CONFIG_F_TRACE, Counter, DROP_SAMPLE_LEN, DropEvent, HOOK_ENDPOINT,
    HOOK_UNDERLAY_TC, HOOK_UNDERLAY_XDP, LOG_RECORDS_PER_SEC, MONITOR_EVENTS_PER_SEC, MonitorCpu,
    TraceFlow, map_names, program_names,
};
use overlay_tests::prog_run::{eth, ipv4_udp};

/// The events in EVENTS, taken out.
fn drain_events(fx: &Fixture) -> Result<Vec<DropEvent>> {
    let data = MapData::from_pin(fx.pins.0.join(map_names::EVENTS))?;
    let mut ring = RingBuf::try_from(Map::RingBuf(data))?;
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(bytemuck::pod_read_unaligned(
            &item[..size_of::<DropEvent>()],
        ));
    }
    Ok(out)
}

fn totals(fx: &Fixture) -> Result<MonitorCpu> {
    fx.maps.monitor_totals()
}

/// A frame c1 sends from an address not its own.
fn spoofed(fx: &Fixture) -> (Vec<u8>, u32) {
    let frame = eth(
        mac_of(C2_IP),
        mac_of(C1_IP),
        0x0800,
        &ipv4_udp(Ipv4Addr::new(10, 0, 0, 66), C2_IP, 40000, 7777, b"spoofed"),
    );
    (frame, fx.ep0)
}

/// VXLAN for uber-net from a VTEP nobody announced.
fn injected() -> Vec<u8> {
    vxlan_frame(
        Ipv4Addr::new(10, 9, 9, 9),
        VNI,
        0x08,
        &inner_frame(C2_IP, C1_IP, mac_of(C1_IP)),
    )
}

#[test]
fn no_event_is_written_while_no_monitor_listens() -> Result<()> {
    let mut fx = Fixture::new()?;
    let (frame, ep0) = spoofed(&fx);
    fx.run(program_names::ENDPOINT_INGRESS, &frame, ep0)?
        .expect(TC_ACT_SHOT, "drop_spoofed_ip");
    for prog in [
        program_names::UNDERLAY_INGRESS_TC,
        program_names::UNDERLAY_XDP,
    ] {
        let out = fx.run(prog, &injected(), fx.uplink)?;
        ensure!(out.moved.get("drop_unknown_vtep") == Some(&1), "{out:?}");
    }
    ensure!(
        totals(&fx)? == MonitorCpu::default(),
        "the ring buffer's counters moved: {:?}",
        totals(&fx)?
    );
    ensure!(drain_events(&fx)?.is_empty(), "events were written");
    Ok(())
}

#[test]
fn a_listening_monitor_gets_each_drop_with_the_frames_start() -> Result<()> {
    let mut fx = Fixture::new()?;
    fx.set_observe_flags(CONFIG_F_MONITOR)?;
    let (frame, ep0) = spoofed(&fx);
    fx.run(program_names::ENDPOINT_INGRESS, &frame, ep0)?
        .expect(TC_ACT_SHOT, "drop_spoofed_ip");
    let vxlan = injected();
    fx.run(program_names::UNDERLAY_INGRESS_TC, &vxlan, fx.uplink)?
        .expect(TC_ACT_SHOT, "drop_unknown_vtep");
    fx.run(program_names::UNDERLAY_XDP, &vxlan, fx.uplink)?
        .expect(XDP_DROP, "drop_unknown_vtep");

    let events = drain_events(&fx)?;
    ensure!(events.len() == 3, "{} events", events.len());
    for (event, (reason, hook, ifindex, frame)) in events.iter().zip([
        (Counter::DropSpoofedIp, HOOK_ENDPOINT, ep0, &frame),
        (
            Counter::DropUnknownVtep,
            HOOK_UNDERLAY_TC,
            fx.uplink,
            &vxlan,
        ),
        (
            Counter::DropUnknownVtep,
            HOOK_UNDERLAY_XDP,
            fx.uplink,
            &vxlan,
        ),
    ]) {
        ensure!(
            event.reason == reason as u32,
            "{reason:?}: {}",
            event.reason
        );
        ensure!(event.hook == hook, "{reason:?}: hook {}", event.hook);
        ensure!(
            event.frame_len as usize == frame.len(),
            "{reason:?}: length"
        );
        // XDP's test run gives no ingress interface.
        ensure!(
            hook == HOOK_UNDERLAY_XDP || event.ifindex == ifindex,
            "{reason:?}: ifindex {}",
            event.ifindex
        );
        let n = frame.len().min(DROP_SAMPLE_LEN);
        ensure!(
            usize::from(event.sample_len) == n,
            "{reason:?}: sample length"
        );
        ensure!(
            event.sample[..n] == frame[..n],
            "{reason:?}: the sample is the frame's start"
        );
        ensure!(event.time_ns > 0, "{reason:?}: no time");
    }
    let t = totals(&fx)?;
    ensure!(
        (t.events, t.events_lost, t.events_limited) == (3, 0, 0),
        "{t:?}"
    );
    Ok(())
}

#[test]
fn forwarding_writes_no_event_even_while_a_monitor_listens() -> Result<()> {
    let mut fx = Fixture::new()?;
    fx.set_observe_flags(CONFIG_F_MONITOR)?;
    fx.run(
        program_names::ENDPOINT_INGRESS,
        &inner_frame(C1_IP, C2_IP, mac_of(C2_IP)),
        fx.ep0,
    )?
    .expect(TC_ACT_REDIRECT, "encap");
    fx.run(
        program_names::ENDPOINT_INGRESS,
        &inner_frame(C1_IP, C3_IP, mac_of(C3_IP)),
        fx.ep0,
    )?
    .expect(TC_ACT_REDIRECT, "local_delivery");
    let from_c2 = vxlan_frame(
        REMOTE_VTEP,
        VNI,
        0x08,
        &inner_frame(C2_IP, C1_IP, mac_of(C1_IP)),
    );
    fx.run(program_names::UNDERLAY_INGRESS_TC, &from_c2, fx.uplink)?
        .expect(TC_ACT_REDIRECT, "decap");
    ensure!(drain_events(&fx)?.is_empty());
    ensure!(totals(&fx)?.events == 0);
    Ok(())
}

#[test]
fn events_are_rate_limited_per_cpu_and_counted_when_the_ring_is_full() -> Result<()> {
    let mut fx = Fixture::new()?;
    fx.set_observe_flags(CONFIG_F_MONITOR)?;
    let (frame, ep0) = spoofed(&fx);
    // One kernel loop runs on one CPU, well within one second.
    let runs = 3 * MONITOR_EVENTS_PER_SEC;
    let (verdict, _) = fx.run_repeat(program_names::ENDPOINT_INGRESS, &frame, ep0, runs)?;
    ensure!(verdict == TC_ACT_SHOT);
    let t = totals(&fx)?;
    ensure!(
        (t.events, t.events_limited)
            == (
                MONITOR_EVENTS_PER_SEC.into(),
                (runs - MONITOR_EVENTS_PER_SEC).into()
            ),
        "{t:?}"
    );
    // Another second's allowance, with nobody reading: the ring (about 1 700
    // events) fills, and what does not fit is counted as lost.
    std::thread::sleep(Duration::from_millis(1100));
    fx.run_repeat(program_names::ENDPOINT_INGRESS, &frame, ep0, runs)?;
    let t = totals(&fx)?;
    ensure!(t.events_lost > 0, "nothing was lost: {t:?}");
    ensure!(
        t.events + t.events_lost == 2 * u64::from(MONITOR_EVENTS_PER_SEC),
        "{t:?}"
    );
    let written = drain_events(&fx)?.len() as u64;
    ensure!(written == t.events, "{written} in the ring, {t:?}");
    Ok(())
}

/// The programs' log records, as the agent's logger would get them.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(log::Level, String, String)>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().expect("capture").push((
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

impl Capture {
    fn attach(fx: &mut Fixture) -> Result<(Capture, EbpfLogger<Capture>)> {
        let capture = Capture::default();
        let logger = EbpfLogger::init_with_logger(fx.programs.ebpf_mut(), capture.clone())
            .context("reading AYA_LOGS")?;
        Ok((capture, logger))
    }

    fn take(&self, logger: &mut EbpfLogger<Capture>) -> Vec<(log::Level, String, String)> {
        logger.flush();
        std::mem::take(&mut *self.0.lock().expect("capture"))
    }
}

#[test]
fn a_frame_on_an_unknown_veth_is_logged_at_most_so_often() -> Result<()> {
    let mut fx = Fixture::new()?;
    let (capture, mut logger) = Capture::attach(&mut fx)?;
    let frame = inner_frame(C1_IP, C2_IP, mac_of(C2_IP));
    let runs = 5 * LOG_RECORDS_PER_SEC;
    fx.run_repeat(program_names::ENDPOINT_INGRESS, &frame, fx.uplink, runs)?;
    let records = capture.take(&mut logger);
    ensure!(
        records.len() == LOG_RECORDS_PER_SEC as usize,
        "{} records",
        records.len()
    );
    let (level, target, text) = &records[0];
    ensure!(
        *level == log::Level::Warn && target == "overlay_ebpf",
        "{records:?}"
    );
    ensure!(
        text.contains(&format!("ifindex {}", fx.uplink)) && text.contains("no ENDPOINTS entry"),
        "{text}"
    );
    let t = totals(&fx)?;
    ensure!(
        t.logs_limited == u64::from(runs - LOG_RECORDS_PER_SEC),
        "{t:?}"
    );
    // Forwarding logs nothing.
    fx.run(program_names::ENDPOINT_INGRESS, &frame, fx.ep0)?
        .expect(TC_ACT_REDIRECT, "encap");
    std::thread::sleep(Duration::from_millis(1100));
    fx.run(program_names::ENDPOINT_INGRESS, &frame, fx.ep0)?
        .expect(TC_ACT_REDIRECT, "encap");
    ensure!(capture.take(&mut logger).is_empty());
    Ok(())
}

#[test]
fn a_traced_flow_logs_each_decision_and_nothing_else_does() -> Result<()> {
    let mut fx = Fixture::new()?;
    let (capture, mut logger) = Capture::attach(&mut fx)?;
    fx.maps.trace.set(
        0,
        TraceFlow {
            vni: VNI,
            a: C2_IP.octets(),
            b: C1_IP.octets(),
        },
        0,
    )?;
    fx.set_observe_flags(CONFIG_F_TRACE)?;
    fx.run(
        program_names::ENDPOINT_INGRESS,
        &inner_frame(C1_IP, C2_IP, mac_of(C2_IP)),
        fx.ep0,
    )?
    .expect(TC_ACT_REDIRECT, "encap");
    let records = capture.take(&mut logger);
    let texts: Vec<&str> = records.iter().map(|(_, _, t)| t.as_str()).collect();
    ensure!(records.len() == 3, "{texts:?}");
    ensure!(records.iter().all(|(l, _, _)| *l == log::Level::Debug));
    ensure!(
        texts[0].contains("10.0.0.3 -> 10.0.0.4") && texts[0].contains(&format!("vni {VNI}")),
        "{texts:?}"
    );
    ensure!(texts[1].contains("decision encap"), "{texts:?}");
    ensure!(
        texts[2].contains(&format!("verdict {TC_ACT_REDIRECT}")),
        "{texts:?}"
    );

    // The reply, decapsulated by either variant, is the same flow.
    let reply = vxlan_frame(
        REMOTE_VTEP,
        VNI,
        0x08,
        &inner_frame(C2_IP, C1_IP, mac_of(C1_IP)),
    );
    fx.run(program_names::UNDERLAY_XDP, &reply, fx.uplink)?
        .expect(XDP_REDIRECT, "decap");
    let texts: Vec<String> = capture.take(&mut logger).into_iter().map(|r| r.2).collect();
    ensure!(
        texts.len() == 3 && texts[1].contains("decision decap"),
        "{texts:?}"
    );

    // Another flow is not traced, and nothing is once tracing is off.
    fx.run(
        program_names::ENDPOINT_INGRESS,
        &inner_frame(C1_IP, C3_IP, mac_of(C3_IP)),
        fx.ep0,
    )?
    .expect(TC_ACT_REDIRECT, "local_delivery");
    ensure!(
        capture.take(&mut logger).is_empty(),
        "c1 -> c3 is not traced"
    );
    fx.set_observe_flags(0)?;
    fx.run(
        program_names::ENDPOINT_INGRESS,
        &inner_frame(C1_IP, C2_IP, mac_of(C2_IP)),
        fx.ep0,
    )?
    .expect(TC_ACT_REDIRECT, "encap");
    ensure!(capture.take(&mut logger).is_empty(), "tracing is off");
    Ok(())
}
