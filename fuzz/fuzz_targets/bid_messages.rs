//! `/fabnode/bid/1` calls and signed answers arrive from any connected peer.
#![no_main]
use fab_mesh::bid::{BidRequest, SignedBid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = BidRequest::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(b) = SignedBid::decode_verified(data) {
        assert_eq!(b.encode(), data);
    }
});
