//! The local API's request line as the server decodes it (a stream's request
//! first, then one for the agent's loop): decoded or refused, and a decoded
//! request encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_userspace::api::proto::Incoming;

fuzz_target!(|line: &str| {
    if let Ok(request) = Incoming::decode(line) {
        let again = request.encode().expect("requests serialize");
        assert_eq!(Incoming::decode(&again).expect("re-decodes"), request);
    }
});
