//! Jobs on a simulated node: submission, the requester's auction, the executor's policy,
//! queue, workers and ledger commit, and answers.

use super::trace_event;
use super::*;

impl Sim {
    /// Whether a node can hold a model: its device class has the memory the model needs.
    pub(super) fn holds(&self, n: usize, digest: &[u8; 32]) -> bool {
        let mem = self.config.profiles[self.nodes[n].profile].mem_mib;
        self.config
            .models
            .iter()
            .find(|m| m.digest == *digest)
            .is_none_or(|m| m.mem_mib <= mem)
    }

    /// A client submits a job at a random live node.
    pub(super) fn submit(&mut self) {
        let n = self.engine.uniform(0, self.nodes.len() as u64 - 1) as usize;
        if !self.nodes[n].up {
            return; // the client cannot reach it; nothing was submitted
        }
        let model = pick(
            self.config.models.iter().map(|m| m.share_permille),
            self.engine.uniform(0, 999),
        );
        let Some(m) = self.config.models.get(model).cloned() else {
            return;
        };
        let mut sla = Sla {
            deadline_us: m.deadline_us,
            ..Sla::default()
        };
        if self.engine.uniform(0, 999) < u64::from(self.config.cloud_only_permille) {
            sla.tiers.insert(fab_node::sched::Tier::Cloud);
        }
        if self.engine.uniform(0, 999) < u64::from(self.config.two_replicas_permille) {
            sla.replicas = 2;
        }
        let shape = JobShape {
            model_digest: m.digest,
            input_bytes: m.input_bytes,
            reference_latency_us: m.reference_latency_us,
        };
        self.submitted += 1;
        let mut id = blake3::Hasher::new();
        id.update(&self.config.seed.to_le_bytes());
        id.update(&self.submitted.to_le_bytes());
        let job: JobId = *id.finalize().as_bytes();
        trace_event(&mut self.trace, 4, &[n]);
        let now = self.engine.now();
        let now_ms = now.as_millis() as u64;
        let peers: Vec<Candidate<usize>> = self.nodes[n]
            .view
            .fresh(now_ms)
            .into_iter()
            .filter_map(|r| {
                let peer = *self.index.get(&r.node.to_bytes())?;
                (peer != n).then(|| Candidate {
                    peer,
                    telemetry: r.telemetry.clone(),
                    link: self.link_to(n, peer),
                })
            })
            .collect();
        let local = self.holds(n, &shape.model_digest).then(|| Candidate {
            peer: n,
            telemetry: self.telemetry_of(n),
            link: Link::LOCAL,
        });
        self.jobs.insert(
            job,
            JobRec {
                submitter: n,
                at: now,
                shape: shape.clone(),
                sla: sla.clone(),
                outcome: None,
                results: 0,
                awards: 0,
                attempts: Default::default(),
            },
        );
        let submission = Submission {
            job,
            shape,
            sla,
            local,
            peers,
            weights: None,
        };
        self.auction(n, auction::Input::Submit(Box::new(submission)));
    }

    /// Feeds the requester side of `n`'s scheduler and carries out what it decides.
    pub(super) fn auction(&mut self, n: usize, input: auction::Input<usize>) {
        let now = self.engine.now();
        let mut out = Vec::new();
        self.nodes[n].auction.handle(input, now, &mut out);
        for o in out {
            match o {
                auction::Output::CallForBids { job, peers } => {
                    let Some(rec) = self.jobs.get(&job) else {
                        continue;
                    };
                    let (shape, sla) = (rec.shape.clone(), rec.sla.clone());
                    for p in peers {
                        let call = Msg::Call {
                            job,
                            shape: shape.clone(),
                            sla: sla.clone(),
                        };
                        self.rpc(n, p, call);
                    }
                }
                auction::Output::Award {
                    job,
                    peer,
                    attempt,
                    local,
                } => {
                    if let Some(rec) = self.jobs.get_mut(&job) {
                        rec.awards += 1;
                        if !rec.attempts.insert(attempt) {
                            self.report.violations.push(format!(
                                "job {} was awarded attempt {attempt} twice",
                                hex8(&job)
                            ));
                        }
                    }
                    if local {
                        self.exec_in(n, n, job, attempt);
                    } else {
                        self.rpc(n, peer, Msg::Exec { job, attempt });
                    }
                }
                auction::Output::Complete { job, .. } => {
                    let Some(rec) = self.jobs.get_mut(&job) else {
                        continue;
                    };
                    rec.results += 1;
                    if rec.results > 1 {
                        self.report.violations.push(format!(
                            "job {} gave its client a second result",
                            hex8(&job)
                        ));
                    } else if rec.outcome.is_none() {
                        rec.outcome = Some(Ok(now - rec.at));
                        self.latencies.push((now - rec.at).as_micros() as u64);
                    }
                }
                auction::Output::Fail { job, reason } => {
                    if let Some(rec) = self.jobs.get_mut(&job)
                        && rec.outcome.is_none()
                    {
                        rec.outcome = Some(Err(reason));
                    }
                }
            }
        }
        self.schedule_auction(n);
    }

    /// Keeps an [`Event::AuctionTick`] scheduled for when `n`'s auction next needs one
    /// ([`Auction::poll_timeout`]), as the node's placer sleeps until then.
    pub(super) fn schedule_auction(&mut self, n: usize) {
        let now = self.engine.now();
        let node = &mut self.nodes[n];
        if let Some(t) = node.auction.poll_timeout() {
            let t = t.max(now);
            if node.auction_wake.is_none_or(|w| t < w) {
                node.auction_wake = Some(t);
                self.engine.after(t - now, Event::AuctionTick(n));
            }
        }
    }

    /// An awarded job reaches its executor `n`: the policy decides, then it queues for a worker.
    pub(super) fn exec_in(&mut self, n: usize, requester: usize, job: JobId, attempt: u32) {
        let Some(rec) = self.jobs.get(&job) else {
            return;
        };
        let shape = rec.shape.clone();
        if self.config.planted != Planted::ExecWithoutPolicy {
            let key = self.nodes[requester].key.to_bytes();
            if let Err(reason) = AllowAll.admit(&shape, &key) {
                self.reply(n, requester, Msg::Refused { job, reason });
                return;
            }
            self.nodes[n].allowed.insert(job);
        }
        if !self.holds(n, &shape.model_digest) {
            let reason = "does not hold the model".to_owned();
            self.reply(n, requester, Msg::Refused { job, reason });
            return;
        }
        if self.nodes[n].queue.len() as u32 >= BidderLimits::default().queue_max {
            let reason = "busy: queue full".to_owned();
            self.reply(n, requester, Msg::Refused { job, reason });
            return;
        }
        let tier = self.config.profiles[self.nodes[n].profile].tier;
        if !rec_tiers_allow(&self.jobs, &job, tier) {
            self.report.violations.push(format!(
                "node {n} ({}) ran job {}, whose SLA excludes its tier",
                tier.name(),
                hex8(&job)
            ));
        }
        if !self.nodes[n].allowed.contains(&job) {
            self.report.violations.push(format!(
                "node {n} ran job {} without an allow decision",
                hex8(&job)
            ));
        }
        let p = &self.config.profiles[self.nodes[n].profile];
        let base =
            shape.reference_latency_us.saturating_mul(1000) / u64::from(p.speed_permille.max(1));
        // Run times vary ±10 % around the device's speed.
        let compute_us = base * self.engine.uniform(900, 1100) / 1000;
        self.nodes[n].queue.push_back(Run {
            job,
            requester,
            attempt,
            compute_us: compute_us.max(1),
            ends: Duration::ZERO,
        });
        self.start_runs(n);
        self.maybe_publish(n);
    }

    /// An answer from `n` to `requester`: a local call when they are the same node.
    pub(super) fn reply(&mut self, n: usize, requester: usize, msg: Msg) {
        if n != requester {
            self.rpc(n, requester, msg);
            return;
        }
        match msg {
            Msg::Result { job } => self.auction(n, auction::Input::Done { job, from: n }),
            Msg::Refused { job, reason } => self.auction(
                n,
                auction::Input::Failed {
                    job,
                    from: n,
                    reason,
                },
            ),
            _ => {}
        }
    }

    /// Starts queued runs on free workers.
    pub(super) fn start_runs(&mut self, n: usize) {
        let workers = self.config.profiles[self.nodes[n].profile].workers.max(1) as usize;
        while self.nodes[n].running.len() < workers {
            let Some(mut run) = self.nodes[n].queue.pop_front() else {
                break;
            };
            run.ends = self.engine.now() + Duration::from_micros(run.compute_us);
            self.nodes[n].running.push(run);
            let life = self.nodes[n].life;
            self.engine.after(
                Duration::from_micros(run.compute_us),
                Event::Finish { node: n, life },
            );
        }
    }

    /// The run whose timer fired on `n`: the one ending first.
    pub(super) fn finish(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(i) = (0..node.running.len()).min_by_key(|&i| (node.running[i].ends, i)) else {
            return;
        };
        let run = node.running.remove(i);
        let p = &self.config.profiles[node.profile];
        let energy_mj = u64::from(p.power_mw).saturating_mul(run.compute_us) / 1_000_000;
        if let Some(b) = node.battery_mj.as_mut() {
            *b = b.saturating_sub(energy_mj);
        }
        let Some(rec) = self.jobs.get(&run.job) else {
            return;
        };
        let digest = rec.shape.model_digest;
        let latency = node.model_latency.entry(digest).or_insert(run.compute_us);
        *latency = (*latency * 7 + run.compute_us) / 8;
        self.report.jobs.energy_mj += energy_mj;
        let life = node.life;
        node.committing += 1;
        let commit = Duration::from_micros(p.commit_us);
        self.engine.after(
            commit,
            Event::Commit {
                node: n,
                life,
                run: Box::new(run),
            },
        );
        self.start_runs(n);
        self.maybe_publish(n);
    }

    /// A run's ledger commit completes on `n` (durable: its storage's sync time after the
    /// run ended); only then does the answer go out. A crash before this loses the run.
    pub(super) fn commit(&mut self, n: usize, run: Run) {
        self.nodes[n].committing -= 1;
        self.nodes[n].finished.push((run.job, run.attempt));
        self.report.jobs.executions += 1;
        let name = self.config.profiles[self.nodes[n].profile].name.clone();
        *self.report.jobs.by_profile.entry(name).or_default() += 1;
        trace_event(&mut self.trace, 5, &[n]);
        let value = ciborium::Value::Array(vec![
            ciborium::Value::Bytes(run.job.to_vec()),
            ciborium::Value::Integer(run.attempt.into()),
            ciborium::Value::Integer((run.requester as u64).into()),
        ]);
        self.append(
            n,
            EntryBody::Unknown {
                kind: KIND_RUN,
                value,
            },
        );
        self.reply(n, run.requester, Msg::Result { job: run.job });
    }
}
