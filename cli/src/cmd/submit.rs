//! `submit` and `jobs`: running a job through the node's API, and the jobs it placed.

use fab_client::types::{
    Candidate, JobRecord, Placement, PlacementOutcome, SubmitRequest, WeightsRequest,
};

use super::*;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Registered model name
    #[arg(long)]
    model: String,
    /// Input tensor: a .npy file, a JSON file ({"dtype":"f32","shape":[..],"data":[..]}), or
    /// `-` for either on standard input
    #[arg(long, value_name = "FILE|-")]
    input: String,
    /// Deadline for the job in milliseconds, submission to result; nodes that cannot meet it
    /// are not asked [default: limits.job_timeout_ms]
    #[arg(long, visible_alias = "timeout-ms", value_name = "MS")]
    deadline_ms: Option<u64>,
    /// Most the job may cost, in micro-units (a node's price per second times its estimate)
    #[arg(long, value_name = "MICROS")]
    max_cost: Option<u64>,
    /// Allowed tiers: device, edge, cloud (repeat or comma-separate) [default: all]
    #[arg(long, value_delimiter = ',', value_name = "TIER")]
    tier: Vec<String>,
    /// Allowed regions (repeat or comma-separate) [default: all]
    #[arg(long, value_delimiter = ',', value_name = "REGION")]
    region: Vec<String>,
    /// Labels the node must carry, all of them (repeat or comma-separate)
    #[arg(long, value_delimiter = ',', value_name = "LABEL")]
    label: Vec<String>,
    /// Run the job on this many distinct nodes and report whether their outputs agree
    #[arg(long, value_name = "K")]
    replicas: Option<u64>,
    /// Scoring weight for this job, e.g. `--weight cost=100 --weight time=0` (terms: time, cost,
    /// energy, cache, reliability, battery; the others keep the node's scheduler.weight_*)
    #[arg(long, value_name = "TERM=N")]
    weight: Vec<String>,
    /// Print every candidate: its bid or why it did not bid, the score breakdown, the winner
    #[arg(long)]
    explain: bool,
    /// Print the whole answer (outputs and receipt) as JSON
    #[arg(long)]
    json: bool,
    /// Also write each output tensor to DIR/<output name>.npy
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run the job on this peer (a peer id from `fabnode peers`), with no auction. The peer's
    /// signed receipt and outputs are checked against the job before they are shown.
    #[arg(long, value_name = "PEER_ID")]
    on: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Show this job's placement: every candidate, its bid or reason, the scores, the winner
    job: Option<String>,
    /// Print the API's answer as JSON
    #[arg(long)]
    json: bool,
    /// Most jobs to list
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// Largest input file the CLI reads.
const INPUT_FILE_BYTES_MAX: usize = 256 << 20;

/// Reads a tensor from a `.npy` or JSON file, or standard input.
pub fn read_tensor(source: &str) -> Result<Tensor> {
    let bytes = if source == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(INPUT_FILE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else {
        let meta = std::fs::metadata(source).with_context(|| format!("input file {source}"))?;
        if meta.len() > INPUT_FILE_BYTES_MAX as u64 {
            bail!(
                "input file {source} is {} bytes; the limit is {INPUT_FILE_BYTES_MAX}",
                meta.len()
            );
        }
        std::fs::read(source).with_context(|| format!("reading {source}"))?
    };
    let t = if bytes.starts_with(b"\x93NUMPY") {
        Tensor::from_npy(&bytes, INPUT_FILE_BYTES_MAX)
    } else {
        Tensor::from_json_bytes(&bytes, INPUT_FILE_BYTES_MAX)
    };
    t.with_context(|| format!("input {source} is not a valid .npy or tensor JSON file"))
}

fn describe_output(name: &str, t: &Tensor) -> String {
    let shape = format!("{:?}", t.shape());
    let mut line = format!("{name} {} {shape}", t.dtype());
    if t.shape().len() == 2 && t.shape()[0] >= 1 && t.shape()[1] > 1 {
        let tops: Vec<String> = (0..t.shape()[0].min(8))
            .filter_map(|r| t.argmax_row(r))
            .map(|i| i.to_string())
            .collect();
        line.push_str(&format!("  argmax per row: [{}]", tops.join(", ")));
    }
    let v = t.to_json_value();
    if let Some(data) = v["data"].as_array().filter(|d| d.len() <= 16) {
        let vals: Vec<String> = data
            .iter()
            .map(|x| {
                x.as_f64()
                    .map_or_else(|| x.to_string(), |f| format!("{f:.4}"))
            })
            .collect();
        line.push_str(&format!("\n    [{}]", vals.join(", ")));
    }
    line
}

pub fn submit(g: &Global, a: SubmitArgs) -> Result<ExitCode> {
    let config = load_config(g, &[])?;
    let input = read_tensor(&a.input)?;
    let client = api_client(g, &config, Duration::from_secs(300))?;
    let mut request = SubmitRequest::new(a.model.clone(), input.clone());
    request.deadline_ms = a.deadline_ms;
    request.on = a.on.clone();
    request.max_cost_micros = a.max_cost;
    request.tiers = a.tier.clone();
    request.regions = a.region.clone();
    request.labels = a.label.clone();
    request.replicas = a.replicas;
    if !a.weight.is_empty() {
        let mut w = WeightsRequest::default();
        for kv in &a.weight {
            let (k, v) = kv
                .split_once('=')
                .and_then(|(k, v)| Some((k.trim(), v.trim().parse::<u64>().ok()?)))
                .with_context(|| format!("--weight {kv:?}: expected TERM=N, e.g. cost=100"))?;
            let term = match k {
                "time" => &mut w.time,
                "cost" => &mut w.cost,
                "energy" => &mut w.energy,
                "cache" => &mut w.cache,
                "reliability" => &mut w.reliability,
                "battery" => &mut w.battery,
                other => bail!(
                    "--weight {other}: the terms are time, cost, energy, cache, reliability, battery"
                ),
            };
            *term = Some(v);
        }
        request.weights = Some(w);
    }
    request.explain = a.explain;
    let answer = match client.submit(&request) {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(body) = e.body() {
                if a.json {
                    print_json(body);
                } else if let (true, Some(p)) = (a.explain, &body.placement) {
                    print_placement(p);
                }
            }
            return Err(e.into());
        }
    };
    let input_name = answer.input_names.first().map(String::as_str);
    let executor = answer.executor.as_deref().or(a.on.as_deref());
    let verified = fab_client::verify::job_result(&answer, input_name, &input, executor)?;
    let outputs: Vec<(&str, &fab_inference::Tensor)> = answer
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), &o.tensor))
        .collect();
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, t) in &outputs {
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let path = dir.join(format!("{safe}.npy"));
            std::fs::write(&path, t.to_npy())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if a.json {
        let mut out = serde_json::to_value(&answer)?;
        out["receipt_verified"] = serde_json::Value::Bool(true);
        print_json(&out);
        return Ok(ExitCode::SUCCESS);
    }
    let e = verified.entry.body();
    let EntryBody::Execution(r) = &e.body else {
        bail!("receipt is not an execution entry")
    };
    for (name, t) in &outputs {
        println!("{}", describe_output(name, t));
    }
    if let Some((_, probs)) = outputs
        .iter()
        .find(|(n, _)| *n == "probabilities")
        .or(outputs.last())
        && let Some(top) = probs.argmax_row(0)
    {
        println!("prediction: {top}");
    }
    println!("receipt (verified: signature, executor, input and output digests)");
    println!("  job        {}", verified.job_id);
    println!("  entry      #{} {}", e.seq, verified.entry.id());
    println!("  executor   {}", e.feed.peer_id());
    println!(
        "  model      {} {}",
        r.job.body().model,
        r.model_digest.short()
    );
    println!("  input      {}", r.input_digest.short());
    println!(
        "  output     {}",
        r.output_digest.map(|d| d.short()).unwrap_or_default()
    );
    println!(
        "  run        {} µs (queued {} µs, total {} µs, cpu {} µs)",
        r.timings.run_us, r.timings.queued_us, r.timings.total_us, r.metering.cpu_time_us
    );
    println!("  class      {}", r.determinism.class());
    println!("  signature  {}", hex::encode(verified.entry.signature()));
    if let Some(p) = &answer.placement {
        println!(
            "placed on {} in {} attempt(s){}{}",
            p.winners.join(", "),
            p.attempts,
            if p.fast_path {
                " (this node, no round trip)"
            } else {
                ""
            },
            p.decided_ms
                .map_or_else(String::new, |ms| format!(", decided in {ms:.2} ms"))
        );
    }
    if let Some(reps) = &answer.replicas {
        println!(
            "replicas: {} ran it; outputs {}",
            reps.len(),
            if answer.replicas_agree == Some(true) {
                "agree"
            } else {
                "DIFFER"
            }
        );
        for rep in reps {
            println!(
                "  {}  entry #{}  output {}",
                rep.executor,
                rep.seq,
                rep.output_digest
                    .map_or_else(|| "-".to_owned(), |d| d.short())
            );
        }
    }
    if let (true, Some(p)) = (a.explain, &answer.placement) {
        print_placement(p);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every candidate of a placement, one line each, best first as the auction ranked them.
fn print_placement(p: &Placement) {
    let w = p.weights.as_ref();
    let term = |f: fn(&fab_client::types::Weights) -> u64| {
        w.map_or_else(|| "-".to_owned(), |w| f(w).to_string())
    };
    println!(
        "placement: weights time {} cost {} energy {} cache {} reliability {} battery {}{}",
        term(|w| w.time),
        term(|w| w.cost),
        term(|w| w.energy),
        term(|w| w.cache),
        term(|w| w.reliability),
        term(|w| w.battery),
        if p.fast_path {
            "; fast path: this node scored best, no call for bids"
        } else {
            ""
        }
    );
    println!(
        "  {:<59} {:<10} {:>10} {:>8} {:>9}  {:>6}  score terms (time cost energy cache reliability battery)",
        "candidate", "standing", "completion", "cost", "energy", "total"
    );
    let winner = |c: &Candidate| p.winners.contains(&c.peer_id);
    // Winners first, then by score, then those that did not bid.
    let mut cands: Vec<&Candidate> = p.candidates.iter().flatten().collect();
    cands.sort_by_key(|c| (!winner(c), std::cmp::Reverse(c.score.map(|s| s.total))));
    for c in cands {
        let who = format!("{}{}", c.peer_id, if c.local { " (self)" } else { "" });
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let terms = c.score.map_or_else(String::new, |s| {
            format!(
                "{} {} {} {} {} {}",
                s.time, s.cost, s.energy, s.cache, s.reliability, s.battery
            )
        });
        let standing = serde_json::to_value(c.standing)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{} {:<59} {:<10} {:>8}µs {:>8} {:>7}µJ  {:>6}  {terms}{}",
            if winner(c) { "*" } else { " " },
            who,
            standing,
            num(c.estimate.map(|e| e.completion_us)),
            num(c.estimate.map(|e| e.cost_micros)),
            num(c.estimate.map(|e| e.energy_uj)),
            num(c.score.map(|s| s.total)),
            c.reason
                .as_deref()
                .map_or_else(String::new, |r| format!("  {r}"))
        );
    }
    match &p.outcome {
        Some(Some(PlacementOutcome::Ok)) => println!("outcome: ok after {} attempt(s)", p.attempts),
        Some(Some(PlacementOutcome::Failed(r))) => println!("outcome: failed: {r}"),
        _ => println!("outcome: running"),
    }
}

pub fn jobs(g: &Global, a: JobsArgs) -> Result<ExitCode> {
    let client = api(g)?;
    if let Some(id) = &a.job {
        let id: fab_ledger::ContentId = id
            .parse()
            .map_err(|_| anyhow::anyhow!("{id:?} is not a job id (64 hex digits)"))?;
        let v = client.job(&id)?;
        if a.json {
            print_json(&v);
        } else {
            println!(
                "{}  {:<12} {:<6} {:>8.2} ms  {} attempt(s){}  on {}{}{}",
                &v.job_id.to_string()[..16],
                v.model.as_deref().unwrap_or("?"),
                v.status.as_deref().unwrap_or("ran"),
                v.latency_ms.unwrap_or(0.0),
                v.attempts.unwrap_or(0),
                if v.fast_path == Some(true) {
                    " (local)"
                } else {
                    ""
                },
                v.executors
                    .as_ref()
                    .map(|e| e.join(","))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".into()),
                agree_note(v.replicas_agree.flatten()),
                v.error
                    .flatten()
                    .map_or_else(String::new, |e| format!("  error: {e}"))
            );
            match &v.placement {
                Some(p) => print_placement(p),
                None => println!(
                    "(this node ran the job for a peer; the peer that placed it explains it)"
                ),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let v = client.jobs(a.limit)?;
    if a.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    if v.jobs.is_empty() {
        println!("no jobs placed by this node yet (fabnode submit places one)");
    }
    for j in &v.jobs {
        job_line(j);
    }
    Ok(ExitCode::SUCCESS)
}

fn agree_note(agree: Option<bool>) -> &'static str {
    match agree {
        Some(true) => "  replicas agree",
        Some(false) => "  replicas DIFFER",
        None => "",
    }
}

fn job_line(j: &JobRecord) {
    println!(
        "{}  {:<12} {:<6} {:>8.2} ms  {} attempt(s){}  on {}{}{}",
        &j.job_id.to_string()[..16],
        j.model,
        j.status,
        j.latency_ms,
        j.attempts,
        if j.fast_path { " (local)" } else { "" },
        if j.executors.is_empty() {
            "-".to_owned()
        } else {
            j.executors.join(",")
        },
        agree_note(j.replicas_agree),
        j.error
            .as_deref()
            .map_or_else(String::new, |e| format!("  error: {e}"))
    );
}
