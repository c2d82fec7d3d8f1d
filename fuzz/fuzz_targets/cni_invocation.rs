//! The CNI plugin's input as a runtime hands it: the environment (`KEY=VALUE`
//! lines up to an empty line) and stdin (the rest), read by `cni::parse` (the
//! variables, then the configuration). Read or refused with one of the spec's
//! codes, and a refusal prints as the spec's error object; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_userspace::cni::{Env, parse};

fuzz_target!(|input: &[u8]| {
    let (vars, stdin) = match input.windows(2).position(|w| w == b"\n\n") {
        Some(end) => (&input[..end], &input[end + 2..]),
        None => (input, &[][..]),
    };
    let Ok(vars) = std::str::from_utf8(vars) else {
        return;
    };
    let env = Env::from_vars(vars.lines().filter_map(|line| line.split_once('=')));
    match parse(&env, stdin) {
        Ok(invocation) => {
            let _ = invocation.version();
        }
        Err(e) => {
            let printed: serde_json::Value =
                serde_json::from_str(&e.to_json("1.1.0")).expect("an error prints as JSON");
            assert_eq!(printed["code"], e.code, "{printed}");
        }
    }
});
