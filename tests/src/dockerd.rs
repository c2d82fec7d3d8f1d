//! A real dockerd (Debian's docker.io, default iptables settings) inside a
//! test host's network namespace, with its own data root, exec root and socket
//! under a scratch directory, in a private mount namespace whose `/run` is a
//! tmpfs: its containerd, shims and netns files never touch the machine.
//! Stopped, and its data removed, on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{TempDir, output_ok},
    netns::netns_path,
    scale::scaled,
};

/// Debian's client: `/usr/local/bin/docker` may be a newer one that shadows it.
pub const DOCKER_CLIENT: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";

/// A running dockerd; see the module doc.
pub struct Dockerd {
    child: Option<Child>,
    dir: TempDir,
    ns: String,
}

impl Dockerd {
    /// Starts dockerd in the network namespace `ns` (`--bridge=none`, every
    /// other setting Docker's default) and waits until it answers.
    pub fn start(ns: &str) -> Result<Dockerd> {
        let dir = TempDir::new("dockerd")?;
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("etc"))?;
        let script = format!(
            "mount -t tmpfs tmpfs /run && mount --bind {d}/etc /etc/docker && \
             exec {DOCKERD} --bridge=none --data-root {d}/data --exec-root {d}/exec \
             --pidfile {d}/dockerd.pid -H unix://{d}/docker.sock"
        );
        let log = std::fs::File::create(dir.path().join("dockerd.log"))?;
        // nsenter and unshare exec, and sh execs dockerd: the child is dockerd.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .args([
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dockerd (is docker.io installed? `cargo xtask test` installs it)")?;
        let mut dockerd = Dockerd {
            child: Some(child),
            dir,
            ns: ns.to_owned(),
        };
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        loop {
            if dockerd
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(dockerd);
            }
            let child = dockerd.child.as_mut().expect("running");
            if let Some(status) = child.try_wait()? {
                bail!("dockerd exited ({status}):\n{}", dockerd.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within a minute:\n{}", dockerd.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The network namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `docker -H <its socket> ARGS`; stdout, or an error with stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        output_ok(
            Command::new(DOCKER_CLIENT)
                .arg("-H")
                .arg(format!("unix://{}", self.socket().display()))
                .args(args),
        )
    }

    /// What dockerd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Stops dockerd: SIGTERM, then after 30 s SIGKILL to it and its children
    /// (its containerd), by process id.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = child.id();
        let children = children_of(pid);
        // SAFETY: plain syscall on our own, unreaped child.
        unsafe { libc::kill(i32::try_from(pid)?, libc::SIGTERM) };
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                for c in &children {
                    // SAFETY: plain syscall; these were dockerd's children.
                    unsafe { libc::kill(*c, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "dockerd ignored SIGTERM for 30 s and was killed:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.terminate();
        // The data root's mounts died with the private mount namespace;
        // TempDir removes the files.
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| parent_of(Path::new(&format!("/proc/{p}/stat"))) == Some(pid))
        .collect()
}

fn parent_of(stat: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(stat).ok()?;
    // pid (comm) state ppid …: comm may hold spaces and parentheses.
    let after = &text[text.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}
