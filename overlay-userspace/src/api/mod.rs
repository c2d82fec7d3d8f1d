//! The agent's local API: a unix socket only root can open ([`server`]), the
//! messages on it ([`proto`]), the command line's side ([`client`]), and the
//! detaches runtimes leave on disk while no agent answers ([`offline`]). A
//! monitor's or a trace's connection stays open ([`stream`]).

pub mod client;
pub mod offline;
pub mod proto;
pub mod server;
pub mod stream;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub const DEFAULT_RUN_DIR: &str = "/run/overlay";
/// The longest request line, without its newline: a request names a few
/// things, so more is a client gone wrong.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a connection may take to send its request line whole: a client
/// that sends slowly, or never a newline, does not hold its connection open.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

pub fn default_socket(node: &str) -> PathBuf {
    Path::new(DEFAULT_RUN_DIR).join(format!("{node}.sock"))
}
