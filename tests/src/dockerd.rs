//! A real dockerd (Debian's docker.io, default iptables settings) inside a
//! test host's network namespace, with its own data root, exec root and socket
//! under a scratch directory, in a private mount namespace whose `/run` is a
//! tmpfs: its containerd, shims and netns files never touch the machine.
//!
//! The mount namespace is held by a process of its own, so that dockerd can be
//! stopped and started again in it: with `--live-restore` the containers'
//! shims stay there, and a dockerd in a new namespace would not find them.
//! Everything goes on drop: the containers, dockerd, and every process left in
//! the mount namespace, by process id.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{TempDir, output_ok},
    image::{busybox_rootfs_tar, iperf3_rootfs_tar},
    netns::netns_path,
    scale::scaled,
};

/// Debian's client: `/usr/local/bin/docker` may be a newer one that shadows it.
pub const DOCKER_CLIENT: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// The busybox image every test container runs, imported offline.
pub const BUSYBOX_IMAGE: &str = "overlay-busybox:1";
/// busybox with Debian's iperf3, imported offline: the benchmark's image.
pub const IPERF3_IMAGE: &str = "overlay-iperf3:1";

/// How a dockerd runs, beside Docker's defaults (and `--bridge=none`).
#[derive(Clone, Debug, Default)]
pub struct DockerdOptions {
    /// `--live-restore`: containers keep running while dockerd is down.
    pub live_restore: bool,
    /// Extra arguments to dockerd.
    pub args: Vec<String>,
}

/// A running dockerd; see the module doc.
pub struct Dockerd {
    child: Option<Child>,
    /// Holds the private mount namespace.
    holder: Option<Child>,
    dir: TempDir,
    ns: String,
    opts: DockerdOptions,
}

impl Dockerd {
    /// Starts dockerd in the network namespace `ns` with Docker's defaults
    /// and waits until it answers.
    pub fn start(ns: &str) -> Result<Dockerd> {
        Dockerd::start_with(ns, DockerdOptions::default())
    }

    pub fn start_with(ns: &str, opts: DockerdOptions) -> Result<Dockerd> {
        // Named after its host, so that a demo killed outright finds it.
        let dir = TempDir::new(&format!("{ns}dockerd"))?;
        let d = dir.path().display().to_string();
        for sub in ["etc", "plugins"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        // Plugins are found by name in /run/docker/plugins: the scratch
        // `plugins` folder is that folder inside.
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/docker/plugins && \
             mount --bind {d}/plugins /run/docker/plugins && \
             mount --bind {d}/etc /etc/docker && touch {d}/mounted && exec sleep infinity"
        );
        let holder = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the mount namespace holder (util-linux)")?;
        let mut dockerd = Dockerd {
            child: None,
            holder: Some(holder),
            dir,
            ns: ns.to_owned(),
            opts,
        };
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        while !dockerd.dir.path().join("mounted").exists() {
            if Instant::now() > deadline {
                bail!("the private mount namespace for dockerd was not ready in 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        dockerd.launch()?;
        Ok(dockerd)
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().expect("held until drop").id()
    }

    /// Starts dockerd in the held namespaces and waits until it answers.
    fn launch(&mut self) -> Result<()> {
        let d = self.dir.path().display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))?;
        // runc on this machine needs these limits set explicitly.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns_path(&self.ns).display()))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder_pid()))
            .arg(DOCKERD)
            .args(["--bridge=none", "--default-ulimit", "nofile=1024:1024"])
            .args(["--default-ulimit", "nproc=1024:1024"])
            .arg(format!("--data-root={d}/data"))
            .arg(format!("--exec-root={d}/exec"))
            .arg(format!("--pidfile={d}/dockerd.pid"))
            .arg(format!("--host=unix://{d}/docker.sock"));
        if self.opts.live_restore {
            cmd.arg("--live-restore");
        }
        // nsenter execs dockerd: the child is dockerd.
        let child = cmd
            .args(&self.opts.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dockerd (is docker.io installed? `cargo xtask test` installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(());
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("dockerd exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within a minute:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops dockerd and starts it again in the same namespaces; with
    /// `--live-restore` the containers run on meanwhile.
    pub fn restart(&mut self) -> Result<()> {
        self.terminate()?;
        self.launch()
    }

    /// The network namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// The folder dockerd sees as `/run/docker/plugins`: a plugin whose
    /// socket is `<it>/NAME.sock` is found by its name.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
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

    /// Imports [`BUSYBOX_IMAGE`]: a rootfs of busybox-static and its applets.
    pub fn import_busybox(&self) -> Result<()> {
        let tar = busybox_rootfs_tar(self.dir.path())?;
        self.docker(&["import", &tar.display().to_string(), BUSYBOX_IMAGE])
            .context("importing the busybox image (is busybox-static installed?)")?;
        Ok(())
    }

    /// Imports [`IPERF3_IMAGE`]: the busybox rootfs with iperf3 and its libraries.
    pub fn import_iperf3(&self) -> Result<()> {
        let tar = iperf3_rootfs_tar(self.dir.path())?;
        self.docker(&["import", &tar.display().to_string(), IPERF3_IMAGE])
            .context("importing the iperf3 image")?;
        Ok(())
    }

    /// What dockerd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Removes every container, then stops dockerd.
    pub fn stop(mut self) -> Result<()> {
        self.remove_containers();
        self.terminate()
    }

    /// Sends SIGTERM to dockerd without waiting: several can stop at once.
    pub fn begin_stop(&mut self) {
        self.remove_containers();
        if let Some(child) = self.child.as_ref() {
            // SAFETY: plain syscall on our own, unreaped child.
            unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        }
    }

    fn remove_containers(&self) {
        if self.child.is_none() {
            return;
        }
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
    }

    /// SIGTERM, then after 30 s SIGKILL; dockerd stops its containers first
    /// unless `--live-restore` (about 15 s with live ones).
    fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: plain syscall on our own, unreaped child.
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "dockerd ignored SIGTERM for 30 s and was killed:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.remove_containers();
        let _ = self.terminate();
        // containerd, shims and containers live in the held mount namespace:
        // whatever is left there goes, and the namespace with its holder.
        kill_containers(&self.dir.path().join("data/containers"));
        if let Some(mut holder) = self.holder.take() {
            kill_mount_namespace(holder.id());
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}

/// The process ids of `/proc`.
fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL to the processes of containers whose state is in `containers` (a
/// data root's folder, one subfolder per container ID): those left running
/// when dockerd could not remove them.
fn kill_containers(containers: &Path) {
    let Ok(dir) = std::fs::read_dir(containers) else {
        return;
    };
    let ids: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| id.len() == 64)
        .collect();
    if ids.is_empty() {
        return;
    }
    for p in pids() {
        let cgroup = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
        if ids.iter().any(|id| cgroup.contains(id.as_str())) {
            // SAFETY: plain syscall on a process of one of our containers.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// SIGKILL to every process in the mount namespace of `pid` (but `pid`).
fn kill_mount_namespace(pid: u32) {
    let ns_of = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    let Some(ns) = ns_of(&pid.to_string()) else {
        return;
    };
    for p in pids() {
        if p != pid.cast_signed() && ns_of(&p.to_string()).as_ref() == Some(&ns) {
            // SAFETY: plain syscall on a process of the test's own namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}
