//! Feed entries arrive from peers and from files: decoding must never panic, and anything that
//! decodes must re-encode to the same bytes (the canonical-form rule).
#![no_main]
use fab_ledger::SignedEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = SignedEntry::decode_verified(data) {
        assert_eq!(e.encode(), data);
    }
    let mut v = fab_ledger::entry::FeedVerifier::new(fab_ledger::Keypair::from_secret([1; 32]).public());
    let _ = v.push(data);
});
