//! What observability costs the programs, measured side by side in one run:
//!
//! 1. BPF_PROG_TEST_RUN on the program fixture's tables: encap, decap (TC and
//!    XDP), local delivery and two drop paths, for this build and (with
//!    `--baseline OBJECT`, e.g. main's `target/release/build/overlay-userspace-*/out/overlay`)
//!    another build of the eBPF object loaded on the same maps; the drop paths
//!    also with a monitor listening (every drop writes an event, and past the
//!    rate limit); and each program's verifier instruction count.
//! 2. With `--real-traffic`: a flood of spoofed frames from a container of the
//!    seed topology, dropped by node1's endpoint_ingress, timed by the kernel's
//!    run-time statistics, with no monitor and with one connected.
//!
//! Timings on a shared machine are noisy: read the ratios within one run.
//!
//! ```sh
//! cargo build --release -p overlay-userspace   # the agent, for --real-traffic
//! cargo run --release -p overlay-tests --example observe_cost -- \
//!     [--baseline OBJECT] [--rounds N] [--real-traffic]
//! ```

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData, RingBuf},
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use fixture::*;
use overlay_common::{CONFIG_F_MONITOR, MONITOR_EVENTS_PER_SEC, map_names, program_names};
use overlay_tests::{
    Decap, Overlay, inject, overlay_binary,
    prog_run::{eth, ipv4_udp, skb_ctx, test_run},
};
use overlay_userspace::host::netns::{NetnsGuard, netns_path};

const SAMPLES: usize = 2000;

struct Options {
    baseline: Option<Vec<u8>>,
    rounds: usize,
    real_traffic: bool,
}

fn options() -> Result<Options> {
    let mut opts = Options {
        baseline: None,
        rounds: 3,
        real_traffic: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--baseline" => {
                let path = args.next().context("--baseline needs an eBPF object")?;
                opts.baseline = Some(std::fs::read(&path).with_context(|| path.clone())?);
            }
            "--rounds" => opts.rounds = args.next().context("--rounds N")?.parse()?,
            "--real-traffic" => opts.real_traffic = true,
            other => bail!("unknown argument {other}; see the example's documentation"),
        }
    }
    Ok(opts)
}

/// A frame and where it is run.
struct Case {
    label: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    ifindex: u32,
    /// Leaves the frame as it was, so the kernel's repeat loop applies.
    repeatable: bool,
    /// A drop: also measured with a monitor listening.
    drop: bool,
}

fn cases(fx: &Fixture) -> Vec<Case> {
    let spoofed = eth(
        mac_of(C2_IP),
        mac_of(C1_IP),
        0x0800,
        &ipv4_udp(Ipv4Addr::new(10, 0, 0, 66), C2_IP, 40000, 7777, b"spoofed"),
    );
    let from_c2 = vxlan_frame(
        REMOTE_VTEP,
        VNI,
        0x08,
        &inner_frame(C2_IP, C1_IP, mac_of(C1_IP)),
    );
    let injected = vxlan_frame(
        Ipv4Addr::new(10, 9, 9, 9),
        VNI,
        0x08,
        &inner_frame(C2_IP, C1_IP, mac_of(C1_IP)),
    );
    let case = |label, program, frame, ifindex, repeatable, drop| Case {
        label,
        program,
        frame,
        ifindex,
        repeatable,
        drop,
    };
    vec![
        case(
            "encap",
            program_names::ENDPOINT_INGRESS,
            inner_frame(C1_IP, C2_IP, mac_of(C2_IP)),
            fx.ep0,
            false,
            false,
        ),
        case(
            "decap (tc)",
            program_names::UNDERLAY_INGRESS_TC,
            from_c2.clone(),
            fx.uplink,
            false,
            false,
        ),
        case(
            "decap (xdp)",
            program_names::UNDERLAY_XDP,
            from_c2,
            fx.uplink,
            false,
            false,
        ),
        case(
            "local delivery",
            program_names::ENDPOINT_INGRESS,
            inner_frame(C1_IP, C3_IP, mac_of(C3_IP)),
            fx.ep0,
            true,
            false,
        ),
        case(
            "drop_spoofed_ip",
            program_names::ENDPOINT_INGRESS,
            spoofed,
            fx.ep0,
            true,
            true,
        ),
        case(
            "drop_unknown_vtep (tc)",
            program_names::UNDERLAY_INGRESS_TC,
            injected,
            fx.uplink,
            true,
            true,
        ),
        case(
            "floor (empty program)",
            program_names::ENDPOINT_PEER_XDP,
            vec![0; 64],
            0,
            true,
            false,
        ),
    ]
}

/// Which build, and whether a monitor listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Baseline,
    New,
    /// This build, a monitor listening: every drop writes an event.
    NewMonitor,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::New => "this build",
            Variant::NewMonitor => "this build, monitor listening",
        }
    }
}

#[derive(Default)]
struct Timings {
    single: BTreeMap<(usize, Variant), Vec<u32>>,
    repeat: BTreeMap<(usize, Variant), Vec<u32>>,
}

fn median(v: &mut [u32]) -> u32 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn drain(fx: &Fixture) -> Result<usize> {
    let data = MapData::from_pin(fx.pins.0.join(map_names::EVENTS))?;
    let mut ring = RingBuf::try_from(Map::RingBuf(data))?;
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    Ok(n)
}

fn main() -> Result<()> {
    let opts = options()?;
    let mut fx = Fixture::new()?;
    let mut baseline: Option<Ebpf> = opts
        .baseline
        .as_deref()
        .map(|o| fx.load_other(o))
        .transpose()?;
    let cases = cases(&fx);
    let ns = netns_path(&fx.scratch.ns.name);
    let mut t = Timings::default();
    for round in 0..opts.rounds {
        eprintln!("round {} of {}", round + 1, opts.rounds);
        for (i, case) in cases.iter().enumerate() {
            let ctx = (!case.program.contains("xdp")).then(|| skb_ctx(case.ifindex));
            let mut variants = vec![Variant::New];
            if baseline.is_some() {
                variants.push(Variant::Baseline);
            }
            if case.drop {
                variants.push(Variant::NewMonitor);
            }
            // The order rotates, so that no variant always runs first.
            let n = variants.len();
            variants.rotate_left(round % n);
            for variant in variants {
                let fd = match (variant, baseline.as_mut()) {
                    (Variant::Baseline, Some(b)) => prog_fd(b, case.program)?,
                    _ => fx.prog_fd(case.program)?,
                };
                fx.set_observe_flags(if variant == Variant::NewMonitor {
                    CONFIG_F_MONITOR
                } else {
                    0
                })?;
                let _inside = NetnsGuard::enter(&ns)?;
                let single = t.single.entry((i, variant)).or_default();
                let mut window = Instant::now();
                let mut in_window = 0;
                for _ in 0..SAMPLES {
                    // With a monitor, stay under the rate limit so that each
                    // run writes its event, and keep the ring from filling.
                    if variant == Variant::NewMonitor && in_window == MONITOR_EVENTS_PER_SEC / 2 {
                        drain(&fx)?;
                        std::thread::sleep(Duration::from_secs(1).saturating_sub(window.elapsed()));
                        window = Instant::now();
                        in_window = 0;
                    }
                    single.push(test_run(fd, &case.frame, ctx.as_ref(), 1)?.2);
                    in_window += 1;
                }
                if case.repeatable {
                    // Past the rate limit: the flood a monitor sees.
                    let (_, _, mean) = test_run(fd, &case.frame, ctx.as_ref(), 100_000)?;
                    t.repeat.entry((i, variant)).or_default().push(mean);
                }
                drop(_inside);
                drain(&fx)?;
            }
        }
    }
    fx.set_observe_flags(0)?;
    report(&cases, &mut t, opts.baseline.is_some());
    insns(&mut fx, baseline.as_mut())?;
    if opts.real_traffic {
        real_traffic(opts.rounds)?;
    }
    Ok(())
}

fn report(cases: &[Case], t: &mut Timings, with_baseline: bool) {
    println!(
        "\nBPF_PROG_TEST_RUN, median ns of {SAMPLES} single runs per round (the kernel's timer costs about the floor); repeat=100000 mean in brackets:\n"
    );
    let mut columns = vec![Variant::New, Variant::NewMonitor];
    if with_baseline {
        columns.insert(0, Variant::Baseline);
    }
    print!("| path |");
    for v in &columns {
        print!(" {} |", v.label());
    }
    if with_baseline {
        print!(" this / baseline |");
    }
    println!(" monitor / none |");
    println!(
        "|---{}|{}",
        "|---".repeat(columns.len()),
        if with_baseline { "---|---|" } else { "---|" }
    );
    for (i, case) in cases.iter().enumerate() {
        let mut cell = |v: Variant| -> Option<(u32, Option<u32>)> {
            let single = median(t.single.get_mut(&(i, v))?);
            let repeat = t.repeat.get_mut(&(i, v)).map(|r| median(r));
            Some((single, repeat))
        };
        let values: Vec<Option<(u32, Option<u32>)>> = columns.iter().map(|v| cell(*v)).collect();
        print!("| {} |", case.label);
        for value in &values {
            match value {
                Some((s, Some(r))) => print!(" {s} ({r}) |"),
                Some((s, None)) => print!(" {s} |"),
                None => print!(" — |"),
            }
        }
        let of = |v: Variant| values[columns.iter().position(|c| *c == v).expect("a column")];
        let ratio = |a: Option<(u32, Option<u32>)>, b: Option<(u32, Option<u32>)>| match (a, b) {
            (Some((a, ar)), Some((b, br))) if b > 0 => match (ar, br) {
                (Some(ar), Some(br)) if br > 0 => format!(
                    "{:.3} ({:.3})",
                    f64::from(a) / f64::from(b),
                    f64::from(ar) / f64::from(br)
                ),
                _ => format!("{:.3}", f64::from(a) / f64::from(b)),
            },
            _ => "—".into(),
        };
        if with_baseline {
            print!(" {} |", ratio(of(Variant::New), of(Variant::Baseline)));
        }
        println!(" {} |", ratio(of(Variant::NewMonitor), of(Variant::New)));
    }
}

fn insns(fx: &mut Fixture, baseline: Option<&mut Ebpf>) -> Result<()> {
    let count = |ebpf: &mut Ebpf, name: &str| -> Result<u32> {
        let info = if name.contains("xdp") {
            overlay_userspace::dataplane::programs::xdp(ebpf, name)?.info()?
        } else {
            overlay_userspace::dataplane::programs::classifier(ebpf, name)?.info()?
        };
        info.verified_instruction_count()
            .context("the kernel reports no verified instruction count")
    };
    println!("\n| program | verifier insns processed, baseline | this build |\n|---|---|---|");
    let mut baseline = baseline;
    for name in [
        program_names::ENDPOINT_INGRESS,
        program_names::UNDERLAY_INGRESS_TC,
        program_names::UNDERLAY_XDP,
        program_names::ENDPOINT_PEER_XDP,
    ] {
        let before = match baseline.as_deref_mut() {
            Some(b) => count(b, name)?.to_string(),
            None => "—".into(),
        };
        println!(
            "| {name} | {before} | {} |",
            count(fx.programs.ebpf_mut(), name)?
        );
    }
    Ok(())
}

/// node1's endpoint_ingress, by its use of node1's CONFIG: (runs, ns).
fn endpoint_stats(o: &Overlay) -> Result<(u64, u64)> {
    let config = MapData::from_pin(o.pin_dir(1).join(map_names::CONFIG))?
        .info()?
        .id();
    for info in loaded_programs() {
        let info = info?;
        if info.name_as_str() == Some("endpoint_ingres")
            && info.map_ids()?.is_some_and(|ids| ids.contains(&config))
        {
            return Ok((info.run_count(), info.run_time().as_nanos() as u64));
        }
    }
    bail!("no endpoint_ingress on node1's maps")
}

fn real_traffic(rounds: usize) -> Result<()> {
    const FRAMES: usize = 200_000;
    let o = Overlay::start(Decap::Tc)?;
    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let frame = eth(
        mac_of(C2_IP),
        mac_of(C1_IP),
        0x0800,
        &ipv4_udp(Ipv4Addr::new(10, 0, 0, 66), C2_IP, 40000, 7777, b"spoofed"),
    );
    let c1 = o.ns(overlay_tests::scenario::C1);
    let mut per_run: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let mut phases = ["no monitor", "monitor listening"];
        phases.rotate_left(round % 2);
        for phase in phases {
            let monitor = (phase == "monitor listening")
                .then(|| {
                    Command::new(overlay_binary()?)
                        .args(["monitor", "--json", "--socket"])
                        .arg(o.scenario.names.socket(1))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("overlay monitor")
                })
                .transpose()?;
            std::thread::sleep(Duration::from_millis(300));
            let (runs0, ns0) = endpoint_stats(&o)?;
            inject(&c1, "eth0", vec![frame.clone(); FRAMES])?;
            let (runs1, ns1) = endpoint_stats(&o)?;
            if let Some(mut m) = monitor {
                m.kill()?;
                m.wait()?;
            }
            let ns = (ns1 - ns0) as f64 / (runs1 - runs0).max(1) as f64;
            eprintln!(
                "round {}: {phase}: {} runs, {ns:.0} ns per run",
                round + 1,
                runs1 - runs0
            );
            per_run.entry(phase).or_default().push(ns);
        }
    }
    println!(
        "\nReal traffic: {FRAMES} spoofed frames per phase from c1, dropped by node1's endpoint_ingress (kernel run-time statistics), median of {rounds} rounds:\n"
    );
    println!("| phase | ns per run |\n|---|---|");
    let mut medians = BTreeMap::new();
    for (phase, mut v) in per_run {
        v.sort_by(f64::total_cmp);
        let m = v[v.len() / 2];
        medians.insert(phase, m);
        println!("| {phase} | {m:.0} |");
    }
    if let (Some(on), Some(off)) = (medians.get("monitor listening"), medians.get("no monitor")) {
        println!("| monitor / none | {:.3} |", on / off);
    }
    Ok(())
}
