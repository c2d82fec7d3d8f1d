//! The drop events the programs write to EVENTS while a monitor listens, read
//! as they come. The agent is their one reader: a ring buffer has one consumer
//! position, so two readers would each see part of the events.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use overlay_common::{DropEvent, map_names};
use tokio::io::unix::AsyncFd;

pub struct DropEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl DropEvents {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<DropEvents> {
        let map = ebpf
            .take_map(map_names::EVENTS)
            .context("the eBPF object has no map EVENTS")?;
        let ring = RingBuf::try_from(map).context("EVENTS is not a ring buffer")?;
        // SAFETY: the ring buffer owns its fd and keeps it open while the
        // AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .context("polling EVENTS")?;
        Ok(DropEvents { ring })
    }

    /// Waits until events are there, then appends every one there is to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<DropEvent>) -> Result<()> {
        loop {
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .context("waiting on EVENTS")?;
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(bytes) = item.get(..size_of::<DropEvent>()) {
                    out.push(bytemuck::pod_read_unaligned(bytes));
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(());
            }
        }
    }
}
