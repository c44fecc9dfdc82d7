//! Checkpoint notes arrive from peers, witnesses and receipt files.
#![no_main]
use fab_ledger::Keypair;
use fab_ledger::checkpoint::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(note) = std::str::from_utf8(data) else { return };
    let key = Keypair::from_secret([7; 32]).public();
    if let Ok(cp) = Checkpoint::verify(note, &key, None) {
        // Only a note this key signed can verify; it must carry what it says.
        assert_eq!(cp.note, note);
        assert!(note.starts_with(&cp.origin));
    }
});
