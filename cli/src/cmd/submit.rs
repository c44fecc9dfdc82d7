//! `submit` and `jobs`: running a job through the node's API, and the jobs it placed.

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
    let mut body = json!({"model": a.model, "input": input.to_json_value()});
    if let Some(t) = a.deadline_ms {
        body["deadline_ms"] = json!(t);
    }
    if let Some(peer) = &a.on {
        body["on"] = json!(peer);
    }
    if let Some(c) = a.max_cost {
        body["max_cost_micros"] = json!(c);
    }
    for (key, v) in [
        ("tiers", &a.tier),
        ("regions", &a.region),
        ("labels", &a.label),
    ] {
        if !v.is_empty() {
            body[key] = json!(v);
        }
    }
    if let Some(k) = a.replicas {
        body["replicas"] = json!(k);
    }
    if !a.weight.is_empty() {
        let mut w = serde_json::Map::new();
        for kv in &a.weight {
            let (k, v) = kv
                .split_once('=')
                .and_then(|(k, v)| Some((k.trim(), v.trim().parse::<u64>().ok()?)))
                .with_context(|| format!("--weight {kv:?}: expected TERM=N, e.g. cost=100"))?;
            w.insert(k.to_owned(), json!(v));
        }
        body["weights"] = serde_json::Value::Object(w);
    }
    if a.explain {
        body["explain"] = json!(true);
    }
    let (status, answer) = client.post("/v1/jobs", &body)?;
    if status != 200 {
        if a.json {
            print_json(&answer);
        } else if a.explain && answer["placement"].is_object() {
            print_placement(&answer["placement"]);
        }
        bail!("{}", error_message(status, &answer));
    }
    let input_name = answer["input_names"][0].as_str();
    let executor = answer["executor"].as_str().or(a.on.as_deref());
    let verified = verify_job_response(&answer, input_name, &input, executor)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, t) in &verified.outputs {
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
        let mut out = answer.clone();
        out["receipt_verified"] = json!(true);
        print_json(&out);
        return Ok(ExitCode::SUCCESS);
    }
    let e = verified.entry.body();
    let EntryBody::Execution(r) = &e.body else {
        bail!("receipt is not an execution entry")
    };
    for (name, t) in &verified.outputs {
        println!("{}", describe_output(name, t));
    }
    if let Some((_, probs)) = verified
        .outputs
        .iter()
        .find(|(n, _)| n == "probabilities")
        .or(verified.outputs.last())
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
    let p = &answer["placement"];
    if p.is_object() {
        println!(
            "placed on {} in {} attempt(s){}{}",
            p["winners"]
                .as_array()
                .map(|w| w
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            p["attempts"],
            if p["fast_path"] == true {
                " (this node, no round trip)"
            } else {
                ""
            },
            p["decided_ms"]
                .as_f64()
                .map_or_else(String::new, |ms| format!(", decided in {ms:.2} ms"))
        );
    }
    if let Some(reps) = answer["replicas"].as_array() {
        println!(
            "replicas: {} ran it; outputs {}",
            reps.len(),
            if answer["replicas_agree"] == true {
                "agree"
            } else {
                "DIFFER"
            }
        );
        for rep in reps {
            println!(
                "  {}  entry #{}  output {}",
                rep["executor"].as_str().unwrap_or("?"),
                rep["seq"],
                rep["output_digest"]
                    .as_str()
                    .map_or("-", |d| &d[..d.len().min(16)])
            );
        }
    }
    if a.explain {
        print_placement(p);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every candidate of a placement, one line each, best first as the auction ranked them.
fn print_placement(p: &serde_json::Value) {
    let w = &p["weights"];
    println!(
        "placement: weights time {} cost {} energy {} cache {} reliability {} battery {}{}",
        w["time"],
        w["cost"],
        w["energy"],
        w["cache"],
        w["reliability"],
        w["battery"],
        if p["fast_path"] == true {
            "; fast path: this node scored best, no call for bids"
        } else {
            ""
        }
    );
    println!(
        "  {:<59} {:<10} {:>10} {:>8} {:>9}  {:>6}  score terms (time cost energy cache reliability battery)",
        "candidate", "standing", "completion", "cost", "energy", "total"
    );
    let winner = |c: &serde_json::Value| {
        p["winners"]
            .as_array()
            .is_some_and(|w| w.contains(&c["peer_id"]))
    };
    // Winners first, then by score, then those that did not bid.
    let mut cands: Vec<&serde_json::Value> =
        p["candidates"].as_array().into_iter().flatten().collect();
    cands.sort_by_key(|c| (!winner(c), std::cmp::Reverse(c["score"]["total"].as_u64())));
    for c in cands {
        let winner = winner(c);
        let who = format!(
            "{}{}",
            c["peer_id"].as_str().unwrap_or("?"),
            if c["local"] == true { " (self)" } else { "" }
        );
        let e = &c["estimate"];
        let s = &c["score"];
        let num =
            |v: &serde_json::Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
        let terms = if s.is_object() {
            format!(
                "{} {} {} {} {} {}",
                s["time"], s["cost"], s["energy"], s["cache"], s["reliability"], s["battery"]
            )
        } else {
            String::new()
        };
        println!(
            "{} {:<59} {:<10} {:>8}µs {:>8} {:>7}µJ  {:>6}  {terms}{}",
            if winner { "*" } else { " " },
            who,
            c["standing"].as_str().unwrap_or("?"),
            num(&e["completion_us"]),
            num(&e["cost_micros"]),
            num(&e["energy_uj"]),
            num(&s["total"]),
            c["reason"]
                .as_str()
                .map_or_else(String::new, |r| format!("  {r}"))
        );
    }
    match &p["outcome"] {
        v if v == "ok" => println!("outcome: ok after {} attempt(s)", p["attempts"]),
        v if v.is_object() => println!("outcome: failed: {}", v["failed"].as_str().unwrap_or("?")),
        _ => println!("outcome: running"),
    }
}

pub fn jobs(g: &Global, a: JobsArgs) -> Result<ExitCode> {
    if let Some(id) = &a.job {
        let v = api_get(g, &format!("/v1/jobs/{id}"))?;
        if a.json {
            print_json(&v);
        } else {
            job_line(&v);
            if v["placement"].is_object() {
                print_placement(&v["placement"]);
            } else {
                println!("(this node ran the job for a peer; the peer that placed it explains it)");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let v = api_get(g, &format!("/v1/jobs?limit={}", a.limit))?;
    if a.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no jobs placed by this node yet (fabnode submit places one)");
    }
    for j in &jobs {
        job_line(j);
    }
    Ok(ExitCode::SUCCESS)
}

fn job_line(j: &serde_json::Value) {
    let id = j["job_id"].as_str().unwrap_or("?");
    println!(
        "{}  {:<12} {:<6} {:>8.2} ms  {} attempt(s){}  on {}{}{}",
        &id[..id.len().min(16)],
        j["model"].as_str().unwrap_or("?"),
        j["status"].as_str().unwrap_or("?"),
        j["latency_ms"].as_f64().unwrap_or(0.0),
        j["attempts"],
        if j["fast_path"] == true {
            " (local)"
        } else {
            ""
        },
        j["executors"]
            .as_array()
            .map(|e| e
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(","))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into()),
        match j["replicas_agree"].as_bool() {
            Some(true) => "  replicas agree",
            Some(false) => "  replicas DIFFER",
            None => "",
        },
        j["error"]
            .as_str()
            .map_or_else(String::new, |e| format!("  error: {e}"))
    );
}
