//! The local API's request line: decoded or refused, and a decoded request
//! encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_userspace::api::proto::Request;

fuzz_target!(|line: &str| {
    if let Ok(request) = Request::decode(line) {
        let again = serde_json::to_string(&request).expect("requests serialize");
        assert_eq!(Request::decode(&again).expect("re-decodes"), request);
    }
});
