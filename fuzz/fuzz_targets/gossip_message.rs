//! Every gossip payload from any peer goes through validation before use or forwarding.
#![no_main]
use fab_mesh::validate::{Verdict, validate};
use fab_mesh::wire::GossipMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whatever decodes is canonical: it re-encodes to the same bytes.
    if let Ok(msg) = GossipMsg::decode(data) {
        assert_eq!(msg.encode(), data);
    } else {
        assert!(matches!(validate("fuzz", data), Verdict::Reject(_)));
    }
    let _ = validate("fuzz", data);
});
