//! The agent's local API: a unix socket only root can open ([`server`]), the
//! messages on it ([`proto`]), the command line's side ([`client`]), and the
//! detaches runtimes leave on disk while no agent answers ([`offline`]). A
//! monitor's or a trace's connection stays open ([`stream`]).

pub mod client;
pub mod offline;
pub mod proto;
pub mod server;
pub mod stream;

use std::path::{Path, PathBuf};

pub const DEFAULT_RUN_DIR: &str = "/run/overlay";
const MAX_REQUEST: usize = 64 * 1024;

pub fn default_socket(node: &str) -> PathBuf {
    Path::new(DEFAULT_RUN_DIR).join(format!("{node}.sock"))
}
