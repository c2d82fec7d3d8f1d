//! Container images made offline: a tar of a root filesystem holding the
//! static busybox (Debian's busybox-static) and a link for each of its
//! applets, for `podman import` and `docker import`; optionally with more of
//! the machine's binaries and the shared libraries `ldd` names for them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::cmd::output_ok;

const BUSYBOX: &str = "/bin/busybox";
const IPERF3: &str = "/usr/bin/iperf3";

/// Writes `busybox.tar` into `dir` (made there from `/bin/busybox`); its path.
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    rootfs_tar(dir, "busybox", &[])
}

/// Writes `iperf3.tar` into `dir`: the busybox root filesystem with Debian's
/// `/usr/bin/iperf3` and its libraries; its path.
pub fn iperf3_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    ensure!(
        Path::new(IPERF3).exists(),
        "{IPERF3} is missing (`cargo xtask test` installs iperf3)"
    );
    rootfs_tar(dir, "iperf3", &[IPERF3])
}

/// `dir/<name>.tar`: busybox, its applets, and `binaries` with their
/// libraries at the paths they have here.
fn rootfs_tar(dir: &Path, name: &str, binaries: &[&str]) -> Result<PathBuf> {
    let static_busybox =
        output_ok(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "busybox-static"]))
            .is_ok_and(|s| s.ends_with(" installed"));
    ensure!(
        static_busybox,
        "busybox-static is not installed (`cargo xtask test` installs it): a container needs a busybox without shared libraries"
    );
    let rootfs = dir.join(format!("{name}-rootfs"));
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for sub in ["tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    std::fs::copy(BUSYBOX, bin.join("busybox")).context("copying /bin/busybox")?;
    let applets = output_ok(Command::new(BUSYBOX).arg("--list"))?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking {applet}"))?;
    }
    for binary in binaries {
        let ldd = output_ok(Command::new("ldd").arg(binary))?;
        for file in std::iter::once(*binary).chain(shared_libraries(&ldd)) {
            let to = rootfs.join(file.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("below the rootfs"))?;
            // Follows links: the image gets the files themselves.
            std::fs::copy(file, &to).with_context(|| format!("copying {file}"))?;
        }
    }
    let tar = dir.join(format!("{name}.tar"));
    output_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )?;
    std::fs::remove_dir_all(&rootfs)?;
    Ok(tar)
}

/// The files `ldd` says a binary loads: `name => /path (addr)` and the
/// loader's `/path (addr)`; the vDSO has no file.
fn shared_libraries(ldd: &str) -> impl Iterator<Item = &str> {
    ldd.lines().filter_map(|line| {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            None => line.trim(),
        };
        path.split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::shared_libraries;

    #[test]
    fn ldd_lines_give_the_files_to_copy() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x00007f4f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4e)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f4fa41e0000)\n";
        assert_eq!(
            shared_libraries(ldd).collect::<Vec<_>>(),
            [
                "/lib/x86_64-linux-gnu/libiperf.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
