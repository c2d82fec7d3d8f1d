//! The cluster file: any text either parses into a checked config or gives one
//! error naming the file; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use overlay_userspace::config::ClusterConfig;

fuzz_target!(|text: &str| {
    let path = Path::new("fuzz.toml");
    if let Err(e) = ClusterConfig::parse(path, text) {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
    }
});
