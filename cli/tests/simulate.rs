//! `fabnode simulate`: a replayable run with invariants, and a failing one that says how to
//! replay it.

mod common;

use common::*;

#[test]
fn a_simulated_mesh_converges_replays_identically_and_reports_failures() {
    let t = TestDir::new();
    let json = t.path().join("report.json");
    let out = t.run(&[
        "simulate",
        "--peers",
        "10",
        "--duration",
        "3",
        "--recovery",
        "10",
        "--seed",
        "7",
        "--check-determinism",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("simulate: 10 nodes, seed 7"), "{stdout}");
    assert!(
        stdout.contains("two runs gave identical reports"),
        "{stdout}"
    );
    assert!(stdout.contains("invariants: all hold"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["peers"], 10);
    assert!(v["entries"].as_u64().unwrap() > 30, "{v}");
    // Jobs were placed, run on the simulated devices and ledgered: every run is an entry.
    let jobs = &v["jobs"];
    assert!(jobs["submitted"].as_u64().unwrap() > 30, "{v}");
    assert_eq!(
        jobs["completed"].as_u64().unwrap() + jobs["failed"].as_u64().unwrap(),
        jobs["submitted"].as_u64().unwrap(),
        "{v}"
    );
    assert_eq!(jobs["runs"], v["entries"], "{v}");
    assert!(jobs["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{v}");
    assert!(stdout.contains("placement:"), "{stdout}");
    assert!(v["converged_after_s"].as_f64().is_some(), "{v}");
    assert_eq!(v["caught_up_s"]["nodes"], 10, "{v}");
    assert!(
        v["caught_up_s"]["p99"].as_f64() <= v["converged_after_s"].as_f64(),
        "{v}"
    );

    // Most messages lost and no time to recover: the invariant fails, the exit code says so,
    // and the output gives the command that replays it.
    let out = t.run(&[
        "simulate",
        "--peers",
        "10",
        "--duration",
        "3",
        "--recovery",
        "0",
        "--loss",
        "0.9",
    ]);
    let (stdout, _) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("not every node held every feed"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("replay:     fabnode simulate --peers 10 --seed 1 --duration 3 --recovery 0"),
        "{stdout}"
    );
}

#[test]
fn a_large_fleet_is_split_into_shards_that_each_converge() {
    let t = TestDir::new();
    let json = t.path().join("report.json");
    let out = t.run(&[
        "simulate",
        "--peers",
        "200",
        "--duration",
        "4",
        "--recovery",
        "10",
        "--check-determinism",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout
            .contains("mesh:       7 shard(s) of about 29 nodes (recommended for this many nodes)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("two runs gave identical reports"),
        "{stdout}"
    );
    assert!(
        stdout.contains("every node holds every feed of its shard"),
        "{stdout}"
    );
    assert!(stdout.contains("invariants: all hold"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["shards"], 7);
    assert_eq!(v["progress"].as_array().unwrap().last().unwrap()[1], 1000);
    // A count that is not a shard count is refused, naming the limits.
    let out = t.run(&["simulate", "--peers", "200", "--shards", "0"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("shards: 0 is not from 1 to 4096"),
        "{stderr}"
    );
}

#[test]
fn the_runtime_test_runs_every_scenario_and_catches_the_planted_bugs() {
    let t = TestDir::new();
    let json = t.path().join("runtime.json");
    let out = t.run(&[
        "test",
        "--target",
        "runtime",
        "--seeds",
        "2",
        "--peers",
        "8",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("11 of 11 scenarios as expected"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scenarios = v.as_array().unwrap();
    assert_eq!(scenarios.len(), 11);
    for s in scenarios {
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["deterministic"], true, "{s}");
        let broken = s["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["violations"].as_array().unwrap().is_empty())
            .count();
        if s["expect"] == "caught" {
            assert!(broken > 0, "{s}");
        } else {
            assert_eq!(broken, 0, "{s}");
        }
    }

    // A budget of zero seconds runs nothing and says so.
    let out = t.run(&["test", "--target", "runtime", "--budget", "0"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("skipped (budget)"), "{stdout}");
}

#[test]
fn a_scenario_file_sets_the_fleet_flags_override_it_and_svg_draws_the_run() {
    let t = TestDir::new();
    let scenario = t.path().join("fleet.toml");
    std::fs::write(
        &scenario,
        r#"
peers = 12
duration_s = 3
recovery_s = 10
jobs_per_sec = 30
arrivals = { shape = "diurnal", period_s = 3 }
[faults]
loss = 0.0
partition = false
crashes = 0
clogged = 0
[[link]]
name = "lan"
one_way_us = [100, 200]
mbit_per_s = 1000
[[profile]]
name = "gateway"
tier = "edge"
speed_permille = 600
workers = 2
power_mw = 6000
cores = 4
mem_mib = 2048
share_permille = 1000
link = "lan"
commit_us = 3000
[[model]]
name = "detector"
reference_latency_us = 12000
input_bytes = 150000
share_permille = 1000
deadline_ms = 3000
"#,
    )
    .unwrap();
    let svg = t.path().join("run.svg");
    let out = t.run(&[
        "simulate",
        "--scenario",
        scenario.to_str().unwrap(),
        "--peers",
        "9",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("simulate: 9 nodes"), "{stdout}");
    assert!(
        stdout.contains("gateway 1000‰ (edge, speed 600‰"),
        "{stdout}"
    );
    assert!(stdout.contains("detector 1000‰ (12000 µs"), "{stdout}");
    assert!(stdout.contains("30 jobs/s (diurnal)"), "{stdout}");
    assert!(stdout.contains("runs: gateway"), "{stdout}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg"), "{drawn}");
    for panel in ["Latency of completed jobs", "Runs per node", "Replication:"] {
        assert!(drawn.contains(panel), "no {panel} panel");
    }

    // A typo in the file is refused, naming the key, and nothing runs.
    std::fs::write(&scenario, "peer = 3\n").unwrap();
    let out = t.run(&["simulate", "--scenario", scenario.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown field") && stderr.contains("peer"),
        "{stderr}"
    );
    assert!(!stdout.contains("jobs:"), "{stdout}");
}
