//! Receipt files come from anyone; verification must refuse, never panic.
#![no_main]
use fab_ledger::receipt::Receipt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Receipt::from_json(data) {
        let _ = r.verify();
    }
});
