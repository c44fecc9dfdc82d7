//! Proofs from untrusted peers: arbitrary sizes, indices and hash lists must be refused
//! cleanly, and a proof the verifier accepts must be the one the tree produces.
#![no_main]
use fab_ledger::merkle::{
    MemoryTree, consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency,
    verify_inclusion,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let size = 1 + u64::from(data[0]) % 64;
    let a = u64::from(data[1]);
    let b = u64::from(data[2]);
    let mut tree = MemoryTree::new();
    for i in 0..size {
        tree.push_leaf_data(&i.to_le_bytes());
    }
    let r = tree.root();
    // The remaining bytes as a proof: chunks of up to 32 bytes (short ones must be refused).
    let proof: Vec<&[u8]> = data[3..].chunks(32).collect();
    let index = a % (size + 2);
    let leaf = leaf_hash(&index.to_le_bytes());
    if verify_inclusion(index, size, &leaf, &proof, &r).is_ok() {
        let real = inclusion_proof(&tree, index, size).expect("index is in range");
        assert!(real.iter().map(|h| &h[..]).eq(proof.iter().copied()), "accepted a proof the tree did not make");
    }
    let first = b % (size + 2);
    if let Ok(r1) = root(&tree, first.min(size)) {
        if verify_consistency(first, size, &r1, &r, &proof).is_ok() && first < size {
            let real = consistency_proof(&tree, first, size).expect("sizes are in range");
            assert!(real.iter().map(|h| &h[..]).eq(proof.iter().copied()), "accepted a consistency proof the tree did not make");
        }
    }
});
