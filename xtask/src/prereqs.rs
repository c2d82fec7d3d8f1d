//! Everything the build and the tests need that a fresh machine lacks. Each step
//! checks first, installs only what is missing, and says what it did.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{run, succeeds};

/// The Debian packages whose commands the tests and the demo run.
const PACKAGES: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure_all() -> Result<()> {
    ensure_root()?;
    ensure_bpffs()?;
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages()?;
    Ok(())
}

pub fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "this needs root: loading BPF programs, mounting bpffs, creating network namespaces"
    );
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
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        println!("prereq: bpf-linker already installed");
        return Ok(());
    }
    let sysroot = String::from_utf8(
        Command::new("rustc")
            .args(["+nightly", "--print", "sysroot"])
            .output()
            .context("running rustc")?
            .stdout,
    )?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", nightly_lib.display()))?;
    let llvm_major = llvm_major_version()?;
    let prefix = cache_dir()?.join(format!("llvm-{llvm_major}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    // `libLLVM.so` for the build; the soname itself because the installed binary's
    // rpath points at this directory and the loader looks the soname up there.
    let soname = libllvm.file_name().expect("a file");
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "prereq: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about a minute)"
    );
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{llvm_major}")])
        .env("LLVM_PREFIX", &prefix))
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
        .filter(|(cmd, _)| !succeeds(Command::new("sh").args(["-c", &format!("command -v {cmd}")])))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        println!(
            "prereq: packages present ({})",
            PACKAGES.map(|(_, p)| p).join(", ")
        );
        return Ok(());
    }
    println!("prereq: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}
