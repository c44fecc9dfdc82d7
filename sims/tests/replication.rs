//! Ledger replication through faults, simulated: every seed runs twice and must give the same
//! report and trace.

use std::time::Duration;

use fab_sims::replication::{Config, Report, run};

fn twice(config: &Config) -> Report {
    let a = run(config);
    let b = run(config);
    assert_eq!(a, b, "the same seed gives the same run");
    a
}

#[test]
fn twenty_nodes_converge_after_loss_a_partition_and_crashes() {
    for seed in 1..=5 {
        let r = twice(&Config {
            seed,
            ..Config::default()
        });
        eprintln!(
            "seed {seed}: {} entries, {} messages ({} lost), {} events, converged {:?} after the faults",
            r.entries, r.messages, r.lost, r.events, r.converged_after
        );
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert!(r.entries > 300, "seed {seed}: {r:?}");
        assert!(r.lost > 0, "seed {seed}: the faults dropped something");
        let after = r.converged_after.expect("converged");
        assert!(after < Duration::from_secs(10), "seed {seed}: {after:?}");
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let a = run(&Config::default());
    let b = run(&Config {
        seed: 2,
        ..Config::default()
    });
    assert_ne!(a.trace, b.trace);
}

#[test]
fn a_recovery_too_short_to_repair_a_partition_is_reported() {
    // The checker can fail: with no time to recover after heavy loss, not every node holds
    // every feed, and the run says so.
    let r = run(&Config {
        loss: 0.5,
        partition: true,
        recovery: Duration::from_millis(100),
        ..Config::default()
    });
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("not every node held every feed")),
        "{r:?}"
    );
}
