//! The programs' log records (aya-log) into the agent's log: the same logger,
//! levels and `RUST_LOG` filter as the agent's own lines, under the target
//! `overlay_ebpf`.

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use log::Level;
use tokio::io::unix::AsyncFd;

/// The target of every record the programs write (their `LOG_TARGET`).
pub const EBPF_LOG_TARGET: &str = "overlay_ebpf";

/// The most verbose level the agent's logger shows for the programs' target,
/// as aya-log numbers it (1 error … 5 trace, 0 none). Set in the programs
/// before they load, so that the verifier leaves out the statements nobody
/// would see.
pub fn ebpf_log_level() -> u8 {
    [
        (Level::Trace, 5),
        (Level::Debug, 4),
        (Level::Info, 3),
        (Level::Warn, 2),
        (Level::Error, 1),
    ]
    .into_iter()
    .find(|(level, _)| log::log_enabled!(target: EBPF_LOG_TARGET, *level))
    .map_or(0, |(_, n)| n)
}

/// Whether the programs' debug records (a traced flow's) reach the log.
pub fn ebpf_debug_enabled() -> bool {
    ebpf_log_level() >= 4
}

/// Reads the programs' log records as they come and hands them to the
/// logger. The task owns the ring buffer; abort it to stop.
pub(super) fn start(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>> {
    let logger = EbpfLogger::init(ebpf).context("opening the programs' log (AYA_LOGS)")?;
    // SAFETY: the logger owns its ring buffer's fd and keeps it open while the
    // AsyncFd holds it.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .context("polling the programs' log")?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                log::warn!("the programs' log can no longer be read");
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
