//! Timeouts that stretch with the machine: under emulation (`cargo xtask vmtest`
//! boots kernels under TCG, several times slower than the host) the same waits
//! would fail for want of CPU, not for a fault. The runner says how much slower it
//! is in `OVERLAY_TIMEOUT_SCALE`; on the host it is unset and nothing changes.

use std::{sync::OnceLock, time::Duration};

/// The environment variable holding the factor, a number >= 1 (e.g. "8").
pub const TIMEOUT_SCALE_VAR: &str = "OVERLAY_TIMEOUT_SCALE";

/// The factor from `OVERLAY_TIMEOUT_SCALE`; 1 when unset. A value that is not a
/// number >= 1 is a mistake in the runner, and stops the test bed loudly.
pub fn timeout_scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var(TIMEOUT_SCALE_VAR) {
        Err(_) => 1.0,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(scale) if scale >= 1.0 && scale.is_finite() => scale,
            _ => panic!("{TIMEOUT_SCALE_VAR}={text:?}: expected a number >= 1"),
        },
    })
}

/// `timeout`, stretched by [`timeout_scale`].
pub fn scaled(timeout: Duration) -> Duration {
    timeout.mul_f64(timeout_scale())
}
