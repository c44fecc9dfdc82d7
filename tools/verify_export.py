#!/usr/bin/env python3
"""Checks a `fabnode ledger export --json` file with implementations that share no code with
fabnode:

1. pymerkle (an independent RFC 9162 implementation, security mode: 0x00/0x01 prefixes)
   rebuilds the tree from the exported entry bytes; every leaf hash and the root at every size
   must equal the export's.
2. Every exported inclusion path is fed to pymerkle's own verifier against the exported root.
3. Every exported consistency proof is checked with pymerkle's consistency verifier between the
   exported roots, and with a transcription of RFC 9162 §2.1.4.2 below.
4. Every checkpoint note's ed25519 signature is checked with the `cryptography` package against
   the feed's public key (C2SP signed-note key id included), and its root must be the exported
   root at its size.

    python3 -m pip install -r tools/requirements.txt
    fabnode ledger export --json --out export.json
    python3 tools/verify_export.py export.json
"""
import base64
import hashlib
import json
import sys

from pymerkle import InclusionProof, InmemoryTree, verify_consistency, verify_inclusion

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover
    Ed25519PublicKey = None


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def rfc9162_verify_consistency(first, second, root1, root2, proof):
    """RFC 9162 section 2.1.4.2, transcribed from the RFC text."""
    if first == second:
        return not proof and root1 == root2
    if first == 0 or first > second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, root1)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def check_note(note, pub, roots):
    body, sigs = note.split("\n\n", 1)
    origin, size, root_b64 = body.split("\n")
    text = (body + "\n").encode()
    key_id = hashlib.sha256(origin.encode() + b"\n\x01" + pub).digest()[:4]
    ok = False
    for line in sigs.rstrip("\n").split("\n"):
        name, sig = line[len("\u2014 "):].split(" ", 1)
        blob = base64.b64decode(sig)
        if name == origin and blob[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(pub).verify(blob[4:], text)  # raises if bad
            ok = True
    assert ok, f"checkpoint {size}: no signature by the feed key"
    assert base64.b64decode(root_b64) == roots[int(size)], f"checkpoint {size}: root differs"


def main(path):
    ex = json.load(open(path))
    assert ex["format"] == "fabnode-ledger-export/v1", ex["format"]
    size = ex["size"]
    tree = InmemoryTree(algorithm="sha256")
    assert tree.security, "pymerkle must run in security mode (RFC 9162 prefixes)"
    for e in ex["entries"]:
        tree.append_entry(bytes.fromhex(e["entry"]))
    assert tree.get_size() == size
    for i, e in enumerate(ex["entries"]):
        assert e["seq"] == i
        assert tree.get_leaf(i + 1) == bytes.fromhex(e["leaf_hash"]), f"leaf {i}"
    roots = {r["size"]: bytes.fromhex(r["root"]) for r in ex["roots"]}
    assert roots[0] == hashlib.sha256(b"").digest()
    for n in range(1, size + 1):
        assert tree.get_root(n) == roots[n], f"root of size {n}"

    for p in ex["inclusion_proofs"]:
        i, n = p["index"], p["size"]
        ours = [bytes.fromhex(h) for h in p["path"]]
        leaf = bytes.fromhex(ex["entries"][i]["leaf_hash"])
        theirs = tree.prove_inclusion(i + 1, n)
        # pymerkle's path is the leaf followed by the RFC 9162 audit path; its `rule` says
        # which side each hash joins. Our path goes through pymerkle's verifier, against our root.
        assert theirs.path[1:] == ours, f"inclusion path of {i} in {n}"
        proof = InclusionProof("sha256", True, n, i + 1, theirs.rule, [leaf] + ours)
        verify_inclusion(leaf, roots[n], proof)

    for c in ex["consistency_proofs"]:
        m, n = c["old_size"], c["new_size"]
        ours = [bytes.fromhex(h) for h in c["path"]]
        verify_consistency(roots[m], roots[n], tree.prove_consistency(m, n))
        assert rfc9162_verify_consistency(m, n, roots[m], roots[n], ours), f"consistency {m}->{n}"

    checked_notes = 0
    if Ed25519PublicKey is not None:
        pub = bytes.fromhex(ex["feed_public_key"])
        for cp in ex["checkpoints"]:
            check_note(cp["note"], pub, roots)
            checked_notes += 1
    print(
        f"export verified independently: {size} entries, {size} roots, "
        f"{len(ex['inclusion_proofs'])} inclusion proofs (pymerkle), "
        f"{len(ex['consistency_proofs'])} consistency proofs (pymerkle + RFC 9162 transcription), "
        f"{checked_notes} checkpoint signatures (cryptography ed25519)"
    )


if __name__ == "__main__":
    main(sys.argv[1])
