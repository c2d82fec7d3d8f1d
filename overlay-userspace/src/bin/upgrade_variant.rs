//! `overlay-upgrade-variant`: the same `overlay` command, built with the feature
//! `upgrade-test-variant`, so its embedded eBPF object is a second version (other
//! program code, another FDB size) for the upgrade tests to upgrade onto. Built
//! only with that feature (`cargo xtask test` does); never shipped.

include!("../main.rs");
