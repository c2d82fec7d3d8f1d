//! `cargo xtask vmtest`: the kernel tests on the kernels users run. Each of
//! Debian's kernel images (6.1 from Debian 12, 6.12 from its backports) boots
//! under qemu with an initramfs that holds the test binaries, the agent, the
//! tools the tests call and the kernel modules they need; a small init runs the
//! suites and the host reads the verdict from the serial console.

mod cpio;
mod kernel;

use std::{
    collections::BTreeMap,
    fmt,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::ValueEnum;

use crate::{prereqs, workspace_root};
use cpio::Archive;
use kernel::{KernelImage, Series};

/// The suites that run inside the VM: the test bed's self-tests and every suite
/// that exercises the kernel. The list is explicit so that a new suite is a
/// decision (it must be able to run in a bare initramfs), not an accident.
const SUITES: [&str; 10] = [
    "overlay_tests",
    "kernel_features",
    "program",
    "drop_events",
    "topology",
    "monitor",
    "interop",
    "lifecycle",
    "config_errors",
    "upgrade",
];

/// Commands the tests run, carried with their shared libraries, and the host's
/// `sh` (dash) for init and the tests' `sh -c`. The rest comes from busybox.
const TOOLS: [&str; 9] = [
    "sh", "ip", "bridge", "ping", "ethtool", "nsenter", "sysctl", "bpftool", "nft",
];

/// Modules the tests need, which Debian builds as modules; their dependencies
/// follow from each module's own `depends=`. The nftables ones carry the
/// agent's way out (its table filters, tracks and masquerades).
const MODULES: [&str; 9] = [
    "veth",
    "vxlan",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "nf_tables",
    "nft_ct",
    "nft_masq",
    "nft_chain_nat",
];

/// Debian packages the VM runs on: qemu, a static busybox for the guest's
/// userland, xz for 6.12's compressed modules.
const PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "xz-utils"];

#[derive(clap::Args)]
pub struct Args {
    /// Which kernel series to boot.
    #[arg(long, value_enum, default_value_t = KernelArg::All)]
    kernel: KernelArg,
    /// qemu's accelerator. TCG (emulation) works everywhere; KVM is much faster
    /// where nested virtualisation works (on this project's VMs it hangs at boot).
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// Per-kernel limit for boot and suites, in minutes; then the VM is killed.
    #[arg(long)]
    timeout_minutes: Option<u64>,
    /// Extra arguments for each test binary, e.g. a test name filter.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    test_args: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KernelArg {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// How much slower than the host the guest runs, for the test bed's waits
    /// (`OVERLAY_TIMEOUT_SCALE`).
    fn timeout_scale(self) -> u32 {
        match self {
            Accel::Tcg => 10,
            Accel::Kvm => 2,
        }
    }

    fn default_timeout(self) -> Duration {
        match self {
            Accel::Tcg => Duration::from_secs(40 * 60),
            Accel::Kvm => Duration::from_secs(15 * 60),
        }
    }

    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            // `max` gives the guest every feature TCG emulates; multi-threaded
            // TCG runs one host thread per guest CPU.
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        })
    }
}

pub fn run(args: &Args, overlay: &Path, upgrade_variant: &Path) -> Result<()> {
    prereqs::ensure_debian_packages("the kernel VMs", &PACKAGES)?;
    let series: Vec<Series> = match args.kernel {
        KernelArg::V6_1 => vec![Series::V6_1],
        KernelArg::V6_12 => vec![Series::V6_12],
        KernelArg::All => vec![Series::V6_1, Series::V6_12],
    };
    let cache = workspace_root().join("target/vmtest");
    let kernels = series
        .iter()
        .map(|s| kernel::fetch(*s, &cache.join("kernels")))
        .collect::<Result<Vec<_>>>()?;
    let suites = build_test_binaries()?;

    let scratch = Scratch::create(&cache)?;
    let common = common_archive(overlay, upgrade_variant, &suites, args, scratch.path())?;
    let mut outcomes = Vec::new();
    for kernel in &kernels {
        let outcome = boot_and_test(kernel, &common, args, &cache, scratch.path())
            .with_context(|| format!("vmtest on {}", kernel.release))?;
        outcomes.push(outcome);
    }
    println!();
    for o in &outcomes {
        println!("{o}");
    }
    // The plain closing line CI's log readers understand.
    let count = |f: fn(&SuiteResult) -> u64| -> u64 {
        outcomes.iter().flat_map(|o| o.suites.values()).map(f).sum()
    };
    println!(
        "vmtest: {} passed, {} failed",
        count(|s| s.passed),
        count(|s| s.failed)
    );
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.series.name())
        .collect();
    ensure!(failed.is_empty(), "vmtest failed on {}", failed.join(", "));
    Ok(())
}

/// The test binaries, by suite name, built as `cargo xtask test` builds them.
fn build_test_binaries() -> Result<BTreeMap<String, PathBuf>> {
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["test", "--no-run", "--release", "-p", "overlay-tests"])
        .args(["--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    ensure!(out.status.success(), "building the test binaries failed");
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let ours = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("overlay-tests"));
        if msg["reason"] != "compiler-artifact" || !ours {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    let mut suites = BTreeMap::new();
    for suite in SUITES {
        let exe = found
            .remove(suite)
            .with_context(|| format!("cargo built no test binary `{suite}`"))?;
        suites.insert(suite.to_owned(), exe);
    }
    Ok(suites)
}

/// What every kernel's initramfs shares: busybox, the tools and their libraries,
/// the agent, the test binaries and the init script. Written once per run.
fn common_archive(
    overlay: &Path,
    upgrade_variant: &Path,
    suites: &BTreeMap<String, PathBuf>,
    args: &Args,
    dir: &Path,
) -> Result<PathBuf> {
    let mut a = Archive::default();
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/etc",
        "/lib/modules",
    ] {
        a.dir(d);
    }
    a.symlink("/var/run", "../run");
    a.file("/bin/busybox", &std::fs::read("/bin/busybox")?, 0o755);
    // Every applet but `sh` (and `busybox`, which would link to itself): Debian's busybox shell runs its own applets before
    // anything in PATH, so `sh -c "ip …"` would get busybox's `ip`, which lacks
    // most of what the tests ask of iproute2. The host's dash is `sh` instead,
    // and the carried tools come first in PATH.
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !TOOLS.contains(&applet) {
            a.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    let mut elves: Vec<(String, PathBuf)> = Vec::new();
    for tool in TOOLS {
        let path = which(tool)?;
        let dir = if tool == "sh" { "/bin" } else { "/usr/bin" };
        elves.push((format!("{dir}/{tool}"), path));
    }
    elves.push(("/vmtest/overlay".to_owned(), overlay.to_owned()));
    elves.push((
        "/vmtest/overlay-upgrade-variant".to_owned(),
        upgrade_variant.to_owned(),
    ));
    for (name, exe) in suites {
        elves.push((format!("/vmtest/bin/{name}"), exe.clone()));
    }
    for (dest, src) in &elves {
        let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        a.file(dest, &bytes, 0o755);
        for lib in shared_libraries(src)? {
            let bytes =
                std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
            a.file(&lib.to_string_lossy(), &bytes, 0o755);
        }
    }
    a.file(
        "/init",
        init_script(&args.test_args, args.accel).as_bytes(),
        0o755,
    );
    let path = dir.join("common.cpio");
    a.write_to(&path)?;
    Ok(path)
}

fn which(tool: &str) -> Result<PathBuf> {
    let out = Command::new("which").arg(tool).output()?;
    ensure!(out.status.success(), "{tool} is not installed");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// The libraries `ldd` resolves for `exe`, the dynamic loader included, at the
/// paths the guest's loader will look them up by.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            None => line.trim(),
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("{}: ldd cannot resolve {}", exe.display(), line.trim());
        }
    }
    Ok(libs)
}

/// The guest's init. Any line the host acts on starts with `VMTEST-`.
fn init_script(test_args: &[String], accel: Accel) -> String {
    let args = test_args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let suites = SUITES.join(" ");
    let scale = accel.timeout_scale();
    format!(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
export OVERLAY_BINARY=/vmtest/overlay OVERLAY_UPGRADE_VARIANT=/vmtest/overlay-upgrade-variant
export OVERLAY_TIMEOUT_SCALE={scale} RUST_BACKTRACE=1
fatal() {{ echo "VMTEST-FATAL $*"; poweroff -f; sleep 60; }}
mount -t proc proc /proc || fatal mounting proc
mount -t sysfs sysfs /sys || fatal mounting sysfs
mount -t devtmpfs devtmpfs /dev || fatal mounting devtmpfs
mount -t tmpfs tmpfs /tmp || fatal mounting tmpfs on /tmp
mount -t tmpfs tmpfs /run || fatal mounting tmpfs on /run
mount -t bpf bpf /sys/fs/bpf || fatal mounting bpffs
mkdir -p /run/netns
for m in $(cat /vmtest/modules); do
    insmod /lib/modules/$m.ko || fatal "insmod $m"
done
echo "VMTEST-BOOTED $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)"
for t in {suites}; do
    echo "VMTEST-BEGIN $t"
    /vmtest/bin/$t --test-threads=1 {args}
    echo "VMTEST-END $t rc=$? uptime $(cut -d' ' -f1 /proc/uptime)"
done
echo VMTEST-DONE
poweroff -f
"#
    )
}

/// The per-kernel part of the initramfs: its modules, in load order.
fn modules_archive(kernel: &KernelImage, dir: &Path) -> Result<PathBuf> {
    let mut a = Archive::default();
    let modules = kernel.modules_in_load_order(&MODULES)?;
    let mut order = String::new();
    for (name, bytes) in &modules {
        a.file(&format!("/lib/modules/{name}.ko"), bytes, 0o644);
        order += &format!("{name}\n");
    }
    a.file("/vmtest/modules", order.as_bytes(), 0o644);
    let path = dir.join(format!("modules-{}.cpio", kernel.series.name()));
    a.write_to(&path)?;
    Ok(path)
}

/// A suite's result as the serial console told it.
#[derive(Default)]
struct SuiteResult {
    exit_code: Option<i32>,
    passed: u64,
    failed: u64,
    secs: f64,
}

struct Outcome {
    series: Series,
    release: String,
    accel: Accel,
    boot: Option<Duration>,
    wall: Duration,
    suites: BTreeMap<String, SuiteResult>,
    /// Why the VM stopped before finishing, if it did.
    aborted: Option<String>,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.aborted.is_none()
            && self.suites.len() == SUITES.len()
            && self.suites.values().all(|s| s.exit_code == Some(0))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passed: u64 = self.suites.values().map(|s| s.passed).sum();
        let failed: u64 = self.suites.values().map(|s| s.failed).sum();
        let boot = self
            .boot
            .map_or("-".to_owned(), |b| format!("{:.1} s", b.as_secs_f64()));
        write!(
            f,
            "vmtest {:<5} {} ({}): {}: {passed} passed, {failed} failed; boot {boot}, total {:.0} s",
            self.series.name(),
            self.release,
            self.accel,
            if self.passed() { "PASS" } else { "FAIL" },
            self.wall.as_secs_f64(),
        )?;
        let failing: Vec<String> = self
            .suites
            .iter()
            .filter(|(_, s)| s.exit_code != Some(0))
            .map(|(n, s)| match s.exit_code {
                Some(rc) => format!("{n} (exit {rc})"),
                None => format!("{n} (unfinished)"),
            })
            .collect();
        if !failing.is_empty() {
            write!(f, "; failing suites: {}", failing.join(", "))?;
        }
        let times: Vec<String> = self
            .suites
            .iter()
            .map(|(n, s)| format!("{n} {:.0} s", s.secs))
            .collect();
        write!(f, "; suites: {}", times.join(", "))?;
        if let Some(why) = &self.aborted {
            write!(f, "; ABORTED: {why}")?;
        }
        Ok(())
    }
}

fn boot_and_test(
    kernel: &KernelImage,
    common: &Path,
    args: &Args,
    cache: &Path,
    scratch: &Path,
) -> Result<Outcome> {
    // The kernel unpacks concatenated newc archives in turn.
    let initramfs = scratch.join(format!("initramfs-{}.cpio", kernel.series.name()));
    let modules = modules_archive(kernel, scratch)?;
    {
        let mut out = std::fs::File::create(&initramfs)?;
        for part in [common, modules.as_path()] {
            std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
        }
    }
    let log_path = cache.join(format!("console-{}.log", kernel.series.name()));
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let timeout = args
        .timeout_minutes
        .map_or(args.accel.default_timeout(), |m| {
            Duration::from_secs(m * 60)
        });
    println!(
        "vmtest: booting {} under {} (console log: {}; limit {} min)",
        kernel.release,
        args.accel,
        log_path.display(),
        timeout.as_secs() / 60
    );
    let started = Instant::now();
    let mut vm = Vm::boot(&kernel.vmlinuz, &initramfs, args.accel)?;
    let lines = vm.lines()?;
    let mut outcome = Outcome {
        series: kernel.series,
        release: kernel.release.clone(),
        accel: args.accel,
        boot: None,
        wall: Duration::ZERO,
        suites: BTreeMap::new(),
        aborted: None,
    };
    let deadline = started + timeout;
    let mut current: Option<(String, Instant)> = None;
    let prefix = format!("[{}] ", kernel.series.name());
    loop {
        let now = Instant::now();
        if now >= deadline {
            outcome.aborted = Some(format!(
                "timed out after {} min{}",
                timeout.as_secs() / 60,
                current
                    .as_ref()
                    .map_or(String::new(), |(s, _)| format!(" in suite {s}"))
            ));
            break;
        }
        let line = match lines.recv_timeout(deadline - now) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                outcome.aborted = Some("the VM stopped before the suites finished".to_owned());
                break;
            }
        };
        let _ = writeln!(log, "{line}");
        println!("{prefix}{line}");
        if line.contains("Kernel panic") {
            outcome.aborted = Some(format!("kernel panic: {line}"));
            break;
        }
        // The firmware's terminal escapes may precede the first marker.
        let Some(at) = line.find("VMTEST-") else {
            if let Some((passed, failed)) = parse_test_result(&line)
                && let Some((suite, _)) = &current
                && let Some(r) = outcome.suites.get_mut(suite)
            {
                r.passed += passed;
                r.failed += failed;
            }
            continue;
        };
        let line = line[at..].trim_end();
        if let Some(rest) = line.strip_prefix("VMTEST-FATAL ") {
            outcome.aborted = Some(format!("init failed: {rest}"));
            break;
        }
        if line.starts_with("VMTEST-BOOTED") {
            outcome.boot = Some(started.elapsed());
        } else if let Some(suite) = line.strip_prefix("VMTEST-BEGIN ") {
            outcome
                .suites
                .insert(suite.to_owned(), SuiteResult::default());
            current = Some((suite.to_owned(), Instant::now()));
        } else if let Some(rest) = line.strip_prefix("VMTEST-END ") {
            let mut words = rest.split_whitespace();
            let suite = words.next().unwrap_or_default();
            let rc = words
                .next()
                .and_then(|w| w.strip_prefix("rc="))
                .and_then(|rc| rc.parse().ok());
            if let Some(r) = outcome.suites.get_mut(suite) {
                r.exit_code = rc;
                r.secs = current
                    .take()
                    .map_or(0.0, |(_, t)| t.elapsed().as_secs_f64());
            }
        } else if line == "VMTEST-DONE" {
            break;
        }
    }
    outcome.wall = started.elapsed();
    vm.stop();
    Ok(outcome)
}

/// `test result: ok. 12 passed; 0 failed; …` → (12, 0).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
    };
    Some((count(" passed")?, count(" failed")?))
}

/// A qemu process; killed on drop, so that no VM outlives the run.
struct Vm {
    child: Child,
}

impl Vm {
    fn boot(vmlinuz: &Path, initramfs: &Path, accel: Accel) -> Result<Vm> {
        let child = Command::new("qemu-system-x86_64")
            .args(["-nographic", "-no-reboot", "-m", "2048", "-smp", "2"])
            .args(accel.qemu_args())
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initramfs)
            // panic=-1 turns a panic into a reboot, which -no-reboot turns into
            // qemu's exit. The guest is a throwaway test box, so speculative
            // execution mitigations only cost emulation time.
            .args([
                "-append",
                "console=ttyS0 rdinit=/init panic=-1 loglevel=4 mitigations=off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        Ok(Vm { child })
    }

    /// The serial console, line by line, read by a thread.
    fn lines(&mut self) -> Result<mpsc::Receiver<String>> {
        let stdout = self.child.stdout.take().context("qemu's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    /// Gives a guest that powered itself off a moment to exit, then kills it.
    fn stop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().is_ok_and(|s| s.is_some()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The run's scratch directory (initramfs images), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create(cache: &Path) -> Result<Scratch> {
        // A run killed by a signal cannot clean up; the next one does.
        for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("run-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let path = cache.join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_are_counted() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.2s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_test_result("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
    }

    #[test]
    fn init_quotes_test_arguments() {
        let script = init_script(&["it's".to_owned()], Accel::Tcg);
        assert!(script.contains(r"'it'\''s'"));
        assert!(script.contains("OVERLAY_TIMEOUT_SCALE=10"));
    }
}
