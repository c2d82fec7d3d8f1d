//! Network namespaces: where named ones live, entering one for a while, and the
//! per-interface settings that are only reachable from inside.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::Write as _,
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::config::rules;

/// The file of a namespace as the API names it (see [`rules::netns`]): a
/// path as given, or where `ip netns add NAME` puts a named one.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/var/run/netns").join(netns)
    }
}

/// A namespace's identity: nsfs gives each namespace one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

/// The identity of the namespace `netns` names; `None` if its file cannot be
/// read (a caller's namespace in a mount namespace of its own, or gone).
pub fn netns_id(netns: &str) -> Option<NetnsId> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(netns_path(netns)).ok()?;
    Some(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Whether two namespace references are the same namespace: the same path,
/// or files of one namespace, such as `/run/netns/x` and `/proc/PID/ns/net`
/// of a process inside it.
pub fn same_netns(a: &str, b: &str) -> bool {
    netns_path(a) == netns_path(b) || netns_id(a).is_some_and(|id| netns_id(b) == Some(id))
}

/// Switches the calling thread into a network namespace until dropped.
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    pub fn enter(path: &Path) -> Result<NetnsGuard> {
        let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        setns(&target).with_context(|| format!("entering network namespace {}", path.display()))?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Failing to return would leave this thread in the wrong namespace for
        // everything that follows: nothing sensible can go on.
        setns(&self.original).expect("returning to the original network namespace");
    }
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A namespace (name or path) that must exist already: its path, or the
/// problem in words that say how to create it.
pub fn existing(netns: &str) -> std::result::Result<PathBuf, String> {
    rules::netns(netns)?;
    let path = netns_path(netns);
    if path.exists() {
        Ok(path)
    } else if netns.starts_with('/') {
        Err(format!("network namespace {netns} does not exist"))
    } else {
        Err(format!(
            "network namespace {netns:?} does not exist ({}); create it with `ip netns add {netns}`",
            path.display()
        ))
    }
}

/// Opens a namespace (name or path), with an error that says what is missing.
pub fn open_netns(netns: &str) -> Result<OwnedFd> {
    let path = netns_path(netns);
    let file = File::open(&path).map_err(|e| {
        anyhow!(
            "network namespace {netns:?} cannot be opened ({}: {e})",
            path.display()
        )
    })?;
    Ok(file.into())
}

/// Turns IPv4 forwarding on for packets that arrive on `ifname` (of the
/// calling thread's namespace): the kernel decides by the input interface.
pub fn enable_forwarding(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    std::fs::write(&path, "1").with_context(|| format!("writing {path}"))
}

/// Turns IPv6 off on an interface of the calling thread's namespace. The overlay
/// carries IPv4 only, as Docker's does by default; without this every container
/// would send router solicitations and MLD reports that the dataplane must drop.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has nothing to turn off.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("writing {path}: {e}"),
    }
}

/// The calling thread's namespace's per-interface IP settings
/// (`/proc/sys/net/ipv4/conf` and `ipv6/conf`), opened once. A path from
/// /proc/sys crosses `ipv6`, a directory of which every namespace that looked
/// at it has a dentry of its own, all under the one `net` and compared one by
/// one: with an endpoint per namespace, writing `disable_ipv6` by path cost
/// proc_sys_compare 14 % of the agent's CPU at 1,500 endpoints, growing with
/// them. From these directories only the interface's own name is looked up.
pub struct ConfDirs {
    ipv4: File,
    /// `None` on a kernel without IPv6.
    ipv6: Option<File>,
}

impl ConfDirs {
    pub fn open() -> Result<ConfDirs> {
        let dir = |path: &str| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(path)
        };
        let ipv4 = dir("/proc/sys/net/ipv4/conf").context("opening /proc/sys/net/ipv4/conf")?;
        let ipv6 = match dir("/proc/sys/net/ipv6/conf") {
            Ok(d) => Some(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => bail!("opening /proc/sys/net/ipv6/conf: {e}"),
        };
        Ok(ConfDirs { ipv4, ipv6 })
    }

    /// As [`enable_forwarding`], for an interface of this namespace.
    pub fn enable_forwarding(&self, ifname: &str) -> Result<()> {
        write_one_at(&self.ipv4, &format!("{ifname}/forwarding"))
            .with_context(|| format!("writing /proc/sys/net/ipv4/conf/{ifname}/forwarding"))
    }

    /// As [`disable_ipv6`], for an interface of this namespace.
    pub fn disable_ipv6(&self, ifname: &str) -> Result<()> {
        let Some(ipv6) = &self.ipv6 else {
            return Ok(());
        };
        write_one_at(ipv6, &format!("{ifname}/disable_ipv6"))
            .with_context(|| format!("writing /proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"))
    }
}

/// Writes "1" to the file at `relative` under `dir`.
fn write_one_at(dir: &File, relative: &str) -> std::io::Result<()> {
    let path = CString::new(relative)?;
    // SAFETY: a valid directory fd and a NUL-terminated path; the fd returned
    // is owned by the File below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(b"1")
}
