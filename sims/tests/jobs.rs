//! Jobs through the simulated mesh: the real auction (requester and bidder), telemetry view and
//! replication cores, with device classes, a Poisson workload and faults; the checkers outside
//! the nodes must hold, and must fail when a bug is planted.

use std::time::Duration;

use fab_sims::sim::{Config, Planted, run};

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

#[test]
fn bursty_and_diurnal_arrivals_keep_the_mean_rate_and_the_invariants() {
    use fab_sims::sim::Arrivals;
    let bursts = Arrivals::Bursts {
        every: Duration::from_secs(5),
        length: Duration::from_millis(500),
        factor: 6.0,
    };
    let diurnal = Arrivals::Diurnal {
        period: Duration::from_secs(10),
    };
    for a in [bursts, diurnal] {
        // The mean factor over whole periods is 1, the peak bounds it.
        let samples = 10_000;
        let mean: f64 = (0..samples)
            .map(|i| a.factor(Duration::from_millis(i)))
            .sum::<f64>()
            / samples as f64;
        assert!((mean - 1.0).abs() < 0.01, "{a:?}: mean {mean}");
        assert!((0..samples).all(|i| a.factor(Duration::from_millis(i)) <= a.peak()));
        let r = run(&Config {
            arrivals: a,
            fault_phase: Duration::from_secs(10),
            ..jobs(3)
        });
        assert!(r.violations.is_empty(), "{a:?}: {:?}", r.violations);
        // 40 jobs/s for 9.5 s (jobs start after 0.5 s): about 380.
        assert!(
            (250..=500).contains(&r.jobs.submitted),
            "{a:?}: {:?}",
            r.jobs
        );
    }
}

#[test]
fn a_model_too_big_for_small_devices_runs_only_where_it_fits() {
    let mut config = jobs(5);
    for m in &mut config.models {
        m.mem_mib = 12_000; // more than a Pi (4 GiB) or a Jetson (8 GiB) has
    }
    let r = run(&config);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.jobs.completed > 100, "{:?}", r.jobs);
    let ran: Vec<&String> = r.jobs.by_profile.keys().collect();
    assert!(
        ran.iter().all(|p| *p == "laptop" || *p == "cloud"),
        "{:?}",
        r.jobs.by_profile
    );
}

#[test]
fn forged_and_malformed_gossip_is_rejected_everywhere_and_never_stored() {
    for seed in 1..=3 {
        let config = Config {
            forgers: 2,
            ..jobs(seed)
        };
        let r = run(&config);
        // Among the invariants: no node holds an entry its author did not write.
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert!(r.forgeries > 10, "seed {seed}: {}", r.forgeries);
        assert!(r.forgeries_rejected >= r.forgeries, "seed {seed}: {r:?}");
        assert!(r.converged_after.is_some());
        assert_eq!(run(&config), r);
    }
}

#[test]
fn an_equivocating_node_is_noticed_and_the_honest_feeds_still_converge() {
    for seed in 1..=3 {
        let r = run(&Config {
            equivocators: 1,
            ..jobs(seed)
        });
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert!(r.forks > 0, "seed {seed}: the equivocator never forked");
        assert!(r.forks_noticed > 0, "seed {seed}");
        // Some of the forks were proven: honest nodes kept evidence that verifies offline.
        eprintln!(
            "seed {seed}: {} forks, {} conflicts reported, {} pieces of evidence",
            r.forks, r.forks_noticed, r.forks_proven
        );
        assert!(r.forks_proven > 0, "seed {seed}");
        assert!(r.converged_after.is_some());
        assert_eq!(
            run(&Config {
                equivocators: 1,
                ..jobs(seed)
            }),
            r
        );
    }
}

#[test]
fn a_sharded_fleet_places_jobs_and_replicates_within_each_shard_deterministically() {
    use fab_sims::sim::Shards;
    // 300 nodes: the recommended count is 10 shards of about 30. Each shard is its own mesh
    // (the simulator runs them on as many cores as it has); the report is one.
    let config = Config {
        peers: 300,
        seed: 7,
        jobs_per_s: 60.0,
        appends_per_s: 20,
        crashes: 4,
        leaves: 3,
        joins: 4,
        clogged: 2,
        equivocators: 1,
        forgers: 1,
        ..Config::default()
    };
    assert_eq!(config.shards(), Shards::for_fleet(300));
    assert_eq!(config.shards().count(), 10);
    let a = run(&config);
    assert!(a.violations.is_empty(), "{:#?}", a.violations);
    let j = &a.jobs;
    assert!(j.submitted > 400, "{j:?}");
    assert_eq!(j.completed + j.failed, j.submitted);
    assert!(j.completed * 10 >= j.submitted * 9, "{j:?}");
    assert_eq!(
        j.runs_per_node.len(),
        300 + 4,
        "every node and joiner reports its runs"
    );
    // Every live node caught up (3 left, 4 joined), none later than the whole mesh.
    let converged = a.converged_after.expect("converged");
    assert!(
        (301..=304).contains(&a.caught_up_us.len()),
        "{}",
        a.caught_up_us.len()
    );
    assert!(a.caught_up_us.last().copied() <= Some(converged.as_micros() as u64));
    assert_eq!(a.progress.last().map(|p| p.1), Some(1000));
    // Same seed, same report and trace, however the shards were scheduled on threads.
    assert_eq!(run(&config), a);
    // A node's traffic does not grow with the fleet: half the fleet (5 shards) costs each
    // node about as much as the whole (10 shards).
    let half = run(&Config {
        peers: 150,
        jobs_per_s: 30.0,
        appends_per_s: 10,
        ..config.clone()
    });
    assert!(half.violations.is_empty(), "{:#?}", half.violations);
    let (per, per_half) = (a.messages / 300, half.messages / 150);
    assert!(
        per < per_half * 3 / 2 && per_half < per * 3 / 2,
        "{per} vs {per_half} messages per node"
    );
}

#[test]
fn a_planted_bug_is_caught_in_a_sharded_fleet_and_named_with_its_shard() {
    let r = run(&Config {
        peers: 150,
        planted: Planted::ExecWithoutPolicy,
        ..jobs(3)
    });
    assert!(
        r.violations
            .iter()
            .any(|v| v.starts_with("shard ") && v.contains("without an allow decision")),
        "{:?}",
        r.violations
    );
}
