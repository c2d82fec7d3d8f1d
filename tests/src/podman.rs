//! Podman (Debian's 4.3) with its CNI backend, run inside a test host's
//! network namespace: its storage, run root and temporary files under a
//! scratch directory, its CNI configurations in a folder of the test's and
//! its plugins from the test's folders, cgroupfs, file events, runc and file
//! locks (not the machine's /dev/shm). Podman has no daemon: every command is
//! a `podman` process in the namespace. Everything it made is removed on drop:
//! containers, their network namespaces, mounts, libcni's cached results.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{TempDir, output_ok},
    cni::{DEBIAN_CNI_PLUGINS, cni_binary, conflist, overlay_plugin},
    image::busybox_rootfs_tar,
    netns::netns_path,
    seed_overlay::Overlay,
};

/// The image every container runs: busybox, imported offline.
pub const BUSYBOX_IMAGE: &str = "localhost/overlay-busybox:latest";

/// Where libcni caches results (Podman 4.3 does not move it).
const CNI_RESULTS: &str = "/var/lib/cni/results";
/// Where Podman 4.3 keeps its blob info cache whatever `--root` says.
const BLOB_INFO_CACHE: &str = "/var/lib/containers";

/// runc here needs these; without them it fails to start the container.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Podman in one namespace; see the module doc.
pub struct Podman {
    ns: String,
    dir: TempDir,
    /// Containers run so far: their IDs and network namespaces, for cleanup.
    made: Vec<PodmanContainer>,
    /// This Podman's import made the blob info cache: it goes on drop.
    made_blob_cache: bool,
}

/// A container Podman runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodmanContainer {
    pub name: String,
    pub id: String,
    /// Its network namespace (`/run/netns/netns-…`), as Podman passed it to
    /// the CNI plugins as `CNI_NETNS`.
    pub netns: PathBuf,
}

impl PodmanContainer {
    /// Its namespace's name under `/run/netns`, for the test bed's traffic
    /// helpers.
    pub fn netns_name(&self) -> String {
        self.netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Podman {
    /// Podman in network namespace `ns`, looking for CNI plugins in
    /// `plugin_dirs` (in that order), with busybox imported.
    pub fn start(tag: &str, ns: &str, plugin_dirs: &[&Path]) -> Result<Podman> {
        let dir = TempDir::new(tag)?;
        for sub in ["net", "r", "rr", "t"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {:?}\n\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\nlock_type = \"file\"\n",
            dirs.join(", "),
            dir.path().join("net").display().to_string(),
        );
        std::fs::write(dir.path().join("containers.conf"), conf)?;
        let podman = Podman {
            ns: ns.to_owned(),
            dir,
            made: Vec::new(),
            made_blob_cache: !Path::new(BLOB_INFO_CACHE).exists(),
        };
        podman
            .podman(&["version", "--format", "{{.Client.Version}}"])
            .context("running podman (is podman installed? `cargo xtask test` installs it)")?;
        let tar = busybox_rootfs_tar(podman.dir.path())?;
        podman.podman(&["import", &tar.display().to_string(), BUSYBOX_IMAGE])?;
        Ok(podman)
    }

    /// Podman on `overlay`'s `node`, whose `network` is a configuration list
    /// (1.0.0, for Debian's libcni) with overlay-cni talking to that node's
    /// agent. The plugin is linked into a CNI plugin directory of its own in
    /// the overlay's scratch directory, where a user would put it; Debian's
    /// plugins come after it.
    pub fn on_overlay(overlay: &Overlay, node: u8, network: &str) -> Result<Podman> {
        let plugins = overlay.dir.path().join("cni-bin");
        let link = plugins.join("overlay-cni");
        if !link.exists() {
            std::fs::create_dir_all(&plugins)?;
            std::os::unix::fs::symlink(cni_binary()?, &link)?;
        }
        let podman = Podman::start(
            &format!("{}p{node}", overlay.prefix()),
            &overlay.node_ns(node),
            &[&plugins, Path::new(DEBIAN_CNI_PLUGINS)],
        )
        .with_context(|| format!("podman on node{node}"))?;
        podman.add_network(&conflist(
            "1.0.0",
            network,
            &[overlay_plugin(
                network,
                &overlay.scenario.names.socket(node.into()),
            )],
        ))?;
        Ok(podman)
    }

    /// The folder Podman reads CNI configurations (`*.conflist`) from.
    pub fn network_dir(&self) -> PathBuf {
        self.dir.path().join("net")
    }

    /// Writes a configuration list as `<name>.conflist`.
    pub fn add_network(&self, conflist: &serde_json::Value) -> Result<()> {
        let name = conflist["name"].as_str().context("a conflist has a name")?;
        std::fs::write(
            self.network_dir().join(format!("{name}.conflist")),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        Ok(())
    }

    /// `podman ARGS` in the namespace; stdout, or an error with stderr.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        podman_in(self.dir.path(), &self.ns, args)
    }

    /// `podman run -d --name NAME --network NETWORK` busybox `sleep 1d`, with
    /// `extra` options; waits for nothing more than Podman does.
    pub fn run(&mut self, name: &str, network: &str, extra: &[&str]) -> Result<PodmanContainer> {
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend(ULIMITS);
        args.extend(extra);
        args.extend([BUSYBOX_IMAGE, "sleep", "1d"]);
        let id = self.podman(&args)?.trim().to_owned();
        let netns = self
            .podman(&[
                "inspect",
                "--format",
                "{{.NetworkSettings.SandboxKey}}",
                &id,
            ])?
            .trim()
            .to_owned();
        if netns.is_empty() {
            bail!("podman reports no network namespace for {name}");
        }
        let container = PodmanContainer {
            name: name.to_owned(),
            id,
            netns: PathBuf::from(netns),
        };
        self.made.push(container.clone());
        Ok(container)
    }

    /// `podman exec NAME CMD…`; stdout.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["exec", name];
        args.extend(cmd);
        self.podman(&args)
    }

    /// The container's address on `network`, as Podman took it from the
    /// plugin's result.
    pub fn ip(&self, name: &str, network: &str) -> Result<Ipv4Addr> {
        let format = format!("{{{{(index .NetworkSettings.Networks {network:?}).IPAddress}}}}");
        let text = self.podman(&["inspect", "--format", &format, name])?;
        text.trim()
            .parse()
            .with_context(|| format!("podman's address of {name} on {network}: {text:?}"))
    }

    /// `podman rm -f NAME`.
    pub fn rm(&self, name: &str) -> Result<()> {
        self.podman(&["rm", "-f", "-t", "0", name]).map(|_| ())
    }

    /// Removes what Podman left: containers (`rm -af`), mounts under the
    /// scratch directory, the containers' namespaces, libcni's cache entries
    /// (and its directories, if empty), the blob info cache if it made it.
    fn clean_up(&self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        unmount_under(self.dir.path());
        for c in &self.made {
            if c.netns.exists() {
                let _ = Command::new("umount").arg(&c.netns).output();
                let _ = std::fs::remove_file(&c.netns);
            }
            if let Ok(dir) = std::fs::read_dir(CNI_RESULTS) {
                for entry in dir.flatten() {
                    if entry.file_name().to_string_lossy().contains(&c.id) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        // Only removed when empty: others' entries keep them.
        let _ = std::fs::remove_dir(CNI_RESULTS);
        let _ = std::fs::remove_dir(Path::new(CNI_RESULTS).parent().expect("a parent"));
        if self.made_blob_cache {
            let _ = std::fs::remove_dir_all(BLOB_INFO_CACHE);
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.clean_up();
        // TempDir removes the storage.
    }
}

/// `podman ARGS` in namespace `ns` on the storage under scratch directory `d`
/// (as [`Podman::start`] lays it out).
fn podman_in(d: &Path, ns: &str, args: &[&str]) -> Result<String> {
    output_ok(
        Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .arg("podman")
            .arg("--root")
            .arg(d.join("r"))
            .arg("--runroot")
            .arg(d.join("rr"))
            .arg("--tmpdir")
            .arg(d.join("t"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf")),
    )
}

/// What a Podman whose owner was killed outright (no drop ran) left in its
/// scratch directory `dir`, run in namespace `ns`: its containers, removed by
/// Podman itself while `ns` still exists, so that their conmon and processes
/// stop and the CNI DEL frees their namespaces; then the mounts under `dir`.
/// The caller removes `dir` itself.
pub fn remove_podman_leftovers(dir: &Path, ns: &str) {
    if dir.join("containers.conf").exists() && netns_path(ns).exists() {
        let _ = podman_in(dir, ns, &["rm", "-a", "-f", "-t", "0"]);
    }
    unmount_under(dir);
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).output();
    }
}
