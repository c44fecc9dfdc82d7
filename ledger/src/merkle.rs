//! RFC 9162 §2.1 Merkle trees with SHA-256: hashing, O(log n) append, tree heads, inclusion
//! paths and consistency proofs, and their verifiers.
//!
//! Sans-IO: nothing here stores anything. The tree is addressed by complete subtrees: node
//! `(level, index)` is the root of leaves `[index·2^level, (index+1)·2^level)`. Such a node never
//! changes once its last leaf exists, so a store keeps each one as it completes
//! ([`Frontier::append`] returns them) and serves them back through [`NodeSource`]. Roots of any
//! earlier size and every proof are computed from those stored nodes in O(log n) reads; no
//! full tree is ever held in memory.
//!
//! The verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 exactly, take the caller's bytes as
//! given (hashes of any length are refused, not truncated) and check that a proof has exactly
//! the length the sizes imply.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Where complete-subtree hashes come from: memory, a redb table, a proof-serving cache.
pub trait NodeSource {
    type Error;
    /// The hash of the complete subtree `(level, index)`. Only called for subtrees whose last
    /// leaf exists in the tree being proven.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be produced.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProveError<E> {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("size {first} is larger than size {second}")]
    SizesReversed { first: u64, second: u64 },
    #[error("size {size} is larger than the tree ({available})")]
    BeyondTree { size: u64, available: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    FromEmpty,
    #[error("reading a tree node: {0}")]
    Source(E),
}

/// Why a proof did not verify.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyProofError {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("size {first} is larger than size {second}")]
    SizesReversed { first: u64, second: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    FromEmpty,
    #[error("proof has {found} hashes; sizes {first} and {second} need exactly {expected}")]
    WrongLength {
        first: u64,
        second: u64,
        expected: usize,
        found: usize,
    },
    #[error("proof element {0} is not a 32-byte hash")]
    BadElement(usize),
    #[error("the proof does not lead to the given root")]
    RootMismatch,
    #[error("the proof does not lead to the given old root")]
    OldRootMismatch,
}

fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n > 1);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Hash of the leaf range `[start, end)`, where the range is one the RFC's recursion produces:
/// either a complete, aligned subtree, or a range whose left part is one.
fn range_hash<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let len = end - start;
    if len.is_power_of_two() && start.is_multiple_of(len) {
        return src.node(len.trailing_zeros(), start >> len.trailing_zeros());
    }
    let k = largest_power_of_two_below(len);
    let left = range_hash(src, start, start + k)?;
    let right = range_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(src, 0, size)
}

/// RFC 9162 §2.1.3.1 `PATH(index, D[size])`, leaf to root order.
pub fn inclusion_proof<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if index >= size {
        return Err(ProveError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::with_capacity(64);
    // Walk down from the root, collecting siblings, then reverse (the RFC lists leaf first).
    let (mut start, mut end, mut m) = (0u64, size, index);
    while end - start > 1 {
        let k = largest_power_of_two_below(end - start);
        if m < k {
            out.push(range_hash(src, start + k, end).map_err(ProveError::Source)?);
            end = start + k;
        } else {
            out.push(range_hash(src, start, start + k).map_err(ProveError::Source)?);
            start += k;
            m -= k;
        }
    }
    out.reverse();
    Ok(out)
}

/// RFC 9162 §2.1.4.1 `PROOF(first, D[second])`.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if first > second {
        return Err(ProveError::SizesReversed { first, second });
    }
    if first == 0 {
        return Err(ProveError::FromEmpty);
    }
    let mut out = Vec::with_capacity(64);
    // SUBPROOF(m, D[start:end], b), iteratively; siblings are collected root-first.
    let (mut start, mut end, mut m, mut complete) = (0u64, second, first, true);
    while m != end - start {
        let k = largest_power_of_two_below(end - start);
        if m <= k {
            out.push(range_hash(src, start + k, end).map_err(ProveError::Source)?);
            end = start + k;
        } else {
            out.push(range_hash(src, start, start + k).map_err(ProveError::Source)?);
            start += k;
            m -= k;
            complete = false;
        }
    }
    if !complete {
        out.push(range_hash(src, start, end).map_err(ProveError::Source)?);
    }
    out.reverse();
    Ok(out)
}

fn as_hash(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

/// How many proof hashes the RFC 9162 verifier loop consumes from the point `(fn, sn)`: it
/// runs that loop on the sizes alone, so the count is exact by construction.
fn path_len(mut fn_: u64, mut sn: u64) -> usize {
    let mut count = 0;
    while sn != 0 {
        count += 1;
        if fn_ & 1 == 1 || fn_ == sn {
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    count
}

/// The number of hashes in an inclusion path for `index` in a tree of `size` (`index < size`).
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    path_len(index, size - 1)
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf `leaf` at `index` in the tree of `size` with `root`?
pub fn verify_inclusion<P: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[P],
    root: &[u8],
) -> Result<(), VerifyProofError> {
    if index >= size {
        return Err(VerifyProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(VerifyProofError::WrongLength {
            first: index,
            second: size,
            expected,
            found: proof.len(),
        });
    }
    let mut r = as_hash(leaf).ok_or(VerifyProofError::RootMismatch)?;
    let (mut fn_, mut sn) = (index, size - 1);
    for (i, p) in proof.iter().enumerate() {
        let p = as_hash(p.as_ref()).ok_or(VerifyProofError::BadElement(i))?;
        if sn == 0 {
            return Err(VerifyProofError::RootMismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(&p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, &p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 || r.as_slice() != root {
        return Err(VerifyProofError::RootMismatch);
    }
    Ok(())
}

/// The number of hashes in a consistency proof from `first` to `second` (`0 < first < second`).
pub fn consistency_proof_len(first: u64, second: u64) -> usize {
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // The verifier's path starts with one seed hash (the old root itself when `first` is a
    // power of two, and then it is not sent) and consumes `path_len` more.
    1 + path_len(fn_, sn) - usize::from(first.is_power_of_two())
}

/// RFC 9162 §2.1.4.2: is the tree of `second` with `root2` an append-only extension of the tree
/// of `first` with `root1`?
pub fn verify_consistency<P: AsRef<[u8]>>(
    first: u64,
    second: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[P],
) -> Result<(), VerifyProofError> {
    if first > second {
        return Err(VerifyProofError::SizesReversed { first, second });
    }
    if first == 0 {
        return Err(VerifyProofError::FromEmpty);
    }
    if first == second {
        if !proof.is_empty() {
            return Err(VerifyProofError::WrongLength {
                first,
                second,
                expected: 0,
                found: proof.len(),
            });
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(VerifyProofError::RootMismatch)
        };
    }
    let expected = consistency_proof_len(first, second);
    if proof.len() != expected {
        return Err(VerifyProofError::WrongLength {
            first,
            second,
            expected,
            found: proof.len(),
        });
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(as_hash(root1).ok_or(VerifyProofError::OldRootMismatch)?);
    }
    for (i, p) in proof.iter().enumerate() {
        path.push(as_hash(p.as_ref()).ok_or(VerifyProofError::BadElement(i))?);
    }
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(VerifyProofError::RootMismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(VerifyProofError::RootMismatch);
    }
    if fr.as_slice() != root1 {
        return Err(VerifyProofError::OldRootMismatch);
    }
    if sr.as_slice() != root2 {
        return Err(VerifyProofError::RootMismatch);
    }
    Ok(())
}

/// The right border of a tree: the roots of its complete subtrees, largest first. Appending a
/// leaf touches only this border, so it costs O(log n) hashes and no reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)`, levels strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

/// A complete subtree that came into existence, to be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub level: u32,
    pub index: u64,
    pub hash: Hash,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Rebuilds the border of a tree of `size` from stored complete subtrees (O(log n) reads).
    pub fn from_source<S: NodeSource>(src: &S, size: u64) -> Result<Self, S::Error> {
        let mut nodes = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                nodes.push((level, src.node(level, start >> level)?));
                start += 1u64 << level;
            }
        }
        Ok(Frontier { size, nodes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns every complete subtree this created (the leaf itself at
    /// level 0, then any parents it completed), in order.
    pub fn append(&mut self, leaf: Hash) -> Vec<NewNode> {
        let index = self.size;
        let mut created = vec![NewNode {
            level: 0,
            index,
            hash: leaf,
        }];
        let (mut level, mut hash) = (0u32, leaf);
        while let Some(&(l, left)) = self.nodes.last() {
            if l != level {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            created.push(NewNode {
                level,
                index: index >> level,
                hash,
            });
        }
        self.nodes.push((level, hash));
        self.size += 1;
        created
    }

    /// The root of the current tree.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(&(_, last)) => iter.fold(last, |acc, (_, left)| node_hash(left, &acc)),
        }
    }
}

/// Complete-subtree hashes in memory, for tests, tools and small trees.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    frontier: Frontier,
    /// `levels[l][i]` = node `(l, i)`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        MemoryTree::default()
    }

    pub fn push_leaf_data(&mut self, data: &[u8]) {
        self.push_leaf_hash(leaf_hash(data));
    }

    pub fn push_leaf_hash(&mut self, leaf: Hash) {
        for n in self.frontier.append(leaf) {
            let l = n.level as usize;
            if self.levels.len() <= l {
                self.levels.resize_with(l + 1, Vec::new);
            }
            debug_assert_eq!(self.levels[l].len() as u64, n.index);
            self.levels[l].push(n.hash);
        }
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

/// A node a [`MemoryTree`] does not hold.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("no tree node at level {level}, index {index}")]
pub struct MissingNode {
    pub level: u32,
    pub index: u64,
}

impl NodeSource for MemoryTree {
    type Error = MissingNode;
    fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}
