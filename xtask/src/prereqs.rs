//! Everything the build and the tests need that a fresh machine lacks. Each step
//! checks first, installs only what is missing, and says what it did.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::{run, succeeds};

/// The Debian packages whose commands the agent, the tests and the demo run
/// (the agent writes its way out of the overlay with `nft`).
const PACKAGES: [(&str, &str); 10] = [
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    // Also the fault suite's loss and partitions (no netem here).
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    // The fault suite: gratuitous ARP.
    ("arping", "iputils-arping"),
];

/// What only the tests, `demo --containers` and `bench --docker-run` need: a real dockerd (with
/// its default iptables settings) for the suites that check the overlay
/// beside one, Podman and the CNI reference plugins (portmap) for the CNI
/// suites, and a static busybox for their offline images.
const TEST_PACKAGES: [&str; 4] = [
    "docker.io",
    "podman",
    "containernetworking-plugins",
    "busybox-static",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn ensure_all() -> Result<()> {
    ensure_root()?;
    ensure_bpffs()?;
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages()?;
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` (libFuzzer runs on the nightly, which
/// the eBPF build installs anyway).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if let Ok(out) = Command::new("cargo").args(["fuzz", "--version"]).output()
        && out.status.success()
    {
        println!(
            "prereq: cargo-fuzz already installed ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    println!("prereq: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)...");
    run(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
}

/// [`ensure_all`], and what only the tests need.
pub fn ensure_for_tests() -> Result<()> {
    ensure_all()?;
    ensure_debian_packages("the tests", &TEST_PACKAGES)
}

/// The container engines `demo --containers` and `bench --docker-run` run
/// (after [`ensure_all`]); `purpose` names the one asking.
pub fn ensure_container_engines(purpose: &str) -> Result<()> {
    ensure_debian_packages(purpose, &TEST_PACKAGES)
}

fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "must run as root (euid 0): it mounts bpffs, loads BPF programs and creates \
         network namespaces, and no test is skipped without them"
    );
    println!("prereq: running as root");
    Ok(())
}

fn ensure_bpffs() -> Result<()> {
    if succeeds(Command::new("mountpoint").args(["-q", "/sys/fs/bpf"])) {
        println!("prereq: bpffs already mounted at /sys/fs/bpf");
        return Ok(());
    }
    println!("prereq: mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn ensure_nightly_rust_src() -> Result<()> {
    if !succeeds(Command::new("rustc").args(["+nightly", "--version"])) {
        println!("prereq: installing the nightly toolchain (for -Z build-std of the eBPF crate)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "-c",
            "rust-src",
        ]))?;
        return Ok(());
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        println!("prereq: nightly rust-src already installed");
        return Ok(());
    }
    println!("prereq: installing rust-src for the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must link with an LLVM at least as new as the nightly's. Debian's
/// is too old and prebuilt downloads are out of reach, so it is built against the
/// nightly's own libLLVM, through a small prefix of symlinks in the cache.
fn ensure_bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
    {
        println!(
            "prereq: bpf-linker already installed ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly --print sysroot")?;
    let nightly_lib = Path::new(String::from_utf8(sysroot.stdout)?.trim()).join("lib");
    let libllvm = find_libllvm(&nightly_lib)?;
    let llvm_major = llvm_major_version()?;
    let prefix = cache_dir()?.join(format!("llvm-{llvm_major}"));
    link_libllvm(&prefix.join("lib"), &libllvm)?;
    println!(
        "prereq: installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about a minute)..."
    );
    run(Command::new("cargo")
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--locked", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .env("LLVM_PREFIX", &prefix))
}

/// The nightly's `libLLVM.so.<version>`; the version is not hard-coded.
fn find_libllvm(nightly_lib: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no libLLVM.so.* in {}", nightly_lib.display()))
}

/// Links `libllvm` into `lib` as `libLLVM.so`, which the build links against, and
/// under its own soname, because the installed binary's rpath points at `lib` and
/// the loader looks the soname up there. Idempotent; re-points stale links.
fn link_libllvm(lib: &Path, libllvm: &Path) -> Result<()> {
    std::fs::create_dir_all(lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm.file_name().context("libLLVM has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        if std::fs::read_link(&link).is_ok_and(|to| to == libllvm) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    println!("prereq: {} links to {}", lib.display(), libllvm.display());
    Ok(())
}

fn llvm_major_version() -> Result<String> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("running rustc")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV reports no LLVM version")?;
    Ok(version.split('.').next().unwrap_or(version).to_owned())
}

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/overlay-xtask"))
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !succeeds(Command::new("which").arg(cmd)))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        println!(
            "prereq: commands present ({})",
            PACKAGES.map(|(cmd, _)| cmd).join(", ")
        );
        return Ok(());
    }
    println!("prereq: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// A real Prometheus server for the metrics suite: Debian's `prometheus`,
/// without the node exporter it recommends. The suite runs its own servers,
/// inside its namespaces, so the package's service is neither started (a
/// policy-rc.d held in place while it installs) nor left enabled.
pub fn ensure_prometheus() -> Result<()> {
    if succeeds(Command::new("which").arg("prometheus")) {
        println!("prereq: prometheus already installed");
        return Ok(());
    }
    with_services_held_back(|| {
        ensure_debian_packages("the metrics suite (a Prometheus server)", &["prometheus"])
    })?;
    // Enabling works offline, so the package enables its unit even where
    // systemd does not run; undone either way.
    if succeeds(Command::new("systemctl").args(["is-enabled", "--quiet", "prometheus.service"])) {
        println!("prereq: disabling the prometheus service the package enabled");
        run(Command::new("systemctl").args(["disable", "prometheus.service"]))?;
    }
    if Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["stop", "prometheus.service"])
            .status();
    }
    Ok(())
}

/// Runs `install` with `/usr/sbin/policy-rc.d` refusing every service start
/// (exit 101, as Debian's policy-rc.d interface has it), unless the machine
/// already has a policy of its own.
fn with_services_held_back(install: impl FnOnce() -> Result<()>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let policy = Path::new("/usr/sbin/policy-rc.d");
    if policy.exists() {
        return install();
    }
    std::fs::write(
        policy,
        "#!/bin/sh\n# cargo xtask: no service starts while it installs\nexit 101\n",
    )
    .with_context(|| format!("writing {}", policy.display()))?;
    std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    let installed = install();
    let removed =
        std::fs::remove_file(policy).with_context(|| format!("removing {}", policy.display()));
    installed.and(removed)
}

/// Installs whichever of `packages` are not installed, for `purpose`. By package
/// rather than by command, where a command does not tell the package apart (the
/// static busybox from the dynamic one).
pub fn ensure_debian_packages(purpose: &str, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output()
                .map_or(true, |out| {
                    !String::from_utf8_lossy(&out.stdout).ends_with(" installed")
                })
        })
        .collect();
    if missing.is_empty() {
        println!(
            "prereq: packages for {purpose} present ({})",
            packages.join(", ")
        );
        return Ok(());
    }
    println!(
        "prereq: installing Debian packages for {purpose}: {}",
        missing.join(" ")
    );
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libllvm_links_are_idempotent_and_follow_the_nightly() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-llvm-{}", std::process::id()));
        let (old, new) = (dir.join("libLLVM.so.22.1-a"), dir.join("libLLVM.so.22.1-b"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&old, "")?;
        std::fs::write(&new, "")?;
        assert_eq!(find_libllvm(&dir)?, new);
        let lib = dir.join("prefix/lib");
        for _ in 0..2 {
            link_libllvm(&lib, &old)?;
        }
        assert_eq!(std::fs::read_link(lib.join("libLLVM.so"))?, old);
        assert_eq!(std::fs::read_link(lib.join("libLLVM.so.22.1-a"))?, old);
        link_libllvm(&lib, &new)?;
        assert_eq!(std::fs::read_link(lib.join("libLLVM.so"))?, new);
        assert_eq!(std::fs::read_link(lib.join("libLLVM.so.22.1-b"))?, new);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
