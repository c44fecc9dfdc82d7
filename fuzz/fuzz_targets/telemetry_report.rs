//! Telemetry reports arrive by gossip from any peer.
#![no_main]
use fab_node::sched::telemetry::SignedTelemetry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whatever verifies is canonical: it re-encodes to the same bytes.
    if let Ok(r) = SignedTelemetry::decode_verified(data) {
        assert_eq!(r.encode(), data);
    }
});
