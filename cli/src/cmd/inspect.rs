//! `status`, `peers`, `telemetry`: what the running node says about itself and its mesh.

use fab_client::types::Telemetry;

use super::*;

pub fn peers(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api(g)?.peers()?;
    if json_out {
        print_json(&v);
    } else if !v.mesh {
        println!("the mesh is disabled on this node (mesh.enabled = false)");
    } else if v.peers.is_empty() {
        println!("no peers connected");
    } else {
        for p in &v.peers {
            let rtt = p
                .rtt_ms
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2} ms"));
            let score = p
                .score
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
            println!(
                "{}  {}  {}  rtt {rtt}  score {score}  {}  {} protocols",
                p.peer_id,
                p.role,
                p.transport.as_deref().unwrap_or("?"),
                p.agent_version.as_deref().unwrap_or("?"),
                p.protocols.len()
            );
            for a in &p.addresses {
                println!("    {a}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn telemetry(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api(g)?.telemetry()?;
    if json_out {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |who: &str, t: &Telemetry| {
        let temp = t.host.temp_max_mc.map_or_else(
            || "-".to_owned(),
            |c| format!("{:.1} °C", c as f64 / 1000.0),
        );
        let battery = t
            .battery_permille
            .map_or_else(|| "mains".to_owned(), |b| format!("battery {}%", b / 10));
        println!(
            "{who}  {} {}  [{}]  queue {}/{} workers  speed {}‰  load {}‰ of {} cores  {} MiB free  {temp}  {battery}  {} model(s) measured  {:.1} s old",
            t.tier,
            if t.region.is_empty() { "-" } else { &t.region },
            t.labels.join(","),
            t.queue_depth,
            t.workers,
            t.speed_permille,
            t.host.load_permille,
            t.host.cores,
            t.host.mem_free_mib,
            t.models.len(),
            t.age_ms as f64 / 1000.0
        );
    };
    match &v.own {
        None => println!("self  (no report yet: the mesh is off, or the node just started)"),
        Some(t) => line("self", t),
    }
    for p in &v.peers {
        line(p.peer_id.as_deref().unwrap_or("?"), p);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(g: &Global, json_out: bool) -> Result<ExitCode> {
    let v = api(g)?.node()?;
    if json_out {
        print_json(&v);
    } else {
        println!("peer id        {}", v.peer_id);
        println!("version        {}", v.version);
        println!("uptime         {} s", v.uptime_s);
        println!(
            "ledger         {} entries, head {}",
            v.ledger.entries,
            v.ledger
                .head
                .map_or_else(|| "-".to_owned(), |h| h.to_string())
        );
        println!(
            "workers        {} (queue {})",
            v.inference.workers, v.inference.queue_depth
        );
        println!("models loaded  {}", v.models_loaded.join(", "));
        if v.mesh.enabled {
            println!(
                "mesh           shard {} of {}, {} listen address(es)",
                v.mesh.shard.unwrap_or(0),
                v.mesh.shards.unwrap_or(0),
                v.mesh.listen.as_ref().map_or(0, Vec::len)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
