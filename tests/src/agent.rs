//! `overlay agent` processes, run inside a node's namespace.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cmd::output_ok,
    netns::netns_path,
    scale::scaled,
    scenario::{PIN_ROOT, run_dir_for, socket_for, state_dir_for},
};

/// The agent binary `cargo xtask build` produces; `OVERLAY_BINARY` overrides the
/// path, for test binaries run elsewhere (inside `cargo xtask vmtest`'s VMs).
pub fn overlay_binary() -> Result<PathBuf> {
    let path = std::env::var_os("OVERLAY_BINARY").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/overlay"),
        PathBuf::from,
    );
    ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask build` (or `cargo xtask test`)",
        path.display()
    );
    Ok(path)
}

/// A binary that `cargo xtask build` leaves next to `overlay`.
pub(crate) fn built_beside_overlay(name: &str) -> Result<PathBuf> {
    let path = overlay_binary()?.with_file_name(name);
    ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask build`",
        path.display()
    );
    Ok(path)
}

/// The upgrade suite's second version of the agent (its eBPF object differs:
/// other program code, another FDB size), which `cargo xtask test` builds next
/// to the first; `OVERLAY_UPGRADE_VARIANT` overrides the path.
pub fn upgrade_variant_binary() -> Result<PathBuf> {
    let path = std::env::var_os("OVERLAY_UPGRADE_VARIANT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/overlay-upgrade-variant"),
        PathBuf::from,
    );
    ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask test`, or `cargo build --release -p overlay-userspace \
         --bin overlay-upgrade-variant --features upgrade-test-variant`",
        path.display()
    );
    Ok(path)
}

/// Writes a new cluster key to `path` (`overlay keygen`).
pub fn keygen(path: &Path) -> Result<()> {
    output_ok(
        Command::new(overlay_binary()?)
            .args(["keygen", "--output"])
            .arg(path),
    )?;
    Ok(())
}

fn ready_timeout() -> Duration {
    scaled(Duration::from_secs(30))
}
fn stop_timeout() -> Duration {
    scaled(Duration::from_secs(10))
}

/// A running `overlay agent`. Stopped (SIGTERM, then SIGKILL after 10 s) on drop,
/// and its pin and run directories removed, since a killed agent cannot unpin.
pub struct Agent {
    child: Option<Child>,
    stderr: StderrLog,
    pin_dir: PathBuf,
}

/// The dataplane an agent left running (--keep, or killed): its pins and run
/// directory, removed on drop unless a new agent takes them over.
pub struct LeftDataplane {
    pin_dir: Option<PathBuf>,
}

impl LeftDataplane {
    pub fn pin_dir(&self) -> &Path {
        self.pin_dir.as_deref().expect("not taken over yet")
    }

    /// Starts an agent on the same pins and state, which adopts the dataplane.
    pub fn restart(
        mut self,
        node_ns: &str,
        binary: &Path,
        config: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        let pin_dir = self.pin_dir.take().expect("not taken over yet");
        let started = Agent::start(node_ns, binary, config, &pin_dir, extra);
        if started.is_err() {
            remove_dirs(&pin_dir);
        }
        started
    }
}

impl Drop for LeftDataplane {
    fn drop(&mut self) {
        if let Some(dir) = self.pin_dir.take() {
            remove_dirs(&dir);
        }
    }
}

fn remove_dirs(pin_dir: &Path) {
    let _ = std::fs::remove_dir_all(pin_dir);
    let _ = std::fs::remove_dir_all(run_dir_for(pin_dir));
    // The default pin root too, once no agent uses it (a no-op until then).
    if pin_dir.parent() == Some(Path::new(PIN_ROOT)) {
        let _ = std::fs::remove_dir(PIN_ROOT);
    }
}

impl Agent {
    /// Starts `binary agent --config CONFIG --pin-dir PIN_DIR EXTRA…` in `node_ns`
    /// and waits up to 30 s for it to print `ready`.
    pub fn start(
        node_ns: &str,
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        Agent::start_with_env(node_ns, binary, config, pin_dir, extra, &[])
    }

    /// [`Agent::start`], with `env` (e.g. `RUST_LOG`) set for the agent.
    pub fn start_with_env(
        node_ns: &str,
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let mut child = spawn(node_ns, binary, config, pin_dir, extra, env, Stdio::piped())?;
        let stdout = child.stdout.take().expect("piped");
        let mut agent = Agent {
            stderr: StderrLog::collect(&mut child),
            child: Some(child),
            pin_dir: pin_dir.to_owned(),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads stdout for as long as the agent runs, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        let deadline = Instant::now() + ready_timeout();
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(agent);
            }
            let child = agent.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().context("waiting for the agent")? {
                bail!(
                    "the agent exited ({status}) before it was ready:\n{}",
                    agent.stderr.complete()
                );
            }
            if Instant::now() > deadline {
                // Dropping `agent` stops it.
                bail!(
                    "the agent was not ready within {:?}:\n{}",
                    ready_timeout(),
                    agent.stderr.so_far()
                );
            }
        }
    }

    /// Runs an agent that is expected to stop by itself, on a bad config for
    /// instance: its exit status and stderr. An error if it runs for 30 s.
    pub fn run_to_completion(
        node_ns: &str,
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        extra: &[&str],
    ) -> Result<(ExitStatus, String)> {
        let mut child = spawn(node_ns, binary, config, pin_dir, extra, &[], Stdio::null())?;
        let stderr = StderrLog::collect(&mut child);
        match wait_for(&mut child, ready_timeout())? {
            Some(status) => {
                let _ = std::fs::remove_dir_all(run_dir_for(pin_dir));
                Ok((status, stderr.complete()))
            }
            None => {
                let _ = terminate(&mut child, libc::SIGTERM);
                remove_dirs(pin_dir);
                bail!(
                    "the agent did not stop by itself within {:?}:\n{}",
                    ready_timeout(),
                    stderr.so_far()
                )
            }
        }
    }

    /// What the agent has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.so_far()
    }

    /// The agent's API socket.
    pub fn socket(&self) -> PathBuf {
        socket_for(&self.pin_dir)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The ids of the BPF programs the agent holds open, from its fdinfo.
    /// Other agents on the machine load the same programs, so telling ours
    /// apart by name would count theirs too.
    pub fn programs(&self) -> Result<BTreeSet<u64>> {
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid()))? {
            let Ok(info) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|id| id.trim().parse::<u64>().ok()),
            );
        }
        ensure!(!ids.is_empty(), "the agent holds no BPF program");
        Ok(ids)
    }

    /// SIGKILL: the agent gets no chance to clean up, and its dataplane stays.
    pub fn kill(mut self) -> Result<LeftDataplane> {
        let mut child = self.child.take().expect("running until stopped");
        let killed = child.kill().context("killing the agent");
        // Reaped whether or not the kill succeeded (it fails if the agent has
        // exited already), so no zombie is left.
        child.wait().context("reaping the agent")?;
        killed?;
        Ok(LeftDataplane {
            pin_dir: Some(std::mem::take(&mut self.pin_dir)),
        })
    }

    /// Stops an agent started with --keep: it must exit cleanly and leave its
    /// pins for the next agent.
    pub fn stop_keeping(mut self) -> Result<LeftDataplane> {
        let mut child = self.child.take().expect("running until stopped");
        let left = LeftDataplane {
            pin_dir: Some(std::mem::take(&mut self.pin_dir)),
        };
        match terminate(&mut child, libc::SIGTERM)? {
            Some(status) if status.success() => {}
            Some(status) => bail!(
                "the agent exited with {status}:\n{}",
                self.stderr.complete()
            ),
            None => bail!(
                "the agent ignored SIGTERM and was killed:\n{}",
                self.stderr.so_far()
            ),
        }
        ensure!(
            left.pin_dir().join("CONFIG").exists(),
            "the agent was started with --keep but removed its pins:\n{}",
            self.stderr.complete()
        );
        Ok(left)
    }

    /// Sends `signal` (SIGHUP: re-read the cluster key file) and returns.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: plain syscall; the pid is our own running child's.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "signal {signal} to the agent: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the agent to finish its teardown.
    pub fn stop(self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` and waits up to 10 s for the agent to exit; after that it is
    /// killed, and that is an error. An agent removes its pins when it exits: if
    /// the pin directory is still there, it is removed here and that is an error
    /// too, so a leak shows even though the machine is left clean.
    pub fn stop_with(mut self, signal: i32) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("running until stopped");
        let Some(status) = terminate(&mut child, signal)? else {
            bail!(
                "the agent ignored signal {signal} for {:?} and was killed:\n{}",
                stop_timeout(),
                self.stderr.so_far()
            );
        };
        let _ = std::fs::remove_dir_all(run_dir_for(&self.pin_dir));
        if self.pin_dir.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
            bail!(
                "the agent exited ({status}) but left its pins in {}:\n{}",
                self.pin_dir.display(),
                self.stderr.complete()
            );
        }
        Ok(status)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, libc::SIGTERM);
        }
        if !self.pin_dir.as_os_str().is_empty() {
            remove_dirs(&self.pin_dir);
        }
    }
}

/// `nsenter --net`, not `ip netns exec`: the latter remounts /sys, which would
/// hide the bpffs mounted at /sys/fs/bpf from the agent.
fn spawn(
    node_ns: &str,
    binary: &Path,
    config: &Path,
    pin_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stdout: Stdio,
) -> Result<Child> {
    Command::new("nsenter")
        .arg(format!("--net={}", netns_path(node_ns).display()))
        .arg(binary)
        .arg("agent")
        .arg("--config")
        .arg(config)
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--socket")
        .arg(socket_for(pin_dir))
        .arg("--state-dir")
        .arg(state_dir_for(pin_dir))
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {} in {node_ns}", binary.display()))
}

/// The child's exit status, or `None` if it is still running after `timeout`.
pub(crate) fn wait_for(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the agent")? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` and waits up to 10 s; then SIGKILL. The exit status if the
/// child exited by itself, `None` if it had to be killed.
pub(crate) fn terminate(child: &mut Child, signal: i32) -> Result<Option<ExitStatus>> {
    // Once reaped, its pid may belong to another process by now.
    if let Some(status) = child.try_wait().context("waiting for the agent")? {
        return Ok(Some(status));
    }
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // SAFETY: plain syscall. Only we reap the child, and it was not reaped above,
    // so the pid is still its own (a zombie at worst).
    unsafe { libc::kill(pid, signal) };
    let status = wait_for(child, stop_timeout())?;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(status)
}

/// A child's stderr, collected by a thread so the child never blocks on the pipe.
pub(crate) struct StderrLog {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

impl StderrLog {
    pub(crate) fn collect(child: &mut Child) -> StderrLog {
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock()
                    .expect("stderr buffer")
                    .extend_from_slice(&buf[..n]);
            }
        });
        StderrLog { bytes, reader }
    }

    pub(crate) fn so_far(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().expect("stderr buffer")).into_owned()
    }

    /// Everything, once the child has exited: waits (briefly, in case something
    /// else holds the pipe open) for the reader to reach the end.
    fn complete(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.so_far()
    }
}
