//! Evidence files come from anyone; verification must refuse, never panic.
#![no_main]
use fab_ledger::evidence::Evidence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Evidence::from_json(data) {
        let _ = e.verify();
    }
});
