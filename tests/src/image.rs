//! Container images made offline: a tar of a root filesystem holding the
//! static busybox (Debian's busybox-static) and a link for each of its
//! applets, for `podman import` and `docker import`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::cmd::output_ok;

const BUSYBOX: &str = "/bin/busybox";

/// Writes `busybox.tar` into `dir` (made there from `/bin/busybox`); its path.
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let static_busybox =
        output_ok(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "busybox-static"]))
            .is_ok_and(|s| s.ends_with(" installed"));
    ensure!(
        static_busybox,
        "busybox-static is not installed (`cargo xtask test` installs it): a container needs a busybox without shared libraries"
    );
    let rootfs = dir.join("rootfs");
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
    let tar = dir.join("busybox.tar");
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
