//! `fabnode start` + `fabnode submit` + `fabnode ledger` as a user runs them.

mod common;

use common::*;
use serde_json::json;

#[test]
fn start_submit_verify_then_tamper_is_named() {
    let t = TestDir::new();
    let mut node = t.start(&[]).unwrap();

    let out = t.run(&[
        "submit",
        "--model",
        "digits",
        "--input",
        fixture("sample-7.json").to_str().unwrap(),
    ]);
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert!(so.contains("prediction: 7"), "{so}");
    assert!(so.contains("receipt (verified"), "{so}");
    assert!(so.contains("entry      #0"), "{so}");

    let out = t.run(&[
        "submit",
        "--model",
        "digits",
        "--input",
        fixture("sample-3.npy").to_str().unwrap(),
        "--json",
    ]);
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["receipt_verified"], true);
    assert_eq!(v["receipt"]["seq"], 1);
    let job_id = v["job_id"].as_str().unwrap().to_owned();

    // stdin input
    let mut child = t
        .cmd()
        .args(["submit", "--model", "digits", "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(fixture("sample-7.npy")).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("prediction: 7"));

    // The API finds the job by id; the ledger reads and verifies while the node runs.
    let (status, job) = node.get(&format!("/v1/jobs/{job_id}"));
    assert_eq!(status, 200);
    assert_eq!(job["receipt"]["seq"], 1);
    let (status, _) = node.get(&format!("/v1/jobs/{}", "0".repeat(64)));
    assert_eq!(status, 404);
    assert_eq!(node.api().ledger_head().unwrap().entries, 3);

    let out = t.run(&["ledger", "verify"]);
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert!(so.starts_with("ledger verified: 3 entries"), "{so}");
    let out = t.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ledger"]["entries"], 3);
    assert_eq!(v["models_loaded"][0], "digits");
    let out = t.run(&["ledger", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 3);
    assert_eq!(v["entries"][0]["receipt"]["status"], "ok");

    // Graceful stop on SIGTERM.
    node.signal(libc::SIGTERM);
    let status = node.wait();
    assert!(status.success(), "{}", node.log());
    assert!(node.log().contains("node stopped"), "{}", node.log());
    assert!(!t.path().join("api.addr").exists());

    // One flipped byte in entry 1: verify fails and names it; the node refuses to start only if
    // the tail is bad, so flip the tail too and check that as well.
    flip_entry_byte(t.path(), 1, 3);
    let out = t.run(&["ledger", "verify"]);
    let (so, se) = text(&out);
    assert!(!out.status.success());
    assert!(se.contains("entry 1 is bad"), "{so}{se}");
    let out = t.run(&["ledger", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["bad_seq"].as_u64()),
        (Some(false), Some(1))
    );

    // The tail check reads the last two entries; entry 1 is among them.
    let err = t
        .start(&[])
        .err()
        .expect("a tampered tail must stop the node from starting");
    assert!(
        err.contains("tail check failed") && err.contains("entry 1 is bad"),
        "{err}"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_nothing_reaches_the_ledger() {
    let t = TestDir::new();
    let node = t
        .start(&[("FABNODE_LIMITS_INPUT_BYTES_MAX", "1024")])
        .unwrap();

    // CLI-side: unknown model, malformed and truncated files.
    let out = t.run(&[
        "submit",
        "--model",
        "nope",
        "--input",
        fixture("sample-7.json").to_str().unwrap(),
    ]);
    let (_, se) = text(&out);
    assert!(!out.status.success());
    assert!(
        se.contains("unknown model `nope`") && se.contains("digits"),
        "{se}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, r#"{"dtype":"f32","shape":[1,1,8,8],"data":[1,2"#).unwrap();
    let out = t.run(&[
        "submit",
        "--model",
        "digits",
        "--input",
        bad_json.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("not a valid .npy or tensor JSON"),
        "{}",
        text(&out).1
    );

    let npy = std::fs::read(fixture("sample-7.npy")).unwrap();
    let truncated = dir.path().join("trunc.npy");
    std::fs::write(&truncated, &npy[..npy.len() - 7]).unwrap();
    let out = t.run(&[
        "submit",
        "--model",
        "digits",
        "--input",
        truncated.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("data bytes"), "{}", text(&out).1);

    // API-side: every refusal is a 4xx with a JSON error body.
    let cases = [
        (
            json!({"model": "digits", "input": {"dtype": "f32", "shape": [1, 64], "data": vec![0.0; 64]}}),
            400,
            "invalid_input",
        ),
        (
            json!({"model": "digits", "input": {"dtype": "f64", "shape": [1, 1, 8, 8], "data": vec![0.0; 64]}}),
            400,
            "invalid_input",
        ),
        (
            json!({"model": "digits", "input": {"dtype": "f32", "shape": [1, 1, 8, 7], "data": vec![0.0; 56]}}),
            400,
            "invalid_input",
        ),
        (
            json!({"model": "digits", "input": {"dtype": "f32", "shape": [1, 1, 8, 8], "data": vec![0.0; 63]}}),
            400,
            "bad_tensor",
        ),
        (
            json!({"model": "digits", "input": {"dtype": "f32", "shape": [8, 1, 8, 8], "data": vec![0.0; 512]}}),
            413,
            "input_too_large",
        ),
        (
            json!({"model": "nope", "input": image_json(0)}),
            404,
            "unknown_model",
        ),
        (json!({"model": "digits"}), 400, "bad_request"),
        (
            json!({"model": "digits", "input": image_json(0), "extra": 1}),
            400,
            "bad_request",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = node.post_json("/v1/jobs", &body);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{v}"
        );
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, v) = node.post_raw("/v1/jobs", b"{not json");
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let big = vec![b' '; 17 << 20];
    let (s, v) = node.post_raw("/v1/jobs", &big);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    let (s, v) = node.get("/v1/no/such/route");
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = node.get("/v1/ledger/entries?limit=0");
    assert_eq!(s, 400);

    // Nothing was recorded, and the node still serves.
    assert_eq!(node.api().ledger_head().unwrap().entries, 0);
    let (s, v) = node.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(5)}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(node.api().ledger_head().unwrap().entries, 1);

    // A model registered while the node runs is picked up on its first job.
    let out = t.run(&[
        "model",
        "add",
        "digits-v2",
        fixture("digits.onnx").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let (s, v) = node.post_json(
        "/v1/jobs",
        &json!({"model": "digits-v2", "input": image_json(6)}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["receipt"]["receipt"]["model"], "digits-v2");
}

#[test]
fn loose_key_permissions_port_in_use_and_corrupt_ledger_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestDir::new();
    let key = t.path().join("node.key");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = t.start(&[]).err().unwrap();
    assert!(
        err.contains("chmod 600") && err.contains("mode 644"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = t.run(&["start", "--api-listen", &port]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("address already in use"),
        "{}",
        text(&out).1
    );

    std::fs::write(t.path().join("ledger.redb"), vec![0x5Au8; 4096]).unwrap();
    let err = t.start(&[]).err().unwrap();
    assert!(err.contains("corrupt"), "{err}");
    let out = t.run(&["ledger", "verify"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("corrupt"), "{}", text(&out).1);
}

#[test]
fn keys_config_and_model_commands() {
    let t = TestDir::new();
    let out = t.run(&["keys", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    // init is idempotent: the same key.
    let out = t.run(&["keys", "init", "--json"]);
    let v2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["peer_id"].clone(), v2["created"].clone()),
        (v2["peer_id"].clone(), json!(false))
    );

    std::fs::write(
        t.path().join("config.toml"),
        "[api]\nlisten = \"127.0.0.1:9001\"\n",
    )
    .unwrap();
    let out = t
        .cmd()
        .args(["config", "show", "--json"])
        .env("FABNODE_INFERENCE_WORKERS", "3")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["api"]["listen"].as_str(),
            v["inference"]["workers"].as_u64()
        ),
        (Some("127.0.0.1:9001"), Some(3))
    );
    let out = t
        .cmd()
        .args(["config", "show"])
        .env("FABNODE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let se = text(&out).1;
    assert!(
        se.contains("format") && se.contains("text") && se.contains("json"),
        "{se}"
    );

    let out = t.run(&["model", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["digits"]["digest"].as_str().unwrap().len() == 64);
    let out = t.run(&[
        "model",
        "add",
        "bad name",
        fixture("digits.onnx").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let out = t.run(&["model", "add", "x", fixture("meta.json").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("not a loadable ONNX model"),
        "{}",
        text(&out).1
    );
}

#[test]
fn checkpoint_prove_verify_receipt_consistency_export_and_evidence() {
    let t = TestDir::new();
    let node = t.start(&[]).unwrap();
    let mut jobs = Vec::new();
    for i in 0..12 {
        let (s, v) = node.post_json(
            "/v1/jobs",
            &json!({"model": "digits", "input": image_json(i)}),
        );
        assert_eq!(s, 200, "{v}");
        jobs.push(v["job_id"].as_str().unwrap().to_owned());
    }
    let out = t.run(&["ledger", "checkpoint", "--json"]);
    let cp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cp["size"], 12);
    assert!(
        cp["origin"]
            .as_str()
            .unwrap()
            .starts_with("fabnode/local/12D3KooW")
    );

    // A receipt verifies with no node and no data dir.
    let receipt = t.path().join("r.json");
    let out = t.run(&[
        "ledger",
        "prove",
        &jobs[7],
        "--out",
        receipt.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    drop(node);
    let out = std::process::Command::new(bin())
        .args([
            "ledger",
            "verify-receipt",
            receipt.to_str().unwrap(),
            "--json",
        ])
        .env_remove("FABNODE_DATA_DIR")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["seq"].as_u64()),
        (Some(true), Some(7)),
        "{v}"
    );
    assert_eq!(v["job_id"].as_str(), Some(jobs[7].as_str()));

    // A tampered receipt fails with the reason.
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    r["tree_size"] = json!(13);
    std::fs::write(&receipt, serde_json::to_vec(&r).unwrap()).unwrap();
    let out = t.run(&["ledger", "verify-receipt", receipt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("tree size 13"), "{}", text(&out).1);

    let out = t.run(&["ledger", "consistency", "3"]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let proof: Vec<Vec<u8>> = c["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect();
    fab_ledger::merkle::verify_consistency(
        3,
        12,
        &hex::decode(c["old_root"].as_str().unwrap()).unwrap(),
        &hex::decode(c["new_root"].as_str().unwrap()).unwrap(),
        &proof,
    )
    .unwrap();

    let out = t.run(&["ledger", "export", "--json"]);
    let ex: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ex["size"], 12);
    assert_eq!(ex["roots"].as_array().unwrap().len(), 13);
    assert_eq!(ex["inclusion_proofs"].as_array().unwrap().len(), 12);

    // Evidence: two notes for one size with different roots, signed by this node's key.
    let key_bytes = std::fs::read(t.path().join("node.key")).unwrap();
    let key = fab_ledger::Keypair::from_secret(key_bytes.try_into().unwrap());
    let a = fab_ledger::checkpoint::Checkpoint::sign(&key, "local", 12, [1; 32]);
    let b = fab_ledger::checkpoint::Checkpoint::sign(&key, "local", 12, [2; 32]);
    let ev = fab_ledger::evidence::Evidence::checkpoints(&key.public(), &a, &b);
    let evf = t.path().join("ev.json");
    std::fs::write(&evf, serde_json::to_vec(&ev).unwrap()).unwrap();
    let out = t.run(&["ledger", "verify-evidence", evf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("stop trusting this feed"));
    let ev = fab_ledger::evidence::Evidence::checkpoints(&key.public(), &a, &a);
    std::fs::write(&evf, serde_json::to_vec(&ev).unwrap()).unwrap();
    let out = t.run(&["ledger", "verify-evidence", evf.to_str().unwrap()]);
    assert!(!out.status.success());
}
