//! Placement across real `fabnode` processes: the requester's auction over `/fabnode/bid/1`,
//! jobs' weights and SLAs, `--explain`, failover when the executor is killed, and a flooded
//! node losing jobs until its queue drains.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::mesh::*;
use common::*;
use serde_json::{Value, json};

fn spin_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/spin/spin.onnx")
}

fn spin_input() -> Value {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/spin/sample.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A data dir with digits and, when asked, the spin model.
fn data_dir(spin: bool) -> TestDir {
    let t = TestDir::new();
    if spin {
        let out = t.run(&["model", "add", "spin", spin_model().to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out).1);
    }
    t
}

/// `base` plus scheduler settings, with fast telemetry and a bid window long enough that no
/// honest bid is cut off on a loaded machine (the window closes once every bid is in).
fn with(mut base: Vec<(String, String)>, settings: &[(&str, &str)]) -> Vec<(String, String)> {
    base.push(("FABNODE_TELEMETRY_EVERY_MS".into(), "200".into()));
    base.push(("FABNODE_SCHEDULER_BID_WINDOW_MS".into(), "3000".into()));
    for (k, v) in settings {
        base.push((format!("FABNODE_{}", k.to_uppercase()), (*v).into()));
    }
    base
}

/// A peer's entry in `node`'s telemetry view.
fn report_of(node: &RunningNode, peer: &str) -> Option<fab_client::types::Telemetry> {
    node.api()
        .telemetry()
        .ok()?
        .peers
        .into_iter()
        .find(|p| p.peer_id.as_deref() == Some(peer))
}

fn wait_for_reports(node: &RunningNode, peers: &[&str]) {
    wait_for(
        "the requester to hold every peer's telemetry",
        Duration::from_secs(30),
        || peers.iter().all(|p| report_of(node, p).is_some()),
    );
}

/// Posts a job and expects a result.
fn place(node: &RunningNode, body: &Value) -> Value {
    let (s, v) = node.post_json("/v1/jobs", body);
    assert_eq!(s, 200, "{v}");
    v
}

/// Posts a job on another thread; the handle gives the status and answer.
fn post_in_background(node: &RunningNode, body: &Value) -> std::thread::JoinHandle<(u16, Value)> {
    let (base, body, agent) = (node.base.clone(), body.clone(), node.agent());
    std::thread::spawn(move || {
        let mut resp = agent
            .post(format!("{base}/v1/jobs"))
            .send_json(&body)
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_json::<Value>().unwrap())
    })
}

fn in_flight(node: &RunningNode) -> u64 {
    node.get_text("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("fabnode_jobs_in_flight "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn candidate<'a>(v: &'a Value, peer: &str) -> &'a Value {
    v["placement"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer_id"] == peer)
        .unwrap_or_else(|| panic!("{peer} is not a candidate: {v}"))
}

const COST_ONLY: &str =
    r#"{"time": 0, "cost": 100, "energy": 0, "cache": 0, "reliability": 0, "battery": 0}"#;
const ENERGY_ONLY: &str =
    r#"{"time": 0, "cost": 0, "energy": 100, "cache": 0, "reliability": 0, "battery": 0}"#;

#[test]
fn two_hundred_jobs_go_where_their_weights_and_tiers_send_them_and_explain_agrees() {
    let network = format!("sw{}", std::process::id());
    let dirs: Vec<TestDir> = (0..5).map(|_| data_dir(false)).collect();
    // B runs on a battery at 10 %, read the way the node reads /sys/class/power_supply.
    let power = dirs[3].path().join("power_supply/BAT0");
    std::fs::create_dir_all(&power).unwrap();
    for (f, v) in [
        ("type", "Battery"),
        ("status", "Discharging"),
        ("capacity", "10"),
    ] {
        std::fs::write(power.join(f), format!("{v}\n")).unwrap();
    }
    let power_dir = dirs[3].path().join("power_supply");
    // R places the jobs: a power-hungry, expensive device. F: a fast, dear cloud node.
    // C: a slow, free edge node. B: free but on a low battery. M: frugal with power.
    let r = start(
        &dirs[0],
        &with(
            mesh_env(&network),
            &[
                ("scheduler_tier", "device"),
                ("scheduler_price_per_s_micros", "50000000"),
                ("scheduler_power_mw", "50000"),
                ("scheduler_speed_permille", "1000"),
            ],
        ),
    );
    let (_, join) = joining_env(&r, &network, TCP);
    let settings: [Vec<(&str, &str)>; 4] = [
        vec![
            ("scheduler_tier", "cloud"),
            ("scheduler_price_per_s_micros", "20000000"),
            ("scheduler_power_mw", "20000"),
            ("scheduler_speed_permille", "4000"),
        ],
        vec![
            ("scheduler_price_per_s_micros", "0"),
            ("scheduler_power_mw", "10000"),
            ("scheduler_speed_permille", "500"),
        ],
        vec![
            ("scheduler_price_per_s_micros", "0"),
            ("scheduler_speed_permille", "1000"),
            ("telemetry_power_supply_dir", power_dir.to_str().unwrap()),
        ],
        vec![
            ("scheduler_price_per_s_micros", "5000000"),
            ("scheduler_power_mw", "1000"),
            ("scheduler_speed_permille", "1000"),
        ],
    ];
    let peers: Vec<RunningNode> = settings
        .iter()
        .zip(&dirs[1..])
        .map(|(s, d)| start(d, &with(join.clone(), s)))
        .collect();
    let ids: Vec<String> = peers.iter().map(peer_id).collect();
    let (f, c, b, m) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let r_id = peer_id(&r);
    wait_for_reports(&r, &[f, c, b, m]);
    assert_eq!(report_of(&r, b).unwrap().battery_permille, Some(100));

    let batches = [
        (
            "cost only",
            80,
            json!({"weights": serde_json::from_str::<Value>(COST_ONLY).unwrap()}),
            c,
        ),
        (
            "energy only",
            80,
            json!({"weights": serde_json::from_str::<Value>(ENERGY_ONLY).unwrap()}),
            m,
        ),
        ("cloud tier only", 40, json!({"tiers": ["cloud"]}), f),
    ];
    let mut placed: BTreeMap<String, u64> = BTreeMap::new();
    let mut i = 0;
    for (what, n, extra, winner) in &batches {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..*n {
            let mut body = json!({"model": "digits", "input": image_json(i), "explain": true});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            i += 1;
            let v = place(&r, &body);
            let executor = v["executor"].as_str().unwrap().to_owned();
            // The receipt is signed by the executor the placement names.
            assert_eq!(v["receipt"]["feed"], executor.as_str(), "{v}");
            assert_eq!(v["placement"]["winners"], json!([executor]), "{v}");
            // B never bids (battery) and says why, unless the job's tiers rule it out first.
            let cb = candidate(&v, b);
            let (standing, reason) = match extra.get("tiers") {
                None => ("declined", "battery low"),
                Some(_) => ("filtered", "tier edge not allowed"),
            };
            assert_eq!(cb["standing"], standing, "{v}");
            assert!(cb["reason"].as_str().unwrap().contains(reason), "{cb}");
            *counts.entry(executor).or_default() += 1;
        }
        eprintln!("{what}: {counts:?}");
        assert_eq!(
            counts,
            BTreeMap::from([(winner.to_string(), *n)]),
            "{what}: every job to {winner}"
        );
        for (k, v) in counts {
            *placed.entry(k).or_default() += v;
        }
    }
    assert_eq!(placed.values().sum::<u64>(), 200);
    assert!(!placed.contains_key(&r_id) && !placed.contains_key(b.as_str()));

    // The CLI's --explain shows the same: the winner starred, B's reason, R as itself.
    let sample = fixture("sample-3.json");
    let out = dirs[0].run(&[
        "submit",
        "--model",
        "digits",
        "--input",
        sample.to_str().unwrap(),
        "--weight",
        "time=0",
        "--weight",
        "cost=100",
        "--weight",
        "energy=0",
        "--weight",
        "cache=0",
        "--weight",
        "reliability=0",
        "--weight",
        "battery=0",
        "--explain",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("placed on {c} in 1 attempt(s)")),
        "{stdout}"
    );
    let table = stdout
        .split("placement: weights")
        .nth(1)
        .expect("a placement table");
    let line = |peer: &str| {
        table
            .lines()
            .find(|l| l.contains(peer))
            .unwrap_or_else(|| panic!("no line for {peer}: {stdout}"))
            .to_owned()
    };
    assert!(line(c).starts_with("* "), "{stdout}");
    assert!(
        line(b).contains("declined") && line(b).contains("battery low"),
        "{stdout}"
    );
    assert!(
        line(&r_id).contains("(self)") && line(&r_id).contains("bid"),
        "{stdout}"
    );
    assert!(
        line(f).starts_with("  ") && line(m).starts_with("  "),
        "{stdout}"
    );

    // Three replicas run on three distinct nodes, whose outputs agree (same model, same input).
    let v = place(
        &r,
        &json!({"model": "digits", "input": image_json(5), "replicas": 3}),
    );
    let reps = v["replicas"].as_array().unwrap();
    let executors: std::collections::BTreeSet<&str> = reps
        .iter()
        .map(|x| x["executor"].as_str().unwrap())
        .collect();
    assert_eq!((reps.len(), executors.len()), (3, 3), "{v}");
    assert_eq!(v["replicas_agree"], true, "{v}");
    assert!(
        reps.iter()
            .all(|x| x["output_digest"] == reps[0]["output_digest"])
    );
    // More replicas than feasible nodes fails at once.
    let (s, v) = r.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(5), "replicas": 6}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("infeasible")),
        "{v}"
    );

    // An infeasible job fails at once and names every candidate's reason.
    let (s, v) = r.post_json(
        "/v1/jobs",
        &json!({"model": "digits", "input": image_json(0), "labels": ["gpu"]}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "infeasible");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lacks label \"gpu\""),
        "{v}"
    );

    // `fabnode jobs` agrees with what happened, job by job.
    let out = dirs[0].run(&["jobs", "--json", "--limit", "1000"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut by_executor: BTreeMap<String, u64> = BTreeMap::new();
    for j in listed["jobs"].as_array().unwrap() {
        for e in j["executors"].as_array().unwrap() {
            *by_executor
                .entry(e.as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    *placed.entry(c.to_string()).or_default() += 1; // the --explain job
    for e in executors {
        *placed.entry(e.to_owned()).or_default() += 1; // the replicated job, on each
    }
    assert_eq!(by_executor, placed);
    // GET /v1/jobs/{id} carries the explanation.
    let last = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["status"] == "ok" && j["executors"] == json!([c]))
        .unwrap();
    let (s, v) = r.get(&format!("/v1/jobs/{}", last["job_id"].as_str().unwrap()));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["placement"]["winners"], json!([c]), "{v}");
    assert_eq!(
        v["placement"]["candidates"].as_array().unwrap().len(),
        5,
        "{v}"
    );
}

#[test]
fn killing_the_executor_mid_job_fails_over_and_the_client_gets_one_result() {
    const TRIALS: usize = 20;
    let network = format!("sk{}", std::process::id());
    // R holds no spin model: it learns its digest from a peer that describes it.
    let (tr, t1, t2) = (data_dir(false), data_dir(true), data_dir(true));
    let r = start(
        &tr,
        &with(mesh_env(&network), &[("scheduler_tier", "device")]),
    );
    let (_, join) = joining_env(&r, &network, TCP);
    let e1_env = with(
        join.clone(),
        &[
            ("scheduler_price_per_s_micros", "0"),
            ("scheduler_speed_permille", "1000"),
        ],
    );
    let mut e1 = start(&t1, &e1_env);
    let e2 = start(
        &t2,
        &with(
            join,
            &[
                ("scheduler_price_per_s_micros", "1000000"),
                ("scheduler_speed_permille", "1000"),
            ],
        ),
    );
    let (e1_id, e2_id) = (peer_id(&e1), peer_id(&e2));
    let body = json!({"model": "spin", "input": spin_input(), "tiers": ["edge"],
                      "weights": serde_json::from_str::<Value>(COST_ONLY).unwrap(),
                      "deadline_ms": 20000, "explain": true});
    let mut e1_started = 0u64;
    for trial in 0..TRIALS {
        // The (re)started E1 is back in R's view.
        wait_for(
            "E1's telemetry since its start",
            Duration::from_secs(30),
            || {
                report_of(&r, &e1_id).is_some_and(|p| p.at_ms > e1_started)
                    && report_of(&r, &e2_id).is_some()
            },
        );
        let client = post_in_background(&r, &body);
        // E1 won (free) and is running it: kill it with no chance to answer.
        wait_for("E1 to start the job", Duration::from_secs(20), || {
            in_flight(&e1) >= 1
        });
        e1.signal(libc::SIGKILL);
        e1.wait();
        let killed = Instant::now();
        let (s, v) = client.join().unwrap();
        eprintln!(
            "trial {trial}: result {:?} after the kill (E2 ran it in {} µs)",
            killed.elapsed(),
            v["receipt"]["receipt"]["timings"]["run_us"]
        );
        assert_eq!(s, 200, "trial {trial}: {v}");
        assert_eq!(v["executor"], e2_id.as_str(), "trial {trial}: {v}");
        assert_eq!(v["receipt"]["feed"], e2_id.as_str());
        assert_eq!(v["placement"]["attempts"], 2, "trial {trial}: {v}");
        // The auction's own time is reported: a call for bids, well under the run's.
        assert!(v["placement"]["decided_ms"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(candidate(&v, &e1_id)["standing"], "failed", "{v}");
        assert_eq!(candidate(&v, &e2_id)["standing"], "succeeded", "{v}");
        // One result: the answer has one set of outputs; E2 recorded the job once.
        assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
        e1_started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        e1 = start(&t1, &e1_env);
    }
    // E2's ledger holds exactly one execution per trial; R lists every job as done in two
    // attempts.
    assert_eq!(e2.api().ledger_head().unwrap().entries, TRIALS as u64);
    let jobs = r.api().jobs(100).unwrap().jobs;
    assert_eq!(jobs.len(), TRIALS);
    assert!(
        jobs.iter().all(|j| j.status == "ok" && j.attempts == 2),
        "{jobs:?}"
    );
}

#[test]
fn a_flooded_node_stops_winning_until_its_queue_drains() {
    let network = format!("sf{}", std::process::id());
    let (tr, tw, tx) = (data_dir(false), data_dir(true), data_dir(true));
    let r = start(
        &tr,
        &with(mesh_env(&network), &[("scheduler_tier", "device")]),
    );
    let (_, join) = joining_env(&r, &network, TCP);
    let one_worker = |price: &'static str| {
        with(
            join.clone(),
            &[
                ("inference_workers", "1"),
                ("scheduler_price_per_s_micros", price),
                ("scheduler_speed_permille", "1000"),
            ],
        )
    };
    // W is free, X costs a little: idle, W wins; flooded, its queue costs more time than X's
    // price is worth.
    let w = start(&tw, &one_worker("0"));
    let x = start(&tx, &one_worker("100000"));
    let (w_id, x_id) = (peer_id(&w), peer_id(&x));
    wait_for_reports(&r, &[&w_id, &x_id]);
    let probe = json!({"model": "spin", "input": spin_input(), "tiers": ["edge"],
                       "weights": {"time": 100, "cost": 20, "energy": 0, "cache": 0,
                                   "reliability": 0, "battery": 0},
                       "explain": true});
    // Both have measured the model (pinned runs), so their bids compare like for like.
    for id in [&w_id, &x_id] {
        let (s, v) = r.post_json(
            "/v1/jobs",
            &json!({"model": "spin", "input": spin_input(), "on": id}),
        );
        assert_eq!(s, 200, "{v}");
    }
    assert_eq!(place(&r, &probe)["executor"], w_id.as_str(), "idle W wins");

    // Flood W with six jobs of its own.
    let own = json!({"model": "spin", "input": spin_input(), "on": w_id});
    let flood: Vec<_> = (0..6).map(|_| post_in_background(&w, &own)).collect();
    wait_for("W's queue to fill", Duration::from_secs(20), || {
        in_flight(&w) >= 4
    });
    let t0 = Instant::now();
    let v = place(&r, &probe);
    assert_eq!(v["executor"], x_id.as_str(), "flooded W loses: {v}");
    let wb = candidate(&v, &w_id);
    assert_eq!(wb["standing"], "bid", "{v}");
    assert!(wb["estimate"]["queue_us"].as_u64().unwrap() > 0, "{wb}");
    assert!(
        wb["score"]["time"].as_u64().unwrap()
            < candidate(&v, &x_id)["score"]["time"].as_u64().unwrap(),
        "{v}"
    );
    eprintln!("while flooded: placed on X in {:?}", t0.elapsed());
    for h in flood {
        assert_eq!(h.join().unwrap().0, 200);
    }
    wait_for("W's queue to drain", Duration::from_secs(30), || {
        in_flight(&w) == 0
    });
    assert_eq!(
        place(&r, &probe)["executor"],
        w_id.as_str(),
        "drained W wins again"
    );
}

#[test]
fn an_executor_that_stops_answering_is_given_up_at_its_deadline_and_its_late_run_is_recorded() {
    let network = format!("ss{}", std::process::id());
    let (tr, t1, t2) = (data_dir(false), data_dir(true), data_dir(true));
    let r = start(
        &tr,
        &with(mesh_env(&network), &[("scheduler_tier", "device")]),
    );
    let (_, join) = joining_env(&r, &network, TCP);
    let e1 = start(
        &t1,
        &with(join.clone(), &[("scheduler_price_per_s_micros", "0")]),
    );
    let e2 = start(
        &t2,
        &with(join, &[("scheduler_price_per_s_micros", "1000000")]),
    );
    let (e1_id, e2_id) = (peer_id(&e1), peer_id(&e2));
    wait_for_reports(&r, &[&e1_id, &e2_id]);
    let body = json!({"model": "spin", "input": spin_input(), "tiers": ["edge"],
                      "weights": serde_json::from_str::<Value>(COST_ONLY).unwrap(),
                      "deadline_ms": 20000, "explain": true});
    let client = post_in_background(&r, &body);
    // E1 takes the job and freezes: its connection stays up, it just never answers.
    wait_for("E1 to start the job", Duration::from_secs(20), || {
        in_flight(&e1) >= 1
    });
    e1.signal(libc::SIGSTOP);
    let (s, v) = client.join().unwrap();
    e1.signal(libc::SIGCONT);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["executor"], e2_id.as_str(), "{v}");
    let failed = candidate(&v, &e1_id);
    assert_eq!(failed["standing"], "failed", "{v}");
    assert!(
        failed["reason"].as_str().unwrap().contains("deadline"),
        "{failed}"
    );
    // E1 resumes and finishes the run it started: that execution happened, so its ledger
    // records it, while the client kept the one result it was given.
    let job = v["job_id"].as_str().unwrap().to_owned();
    wait_for("E1 to record its late run", Duration::from_secs(20), || {
        e1.get(&format!("/v1/jobs/{job}")).0 == 200
    });
    let (_, e2_job) = e2.get(&format!("/v1/jobs/{job}"));
    assert_eq!(e2_job["receipt"]["feed"], e2_id.as_str());
    let listed = r.api().jobs(100).unwrap().jobs;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].executors, [e2_id]);
}
