//! What dockerd POSTs to the network and IPAM drivers, as `<method>\n<body>`:
//! decoded as the plugin's server decodes it, and a CreateNetwork's options or
//! a ProgramExternalConnectivity's port map read as the handlers read them.
//! Refused or read, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_userspace::docker::{options, protocol::Request};

fuzz_target!(|input: &[u8]| {
    let (method, body) = match input.iter().position(|&b| b == b'\n') {
        Some(end) => (&input[..end], &input[end + 1..]),
        None => (input, &[][..]),
    };
    let Ok(method) = std::str::from_utf8(method) else {
        return;
    };
    match Request::decode(method, body) {
        Some(Ok(Request::CreateNetwork(create))) => {
            let _ = options::network_create(&create);
        }
        Some(Ok(Request::ProgramExternalConnectivity(program))) => {
            let _ = options::published_ports(&program.options);
        }
        _ => {}
    }
});
