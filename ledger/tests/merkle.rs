//! The RFC 9162 module against outside references: the transparency-dev vectors, the roots and
//! proofs in their README, and rs_merkle as a differential oracle.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use fab_ledger::merkle::{
    Frontier, Hash, MemoryTree, consistency_proof, consistency_proof_len, empty_root,
    inclusion_proof, inclusion_proof_len, leaf_hash, node_hash, root, verify_consistency,
    verify_inclusion,
};

fn vectors() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/merkle/testdata");
    assert!(
        dir.is_dir(),
        "RFC 9162 vectors not found at {} (they are committed with the repository)",
        dir.display()
    );
    dir
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(json_files(&p));
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    v.as_str()
        .map(|s| B64.decode(s).unwrap())
        .unwrap_or_default()
}

fn proof(v: &serde_json::Value) -> Vec<Vec<u8>> {
    v.as_array()
        .map(|a| a.iter().map(b64).collect())
        .unwrap_or_default()
}

fn hex32(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn every_inclusion_vector() {
    let files = json_files(&vectors().join("inclusion"));
    assert!(
        files.len() >= 80,
        "found only {} inclusion vectors",
        files.len()
    );
    let (mut good, mut bad) = (0, 0);
    for f in files {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let got = verify_inclusion(
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &b64(&v["leafHash"]),
            &proof(&v["proof"]),
            &b64(&v["root"]),
        );
        let want_err = v["wantErr"].as_bool().unwrap();
        assert_eq!(got.is_err(), want_err, "{}: {got:?}", f.display());
        if want_err { bad += 1 } else { good += 1 }
    }
    assert!(good >= 5 && bad >= 60, "{good} good, {bad} bad");
}

#[test]
fn every_consistency_vector() {
    let files = json_files(&vectors().join("consistency"));
    assert!(
        files.len() >= 90,
        "found only {} consistency vectors",
        files.len()
    );
    for f in files {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let got = verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            &b64(&v["root1"]),
            &b64(&v["root2"]),
            &proof(&v["proof"]),
        );
        assert_eq!(
            got.is_err(),
            v["wantErr"].as_bool().unwrap(),
            "{}: {got:?}",
            f.display()
        );
    }
}

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn readme_roots_proofs_and_hasher_checks() {
    assert_eq!(hex::encode(empty_root()), ROOTS[0]);
    assert_eq!(
        hex::encode(leaf_hash(b"L123456")),
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    );
    assert_eq!(
        hex::encode(node_hash(b"N123", b"N456")),
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    );
    let mut tree = MemoryTree::new();
    assert_eq!(hex::encode(tree.root()), ROOTS[0]);
    for (n, leaf) in LEAVES.iter().enumerate() {
        tree.push_leaf_data(&hex::decode(leaf).unwrap());
        assert_eq!(hex::encode(tree.root()), ROOTS[n + 1], "root of {}", n + 1);
        assert_eq!(
            hex::encode(root(&tree, n as u64 + 1).unwrap()),
            ROOTS[n + 1]
        );
    }
    // Roots of every earlier size from the stored nodes of the size-8 tree.
    for (n, want) in ROOTS.iter().enumerate() {
        assert_eq!(hex::encode(root(&tree, n as u64).unwrap()), *want);
    }
    let path = inclusion_proof(&tree, 5, 8).unwrap();
    let want: Vec<Hash> = [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    .map(hex32)
    .to_vec();
    assert_eq!(path, want);
    let cons = consistency_proof(&tree, 6, 8).unwrap();
    let want: Vec<Hash> = [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    .map(hex32)
    .to_vec();
    assert_eq!(cons, want);
}

fn tree_of(n: u64) -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..n {
        t.push_leaf_data(&i.to_le_bytes());
    }
    t
}

#[test]
fn every_proof_up_to_70_verifies_and_every_mutation_fails() {
    let big = tree_of(70);
    for size in 1..=70u64 {
        let r = root(&big, size).unwrap();
        for index in 0..size {
            let leaf = leaf_hash(&index.to_le_bytes());
            let p = inclusion_proof(&big, index, size).unwrap();
            assert_eq!(p.len(), inclusion_proof_len(index, size));
            verify_inclusion(index, size, &leaf, &p, &r).unwrap();
            // Wrong index, wrong size, truncated, padded, each bit of each hash flipped.
            assert!(
                verify_inclusion(index ^ 1, size, &leaf, &p, &r).is_err()
                    || size == 1 && index == 0
            );
            // The root does not bind the size (a checkpoint signs both); a wrong size with that
            // size's own root must fail.
            if size < 70 {
                let r_next = root(&big, size + 1).unwrap();
                assert!(verify_inclusion(index, size + 1, &leaf, &p, &r_next).is_err());
            }
            if !p.is_empty() {
                assert!(verify_inclusion(index, size, &leaf, &p[..p.len() - 1], &r).is_err());
                let mut reordered = p.clone();
                reordered.reverse();
                if reordered != p {
                    assert!(verify_inclusion(index, size, &leaf, &reordered, &r).is_err());
                }
            }
            let mut padded = p.clone();
            padded.push(r);
            assert!(verify_inclusion(index, size, &leaf, &padded, &r).is_err());
            if size <= 17 {
                for e in 0..p.len() {
                    for bit in 0..256 {
                        let mut m = p.clone();
                        m[e][bit / 8] ^= 1 << (bit % 8);
                        assert!(verify_inclusion(index, size, &leaf, &m, &r).is_err());
                    }
                }
            }
        }
        for first in 1..=size {
            let r1 = root(&big, first).unwrap();
            let p = consistency_proof(&big, first, size).unwrap();
            if first < size {
                assert_eq!(
                    p.len(),
                    consistency_proof_len(first, size),
                    "{first}->{size}"
                );
            }
            verify_consistency(first, size, &r1, &r, &p).unwrap();
            if first < size {
                assert!(
                    verify_consistency(first, size, &r, &r1, &p).is_err(),
                    "swapped roots"
                );
                assert!(
                    verify_consistency(first + 1, size, &r1, &r, &p).is_err()
                        || first + 1 == size && p.is_empty()
                );
                assert!(verify_consistency(first, size, &r1, &r, &p[..p.len() - 1]).is_err());
                for e in 0..p.len() {
                    let mut m = p.clone();
                    m[e][0] ^= 0x80;
                    assert!(verify_consistency(first, size, &r1, &r, &m).is_err());
                }
            }
        }
    }
}

#[test]
fn frontier_rebuilt_from_stored_nodes_continues_the_tree() {
    let t = tree_of(1000);
    for size in [0u64, 1, 2, 3, 511, 512, 513, 999, 1000] {
        let mut f = Frontier::from_source(&t, size).unwrap();
        assert_eq!(f.root(), root(&t, size).unwrap());
        let mut fresh = tree_of(size);
        for i in size..size + 5 {
            let leaf = leaf_hash(&i.to_le_bytes());
            f.append(leaf);
            fresh.push_leaf_hash(leaf);
        }
        assert_eq!(f.root(), fresh.root());
    }
}

/// RFC 9162 hashing for rs_merkle: leaves arrive pre-hashed, nodes are domain-separated.
#[derive(Clone)]
struct Rfc9162;

impl rs_merkle::Hasher for Rfc9162 {
    type Hash = [u8; 32];
    fn hash(data: &[u8]) -> [u8; 32] {
        leaf_hash(data)
    }
    fn concat_and_hash(left: &[u8; 32], right: Option<&[u8; 32]>) -> [u8; 32] {
        match right {
            Some(r) => node_hash(left, r),
            None => *left,
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    #[test]
    fn rs_merkle_agrees_on_roots_and_inclusion_paths(
        leaves in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..300),
        pick in proptest::num::usize::ANY,
    ) {
        let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let oracle = rs_merkle::MerkleTree::<Rfc9162>::from_leaves(&hashes);
        let mut ours = MemoryTree::new();
        for h in &hashes {
            ours.push_leaf_hash(*h);
        }
        proptest::prop_assert_eq!(oracle.root(), Some(ours.root()));
        let index = pick % hashes.len();
        let theirs = oracle.proof(&[index]).proof_hashes().to_vec();
        let mine = inclusion_proof(&ours, index as u64, hashes.len() as u64).unwrap();
        proptest::prop_assert_eq!(theirs, mine);
    }

    #[test]
    fn append_prove_verify_and_reject_mutations(
        n in 1u64..400, a in proptest::num::u64::ANY, b in proptest::num::u64::ANY, bit in 0usize..256,
    ) {
        let t = tree_of(n);
        let index = a % n;
        let first = 1 + b % n;
        let r = t.root();
        let leaf = leaf_hash(&index.to_le_bytes());
        let p = inclusion_proof(&t, index, n).unwrap();
        proptest::prop_assert!(verify_inclusion(index, n, &leaf, &p, &r).is_ok());
        if !p.is_empty() {
            let mut m = p.clone();
            let e = (a as usize) % m.len();
            m[e][bit / 8] ^= 1 << (bit % 8);
            proptest::prop_assert!(verify_inclusion(index, n, &leaf, &m, &r).is_err());
        }
        let r1 = root(&t, first).unwrap();
        let c = consistency_proof(&t, first, n).unwrap();
        proptest::prop_assert!(verify_consistency(first, n, &r1, &r, &c).is_ok());
        if !c.is_empty() {
            let mut m = c.clone();
            let e = (b as usize) % m.len();
            m[e][bit / 8] ^= 1 << (bit % 8);
            proptest::prop_assert!(verify_consistency(first, n, &r1, &r, &m).is_err());
        }
    }
}
