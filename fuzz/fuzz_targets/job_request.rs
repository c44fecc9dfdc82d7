//! Signed job requests arrive from requesters over the network.
#![no_main]
use fab_ledger::SignedJobRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(j) = SignedJobRequest::decode_verified(data) {
        assert_eq!(j.encode(), data);
    }
});
