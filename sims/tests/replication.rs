//! Ledger replication through faults, simulated: every seed runs twice and must give the same
//! report and trace.

use std::time::Duration;

use fab_sims::sim::{Config, Planted, Report, Shards, run};

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

#[test]
fn two_hundred_random_fault_mixes_keep_every_invariant() {
    // Each seed draws its own mix (size, shards, load, loss, duplicates, partition, crashes,
    // clogged links, nodes leaving and joining) from a generator
    // seeded by the seed itself, so a failure names one seed that replays it.
    for seed in 1000..1200u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut draw = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        // Every tenth seed is a sharded fleet of 70-129 nodes in 2-4 shards.
        let sharded = seed % 10 == 0;
        let shards = sharded.then(|| Shards::new(2 + draw(3)).unwrap());
        let config = Config {
            seed,
            shards,
            peers: if sharded {
                70 + draw(60) as usize
            } else {
                3 + draw(10) as usize
            },
            appends_per_s: 10 + draw(90),
            fault_phase: Duration::from_millis(1_000 + 500 * draw(7)),
            recovery: Duration::from_secs(20),
            loss: draw(31) as f64 / 100.0,
            partition: draw(2) == 1,
            crashes: draw(4) as usize,
            // Half the seeds also place jobs (0-40/s) on the device mix.
            jobs_per_s: (draw(2) * draw(41)) as f64,
            duplicate: draw(6) as f64 / 100.0,
            clogged: draw(3) as usize,
            leaves: draw(3) as usize,
            joins: draw(3) as usize,
            equivocators: (draw(4) == 0) as usize,
            forgers: (draw(4) == 0) as usize,
            ..Config::default()
        };
        let r = run(&config);
        assert!(
            r.violations.is_empty(),
            "seed {seed} ({config:?}): {:?}",
            r.violations
        );
    }
}

#[test]
fn a_planted_restart_bug_is_caught_within_a_handful_of_seeds() {
    // A crash loses the replica writes since the node's last sync. Restarting with the
    // replication core's pre-crash state (the planted bug) leaves gaps it never fetches again;
    // rebuilding it from what was stored (the node's behaviour) recovers.
    let mut caught = Vec::new();
    for seed in 1..=5 {
        let config = Config {
            seed,
            appends_per_s: 100,
            crashes: 3,
            ..Config::default()
        };
        let honest = run(&config);
        assert!(
            honest.violations.is_empty(),
            "seed {seed}: {:?}",
            honest.violations
        );
        let planted = run(&Config {
            planted: Planted::StaleRestart,
            ..config
        });
        if !planted.violations.is_empty() {
            caught.push(seed);
        }
    }
    eprintln!("the planted bug was caught on seeds {caught:?} of 1-5");
    assert!(caught.len() >= 3, "caught only on seeds {caught:?}");
}
