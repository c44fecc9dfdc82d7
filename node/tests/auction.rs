//! The auction core driven by hand through virtual time. Every scenario runs twice and the two
//! output traces must be identical.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fab_node::sched::auction::{Candidate, Standing};
use fab_node::sched::bidder::{AllowAll, Answer, BidderLimits, Call, answer};
use fab_node::sched::estimate::estimate;
use fab_node::sched::{
    Auction, AuctionConfig, Estimate, Input, JobShape, Link, Output, Sla, Submission, Telemetry,
    Tier,
};

type Peer = u32;
const JOB: [u8; 32] = [7; 32];
const MODEL: [u8; 32] = [1; 32];

fn shape() -> JobShape {
    JobShape {
        model_digest: MODEL,
        input_bytes: 256,
        reference_latency_us: 1_000,
    }
}

fn tel(speed: u32, price: u64, tier: Tier) -> Telemetry {
    Telemetry {
        tier,
        region: "eu".into(),
        labels: BTreeSet::new(),
        price_per_s_micros: price,
        queue_depth: 0,
        workers: 1,
        speed_permille: speed,
        power_mw: 2_000,
        battery_permille: None,
        model_latency_us: BTreeMap::new(),
        host: Default::default(),
        at_ms: 0,
    }
}

fn cand(peer: Peer, t: Telemetry) -> Candidate<Peer> {
    Candidate {
        peer,
        telemetry: t,
        link: Link {
            rtt_us: 200,
            bytes_per_ms: 125_000,
        },
    }
}

fn bid_of(c: &Candidate<Peer>) -> Estimate {
    estimate(&c.telemetry, &shape(), c.link)
}

fn bid(from: Peer, estimate: Estimate) -> Input<Peer> {
    Input::Bid {
        job: JOB,
        from,
        estimate,
    }
}

/// Every candidate bids its true estimate at `ms`.
fn every_bid(peers: &[Candidate<Peer>], ms: u64) -> Vec<(Input<Peer>, u64)> {
    peers.iter().map(|c| (bid(c.peer, bid_of(c)), ms)).collect()
}

fn submit(sla: Sla, local: Option<Candidate<Peer>>, peers: Vec<Candidate<Peer>>) -> Input<Peer> {
    Input::Submit(Box::new(Submission {
        job: JOB,
        shape: shape(),
        sla,
        local,
        peers,
        weights: None,
    }))
}

fn run(inputs: &[(Input<Peer>, u64)]) -> (Vec<Output<Peer>>, Auction<Peer>) {
    let mut a = Auction::new(AuctionConfig::default());
    let mut out = Vec::new();
    for (i, ms) in inputs {
        a.handle(i.clone(), Duration::from_millis(*ms), &mut out);
    }
    (out, a)
}

/// Runs the inputs twice; the traces must match.
fn twice(inputs: &[(Input<Peer>, u64)]) -> (Vec<Output<Peer>>, Auction<Peer>) {
    let (a, auction) = run(inputs);
    let (b, _) = run(inputs);
    assert_eq!(a, b, "same inputs, same outputs");
    (a, auction)
}

fn awards(out: &[Output<Peer>]) -> Vec<Peer> {
    out.iter()
        .filter_map(|o| match o {
            Output::Award { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn the_best_bid_wins_and_the_window_closes_when_every_bid_is_in() {
    let peers = vec![
        cand(1, tel(1000, 1_000_000, Tier::Edge)),
        cand(2, tel(4000, 1_000_000, Tier::Edge)), // fastest
        cand(3, tel(2000, 1_000_000, Tier::Edge)),
    ];
    let mut inputs = vec![(submit(Sla::default(), None, peers.clone()), 0)];
    inputs.extend(every_bid(&peers, 1));
    let (out, a) = twice(&inputs);
    assert_eq!(
        out[0],
        Output::CallForBids {
            job: JOB,
            peers: vec![2, 3, 1]
        }
    );
    // No tick was needed: the last bid closed the window.
    assert_eq!(awards(&out), [2]);
    let ex = a.explain(&JOB).unwrap();
    assert_eq!(ex.winners, [2]);
    assert!(!ex.fast_path);
    let totals: Vec<u64> = ex
        .candidates
        .iter()
        .filter_map(|(_, _, s)| match s {
            Standing::Bid(_, s) | Standing::Running(_, s) => Some(s.total),
            _ => None,
        })
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
}

#[test]
fn silent_peers_are_cut_off_by_the_window_and_ties_go_to_the_lower_peer() {
    let same = tel(1000, 0, Tier::Edge);
    let peers = vec![cand(9, same.clone()), cand(4, same.clone()), cand(6, same)];
    let e = bid_of(&peers[0]);
    let inputs = vec![
        (submit(Sla::default(), None, peers), 0),
        (bid(9, e), 1),
        (bid(6, e), 2),
        (Input::Tick, 20), // window (50 ms) still open: 4 has not answered
        (Input::Tick, 51), // 50 ms plus the slowest asked round trip (0.2 ms)
    ];
    let (out, a) = twice(&inputs);
    assert_eq!(awards(&out), [6], "equal scores: the lower peer id wins");
    let ex = a.explain(&JOB).unwrap();
    assert!(ex.candidates.contains(&(4, false, Standing::Silent)));
}

#[test]
fn the_sla_filters_before_asking_and_an_infeasible_job_fails_at_once() {
    let mut gpu = tel(1000, 0, Tier::Cloud);
    gpu.labels.insert("gpu".into());
    let peers = vec![
        cand(1, tel(1000, 0, Tier::Device)),
        cand(2, gpu),
        cand(3, tel(10, 0, Tier::Cloud)), // far too slow for the deadline
    ];
    let sla = Sla {
        deadline_us: 20_000,
        tiers: [Tier::Cloud].into(),
        ..Default::default()
    };
    let (out, a) = twice(&[(submit(sla.clone(), None, peers.clone()), 0)]);
    assert_eq!(
        out,
        [Output::CallForBids {
            job: JOB,
            peers: vec![2]
        }]
    );
    let ex = a.explain(&JOB).unwrap();
    let reason = |p| {
        ex.candidates
            .iter()
            .find(|(q, _, _)| *q == p)
            .map(|(_, _, s)| s.clone())
    };
    assert!(matches!(reason(1), Some(Standing::Filtered(r)) if r.contains("tier device")));
    assert!(matches!(reason(3), Some(Standing::Filtered(r)) if r.contains("deadline")));

    let sla = Sla {
        labels: ["tpu".to_owned()].into(),
        ..sla
    };
    let (out, _) = twice(&[(submit(sla, None, peers), 0)]);
    match &out[..] {
        [Output::Fail { reason, .. }] => {
            assert!(reason.starts_with("no node can take the job"), "{reason}");
            assert!(reason.contains("lacks label \"tpu\""), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_or_overdue_attempt_is_re_awarded_and_late_results_are_ignored() {
    let peers = vec![
        cand(1, tel(4000, 0, Tier::Edge)),
        cand(2, tel(2000, 0, Tier::Edge)),
        cand(3, tel(1000, 0, Tier::Edge)),
    ];
    let mut inputs = vec![(submit(Sla::default(), None, peers.clone()), 0)];
    inputs.extend(every_bid(&peers, 1));
    inputs.extend([
        // Peer 1 disconnects: re-awarded to 2.
        (
            Input::Failed {
                job: JOB,
                from: 1,
                reason: "disconnected".into(),
            },
            5,
        ),
        // 2 never answers: past its estimate × 3 + 500 ms grace, re-awarded to 3.
        (Input::Tick, 400),
        (Input::Tick, 600),
        // A late result from 1 is ignored; 3's completes the job.
        (Input::Done { job: JOB, from: 1 }, 610),
        (Input::Done { job: JOB, from: 3 }, 620),
        (Input::Done { job: JOB, from: 3 }, 630),
    ]);
    let (out, a) = twice(&inputs);
    assert_eq!(awards(&out), [1, 2, 3]);
    let completes: Vec<&Output<Peer>> = out
        .iter()
        .filter(|o| matches!(o, Output::Complete { .. }))
        .collect();
    assert_eq!(
        completes,
        [&Output::Complete {
            job: JOB,
            peers: vec![3]
        }],
        "exactly one result"
    );
    let ex = a.explain(&JOB).unwrap();
    assert_eq!(ex.attempts, 3);
    assert_eq!(ex.outcome, Some(Ok(())));
    assert!(ex.candidates.iter().any(|(p, _, s)| *p == 2
        && matches!(s, Standing::FailedAttempt(_, _, r) if r == "missed its deadline")));
}

#[test]
fn attempts_are_bounded_and_the_failure_names_every_reason() {
    let peers = vec![
        cand(1, tel(1000, 0, Tier::Edge)),
        cand(2, tel(1000, 0, Tier::Edge)),
    ];
    let mut inputs = vec![(submit(Sla::default(), None, peers.clone()), 0)];
    inputs.push((bid(1, bid_of(&peers[0])), 1));
    inputs.push((
        Input::Decline {
            job: JOB,
            from: 2,
            reason: "queue full (64 of 64)".into(),
        },
        1,
    ));
    inputs.push((
        Input::Failed {
            job: JOB,
            from: 1,
            reason: "crashed".into(),
        },
        2,
    ));
    let (out, _) = twice(&inputs);
    match out.last() {
        Some(Output::Fail { reason, .. }) => {
            assert!(reason.contains("1: crashed"), "{reason}");
            assert!(reason.contains("2 declined: queue full"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn replicas_run_on_distinct_nodes_and_complete_together() {
    let peers: Vec<_> = (1..=3)
        .map(|p| cand(p, tel(1000 * p, 0, Tier::Edge)))
        .collect();
    let sla = Sla {
        replicas: 2,
        ..Default::default()
    };
    let mut inputs = vec![(submit(sla, None, peers.clone()), 0)];
    inputs.extend(every_bid(&peers, 1));
    inputs.push((Input::Done { job: JOB, from: 3 }, 5));
    inputs.push((Input::Done { job: JOB, from: 2 }, 6));
    let (out, _) = twice(&inputs);
    assert_eq!(awards(&out), [3, 2]);
    assert_eq!(
        out.last(),
        Some(&Output::Complete {
            job: JOB,
            peers: vec![3, 2]
        })
    );
    // Too few feasible nodes for the replicas: fails at once.
    let sla = Sla {
        replicas: 4,
        ..Default::default()
    };
    let (out, _) = twice(&[(submit(sla, None, peers), 0)]);
    assert!(matches!(&out[..], [Output::Fail { reason, .. }] if reason.contains("4 replicas")));
}

#[test]
fn replicas_with_too_few_bids_fail_once_the_runs_end_instead_of_hanging() {
    // Found by the simulator (seed 1049): a 2-replica job, two feasible peers asked, one
    // silent. The one bid runs and succeeds; with no bid left for the second replica the job
    // must fail with the reason, not wait forever.
    let peers: Vec<_> = (1..=2)
        .map(|p| cand(p, tel(1000 * p, 0, Tier::Edge)))
        .collect();
    let sla = Sla {
        replicas: 2,
        ..Default::default()
    };
    let inputs = vec![
        (submit(sla, None, peers.clone()), 0),
        (bid(2, bid_of(&peers[1])), 1),
        (Input::Tick, 60), // the window closes: peer 1 never answered
        (Input::Done { job: JOB, from: 2 }, 70),
    ];
    let (out, auction) = twice(&inputs);
    assert_eq!(awards(&out), [2]);
    assert!(
        matches!(out.last(), Some(Output::Fail { reason, .. }) if reason.contains("only 1 of 2 replicas ran") && reason.contains("no answer")),
        "{out:?}"
    );
    assert_eq!(auction.in_flight(), 0);
}

#[test]
fn the_local_node_runs_the_job_with_no_round_trip_when_it_is_best_or_alone() {
    let local = cand(0, tel(4000, 0, Tier::Edge));
    let slow = vec![cand(1, tel(1000, 0, Tier::Edge))];
    let (out, a) = twice(&[(submit(Sla::default(), Some(local.clone()), slow), 0)]);
    assert_eq!(
        out,
        [Output::Award {
            job: JOB,
            peer: 0,
            attempt: 1,
            local: true
        }]
    );
    assert!(a.explain(&JOB).unwrap().fast_path);
    let (out, _) = twice(&[(submit(Sla::default(), Some(local), vec![]), 0)]);
    assert!(matches!(out[..], [Output::Award { local: true, .. }]));
    // A faster peer: bids are called for, and the local node bids without the network.
    let local = cand(0, tel(1000, 0, Tier::Edge));
    let fast = cand(1, tel(8000, 0, Tier::Edge));
    let e = bid_of(&fast);
    let (out, _) = twice(&[
        (submit(Sla::default(), Some(local), vec![fast]), 0),
        (bid(1, e), 1),
    ]);
    assert_eq!(
        out[0],
        Output::CallForBids {
            job: JOB,
            peers: vec![1]
        }
    );
    assert_eq!(awards(&out), [1]);
}

#[test]
fn unasked_and_repeated_bids_are_ignored() {
    let peers = vec![
        cand(1, tel(1000, 0, Tier::Edge)),
        cand(2, tel(1000, 0, Tier::Edge)),
    ];
    let great = Estimate {
        compute_us: 1,
        ..Default::default()
    };
    let inputs = vec![
        (submit(Sla::default(), None, peers.clone()), 0),
        // 5 was never asked; its bid changes nothing.
        (bid(5, great), 1),
        (bid(1, bid_of(&peers[0])), 1),
        // A second, better bid from 1 is ignored.
        (bid(1, great), 2),
        (bid(2, bid_of(&peers[1])), 3),
    ];
    let (out, a) = twice(&inputs);
    assert_eq!(awards(&out), [1]);
    assert!(
        a.explain(&JOB)
            .unwrap()
            .candidates
            .iter()
            .all(|(p, _, _)| *p != 5)
    );
}

#[test]
fn a_node_with_a_deep_queue_loses_and_past_its_limit_declines() {
    let mut busy = tel(4000, 0, Tier::Edge);
    busy.queue_depth = 40;
    let idle = tel(1000, 0, Tier::Edge);
    let peers = vec![cand(1, busy.clone()), cand(2, idle)];
    let mut inputs = vec![(submit(Sla::default(), None, peers.clone()), 0)];
    inputs.extend(every_bid(&peers, 1));
    let (out, _) = twice(&inputs);
    assert_eq!(
        awards(&out),
        [2],
        "the idle node wins over the fast, busy one"
    );
    // The bidder itself stops bidding at its queue limit.
    busy.queue_depth = 64;
    let (job, sla) = (shape(), Sla::default());
    let call = Call {
        job: &job,
        sla: &sla,
        link: Link::LOCAL,
        requester: &[0; 32],
    };
    let a = answer(&busy, true, call, &AllowAll, BidderLimits::default());
    assert_eq!(a, Answer::Decline("queue full (64 of 64)".into()));
    let a = answer(&busy, false, call, &AllowAll, BidderLimits::default());
    assert_eq!(a, Answer::Decline("does not hold the model".into()));
}

#[test]
fn a_job_s_own_weights_choose_between_a_fast_and_a_cheap_node() {
    use fab_node::sched::Weights;
    // Peer 1 is fast and dear, peer 2 slow and free.
    let peers = vec![
        cand(1, tel(4000, 20_000_000, Tier::Cloud)),
        cand(2, tel(500, 0, Tier::Edge)),
    ];
    let with = |weights: Option<Weights>| {
        let mut inputs = vec![(
            Input::Submit(Box::new(Submission {
                job: JOB,
                shape: shape(),
                sla: Sla::default(),
                local: None,
                peers: peers.clone(),
                weights,
            })),
            0,
        )];
        inputs.extend(every_bid(&peers, 1));
        let (out, a) = twice(&inputs);
        (awards(&out), a.explain(&JOB).unwrap().weights)
    };
    let time_only = Weights {
        time: 100,
        cost: 0,
        energy: 0,
        cache: 0,
        reliability: 0,
        battery: 0,
    };
    let cost_only = Weights {
        time: 0,
        cost: 100,
        ..time_only
    };
    assert_eq!(with(Some(time_only)), (vec![1], time_only));
    assert_eq!(with(Some(cost_only)), (vec![2], cost_only));
    // Without its own weights the job is scored with the configured ones.
    assert_eq!(with(None).1, Weights::default());
}

#[test]
fn an_aborted_job_fails_at_once_and_its_attempt_s_late_end_is_ignored() {
    let peers = vec![cand(1, tel(1000, 0, Tier::Edge))];
    let mut inputs = vec![(submit(Sla::default(), None, peers.clone()), 0)];
    inputs.extend(every_bid(&peers, 1));
    inputs.push((
        Input::Abort {
            job: JOB,
            reason: "invalid input".into(),
        },
        2,
    ));
    inputs.push((Input::Done { job: JOB, from: 1 }, 3));
    let (out, a) = twice(&inputs);
    assert_eq!(awards(&out), vec![1]);
    assert_eq!(
        out.last(),
        Some(&Output::Fail {
            job: JOB,
            reason: "invalid input".into()
        })
    );
    assert_eq!(a.in_flight(), 0);
    assert_eq!(
        a.explain(&JOB).unwrap().outcome,
        Some(Err("invalid input".into()))
    );
}

#[test]
fn jobs_awarded_to_a_peer_count_as_its_queue_until_they_end() {
    // Two equal peers; peer 1 wins ties. While peer 1 runs one job, the next job's call for
    // bids asks peer 2 first (its estimate is better), and the fast path stays off.
    let peers = vec![
        cand(1, tel(1000, 0, Tier::Edge)),
        cand(2, tel(1000, 0, Tier::Edge)),
    ];
    let second = [8u8; 32];
    let mut a = Auction::new(AuctionConfig {
        bids_max: 1,
        ..Default::default()
    });
    let mut out = Vec::new();
    a.handle(
        submit(Sla::default(), None, peers.clone()),
        Duration::ZERO,
        &mut out,
    );
    assert_eq!(
        out[0],
        Output::CallForBids {
            job: JOB,
            peers: vec![1]
        }
    );
    a.handle(
        bid(1, bid_of(&peers[0])),
        Duration::from_millis(1),
        &mut out,
    );
    assert_eq!(awards(&out), vec![1]);
    let mut next = Submission {
        job: second,
        shape: shape(),
        sla: Sla::default(),
        local: None,
        peers: peers.clone(),
        weights: None,
    };
    out.clear();
    a.handle(
        Input::Submit(Box::new(next.clone())),
        Duration::from_millis(2),
        &mut out,
    );
    assert_eq!(
        out,
        vec![Output::CallForBids {
            job: second,
            peers: vec![2]
        }]
    );
    // Once peer 1's job ends, it is first again.
    a.handle(
        Input::Done { job: JOB, from: 1 },
        Duration::from_millis(3),
        &mut out,
    );
    next.job = [9; 32];
    out.clear();
    a.handle(
        Input::Submit(Box::new(next)),
        Duration::from_millis(4),
        &mut out,
    );
    assert_eq!(
        out,
        vec![Output::CallForBids {
            job: [9; 32],
            peers: vec![1]
        }]
    );
}

#[test]
fn a_window_that_passes_with_no_bid_waits_for_the_first_one_or_the_deadline() {
    let peers = vec![
        cand(1, tel(1000, 0, Tier::Edge)),
        cand(2, tel(1000, 0, Tier::Edge)),
    ];
    let sla = Sla {
        deadline_us: 1_000_000,
        ..Default::default()
    };
    // Both are late; peer 2's bid arrives first after the window and wins at once.
    let inputs = vec![
        (submit(sla.clone(), None, peers.clone()), 0),
        (Input::Tick, 50),
        (Input::Tick, 300),
        (bid(2, bid_of(&peers[1])), 400),
    ];
    let (out, a) = twice(&inputs);
    assert_eq!(awards(&out), [2]);
    assert!(
        a.explain(&JOB)
            .unwrap()
            .candidates
            .contains(&(1, false, Standing::Silent))
    );
    // Nobody ever answers: the job fails at its deadline, naming the silence.
    let inputs = vec![
        (submit(sla, None, peers), 0),
        (Input::Tick, 50),
        (Input::Tick, 999),
        (Input::Tick, 1000),
    ];
    let (out, _) = twice(&inputs);
    assert!(awards(&out).is_empty());
    match out.last() {
        Some(Output::Fail { reason, .. }) => assert!(reason.contains("no answer"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn the_window_stretches_by_the_slowest_asked_peer_s_round_trip() {
    // A fast peer 120 ms away (another region) answers after 125 ms: within 50 ms plus its
    // round trip, so its better bid (120 ms against the slow near peer's 201 ms) counts; with
    // no allowance the window would have closed at 50 ms on the near peer's bid alone.
    let mut near = cand(1, tel(5, 0, Tier::Edge));
    near.link.rtt_us = 1_000;
    let mut far = cand(2, tel(4000, 0, Tier::Edge));
    far.link.rtt_us = 120_000;
    let inputs = vec![
        (
            submit(Sla::default(), None, vec![near.clone(), far.clone()]),
            0,
        ),
        (bid(1, bid_of(&near)), 2),
        (Input::Tick, 60),
        (bid(2, bid_of(&far)), 125),
    ];
    let (out, _) = twice(&inputs);
    assert_eq!(awards(&out), [2], "{out:?}");
    // Past the stretched window (50 + 120 ms) the near bid wins alone.
    let inputs = vec![
        (
            submit(Sla::default(), None, vec![near.clone(), far.clone()]),
            0,
        ),
        (bid(1, bid_of(&near)), 2),
        (Input::Tick, 171),
        (bid(2, bid_of(&far)), 180),
    ];
    let (out, _) = twice(&inputs);
    assert_eq!(awards(&out), [1], "{out:?}");
}

#[test]
fn the_auction_names_when_it_next_needs_the_clock() {
    let same = tel(1000, 0, Tier::Edge);
    let peers = vec![cand(9, same.clone()), cand(4, same)];
    let e = bid_of(&peers[0]);
    let mut a = Auction::new(AuctionConfig::default());
    let mut out = Vec::new();
    assert_eq!(
        a.poll_timeout(),
        None,
        "nothing in flight, nothing to wake for"
    );
    a.handle(
        submit(Sla::default(), None, peers),
        Duration::ZERO,
        &mut out,
    );
    // The window: 50 ms plus the slowest asked peer's round trip (0.2 ms).
    assert_eq!(a.poll_timeout(), Some(Duration::from_micros(50_200)));
    a.handle(bid(9, e), Duration::from_millis(1), &mut out);
    assert_eq!(a.poll_timeout(), Some(Duration::from_micros(50_200)));
    // Ticking exactly then closes the window: 4 is silent, 9 is awarded, and the next wake-up
    // is the end of 9's allowance (3x its estimate plus 500 ms of grace).
    a.handle(Input::Tick, Duration::from_micros(50_200), &mut out);
    assert_eq!(awards(&out), [9]);
    let allowance = Duration::from_micros(e.completion_us() * 3) + Duration::from_millis(500);
    assert_eq!(
        a.poll_timeout(),
        Some(Duration::from_micros(50_200) + allowance)
    );
    a.handle(
        Input::Done { job: JOB, from: 9 },
        Duration::from_millis(60),
        &mut out,
    );
    assert_eq!(a.poll_timeout(), None, "the job ended: no wake-up left");
}
