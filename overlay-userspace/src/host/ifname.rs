//! Interface names for the ifindexes the maps and the programs report, and
//! indexes for names.

use std::ffi::{CStr, CString};

use anyhow::{Context as _, Result};

/// The name of interface `ifindex` in this namespace, if it is here.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { CStr::from_ptr(buf.as_ptr().cast()) };
    Some(name.to_string_lossy().into_owned())
}

/// The index of interface `name` in the calling thread's namespace, if it is
/// there. An ioctl, not a netlink request: the kernel's netlink answer about a
/// veth looks up its peer's namespace ID among all the host's (one per
/// container), so checking every endpoint that way grew with the square of
/// their number.
pub fn ifindex(name: &str) -> Result<Option<u32>> {
    let c_name =
        CString::new(name).with_context(|| format!("interface name {name:?} holds a NUL"))?;
    // SAFETY: a valid NUL-terminated string, only read.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            e => Err(e).with_context(|| format!("looking up interface {name}")),
        },
        index => Ok(Some(index)),
    }
}
