//! `/fabnode/exec/1` requests and responses arrive from any connected peer.
#![no_main]
use fab_mesh::exec::{ExecRequest, ExecResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ExecRequest::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(r) = ExecResponse::decode(data) {
        assert_eq!(r.encode(), data);
    }
});
