//! `status`, `peers`, `telemetry`: what the running node says about itself and its mesh.

use super::*;

pub fn peers(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api_get(g, "/v1/peers")?;
    if json_out {
        print_json(&v);
    } else if v["mesh"] == false {
        println!("the mesh is disabled on this node (mesh.enabled = false)");
    } else if v["peers"].as_array().is_none_or(|p| p.is_empty()) {
        println!("no peers connected");
    } else {
        for p in v["peers"].as_array().into_iter().flatten() {
            let rtt = p["rtt_ms"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2} ms"));
            let score = p["score"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
            println!(
                "{}  {}  rtt {rtt}  score {score}  {}  {} protocols",
                p["peer_id"].as_str().unwrap_or("?"),
                p["transport"].as_str().unwrap_or("?"),
                p["agent_version"].as_str().unwrap_or("?"),
                p["protocols"].as_array().map_or(0, |a| a.len())
            );
            for a in p["addresses"].as_array().into_iter().flatten() {
                println!("    {}", a.as_str().unwrap_or("?"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn telemetry(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api_get(g, "/v1/telemetry")?;
    if json_out {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |who: &str, t: &serde_json::Value| {
        let labels: Vec<&str> = t["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str())
            .collect();
        let temp = t["host"]["temp_max_mc"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |c| format!("{:.1} °C", c / 1000.0));
        let battery = t["battery_permille"]
            .as_u64()
            .map_or_else(|| "mains".to_owned(), |b| format!("battery {}%", b / 10));
        println!(
            "{who}  {} {}  [{}]  queue {}/{} workers  speed {}‰  load {}‰ of {} cores  {} MiB free  {temp}  {battery}  {} model(s) measured  {:.1} s old",
            t["tier"].as_str().unwrap_or("?"),
            t["region"]
                .as_str()
                .filter(|r| !r.is_empty())
                .unwrap_or("-"),
            labels.join(","),
            t["queue_depth"],
            t["workers"],
            t["speed_permille"],
            t["host"]["load_permille"],
            t["host"]["cores"],
            t["host"]["mem_free_mib"],
            t["models"].as_object().map_or(0, |m| m.len()),
            t["age_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
    };
    match v["self"].is_null() {
        true => println!("self  (no report yet: the mesh is off, or the node just started)"),
        false => line("self", &v["self"]),
    }
    for p in v["peers"].as_array().into_iter().flatten() {
        line(p["peer_id"].as_str().unwrap_or("?"), p);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(g: &Global, json_out: bool) -> Result<ExitCode> {
    let config = load_config(g, &[])?;
    let client = api_client(g, &config, Duration::from_secs(10))?;
    let (status, v) = client.get("/v1/node")?;
    if status != 200 {
        bail!("{}", error_message(status, &v));
    }
    if json_out {
        print_json(&v);
    } else {
        println!("peer id        {}", v["peer_id"].as_str().unwrap_or("?"));
        println!("version        {}", v["version"].as_str().unwrap_or("?"));
        println!("uptime         {} s", v["uptime_s"]);
        println!(
            "ledger         {} entries, head {}",
            v["ledger"]["entries"],
            v["ledger"]["head"].as_str().unwrap_or("-")
        );
        println!(
            "workers        {} (queue {})",
            v["inference"]["workers"], v["inference"]["queue_depth"]
        );
        println!("models loaded  {}", v["models_loaded"]);
        let mesh = &v["mesh"];
        if mesh["enabled"] == true {
            println!(
                "mesh           shard {} of {}, {} listen address(es)",
                mesh["shard"],
                mesh["shards"],
                mesh["listen"].as_array().map_or(0, Vec::len)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
