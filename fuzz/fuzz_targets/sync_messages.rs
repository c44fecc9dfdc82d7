//! `/fabnode/ledger-sync/1` requests and responses arrive from any connected peer.
#![no_main]
use fab_mesh::wire::{SyncRequest, SyncResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SyncRequest::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(r) = SyncResponse::decode(data) {
        assert_eq!(r.encode(), data);
    }
});
