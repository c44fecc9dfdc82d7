//! Jobs through the simulated mesh: the real auction (requester and bidder), telemetry view and
//! replication cores, with device classes, a Poisson workload and faults; the checkers outside
//! the nodes must hold, and must fail when a bug is planted.

use std::time::Duration;

use fab_sims::replication::{Config, Planted, run};

fn jobs(seed: u64) -> Config {
    Config {
        peers: 20,
        seed,
        appends_per_s: 0,
        jobs_per_s: 40.0,
        ..Config::default()
    }
}

#[test]
fn jobs_complete_or_fail_with_reasons_and_every_invariant_holds() {
    for seed in 1..=3 {
        let a = run(&jobs(seed));
        assert!(a.violations.is_empty(), "seed {seed}: {:#?}", a.violations);
        let j = &a.jobs;
        eprintln!(
            "seed {seed}: {j:?}, converged after {:?}",
            a.converged_after
        );
        assert!(j.submitted > 200, "seed {seed}: {j:?}");
        assert_eq!(j.completed + j.failed, j.submitted);
        assert!(j.completed * 10 >= j.submitted * 8, "seed {seed}: {j:?}");
        assert!(j.executions >= j.completed);
        assert!(a.converged_after.is_some());
        // The same seed replays the same run.
        assert_eq!(run(&jobs(seed)), a, "seed {seed} is not deterministic");
    }
}

#[test]
fn a_planted_executor_that_skips_its_policy_is_caught() {
    for seed in 1..=3 {
        let r = run(&Config {
            planted: Planted::ExecWithoutPolicy,
            ..jobs(seed)
        });
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("without an allow decision")),
            "seed {seed}: {:?}",
            r.violations
        );
    }
}

#[test]
fn without_faults_every_job_completes() {
    let r = run(&Config {
        loss: 0.0,
        duplicate: 0.0,
        partition: false,
        crashes: 0,
        clogged: 0,
        recovery: Duration::from_secs(10),
        ..jobs(7)
    });
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!(r.jobs.completed, r.jobs.submitted, "{:?}", r.jobs);
    assert_eq!(r.jobs.failovers, 0);
}
