//! `fabnode simulate --svg`: one self-contained SVG with three panels: the latency CDF of
//! completed jobs, runs per node (coloured by device class), and replication progress over
//! virtual time with the fault phase shaded.

use std::fmt::Write;

use fab_sims::sim::{Config, Report};

const W: f64 = 900.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws the report.
pub fn render(c: &Config, r: &Report) -> String {
    let mut out = String::new();
    let height = 3.0 * (PANEL_H + 60.0) + 40.0;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15">fabnode simulate: {} nodes, seed {}, {} jobs ({} failed), trace {}</text>"#,
        c.peers,
        c.seed,
        r.jobs.submitted,
        r.jobs.failed,
        &hex::encode(r.trace)[..16]
    );
    latency_cdf(&mut out, r, 40.0);
    runs_per_node(&mut out, c, r, 40.0 + PANEL_H + 60.0);
    progress(&mut out, c, r, 40.0 + 2.0 * (PANEL_H + 60.0));
    out.push_str("</svg>\n");
    out
}

fn frame(out: &mut String, top: f64, title: &str, x_label: &str, y_label: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        top + 14.0,
        esc(title)
    );
    let (x0, y0, x1, y1) = (LEFT, top + 24.0, W - RIGHT, top + 24.0 + PANEL_H);
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        x1 - x0,
        y1 - y0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        y1 + 32.0,
        esc(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(y_label)
    );
}

/// Maps a value in `lo..=hi` onto `a..=b`.
fn scale(v: f64, lo: f64, hi: f64, a: f64, b: f64) -> f64 {
    if hi <= lo {
        return a;
    }
    a + (v - lo) / (hi - lo) * (b - a)
}

fn latency_cdf(out: &mut String, r: &Report, top: f64) {
    frame(
        out,
        top,
        &format!(
            "Latency of completed jobs (p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms)",
            r.jobs.latency_us[0] as f64 / 1e3,
            r.jobs.latency_us[1] as f64 / 1e3,
            r.jobs.latency_us[2] as f64 / 1e3
        ),
        "submission to result, ms (log scale)",
        "share of jobs",
    );
    let lat = &r.jobs.latencies_us;
    let (y0, y1) = (top + 24.0 + PANEL_H, top + 24.0);
    if lat.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">no completed jobs</text>"#,
            LEFT + 10.0,
            top + 60.0
        );
        return;
    }
    // Decades from 0.01 ms up to the slowest job.
    let lo = (lat[0].max(10) as f64 / 1e3).log10().floor();
    let hi = (*lat.last().unwrap_or(&10) as f64 / 1e3)
        .max(0.1)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |ms: f64| scale(ms.max(1e-3).log10(), lo, hi, LEFT, W - RIGHT);
    let mut decade = lo;
    while decade <= hi {
        let px = x(10f64.powf(decade));
        let _ = writeln!(
            out,
            r##"<line x1="{px}" y1="{y0}" x2="{px}" y2="{y1}" stroke="#eee"/><text x="{px}" y="{}" text-anchor="middle">{}</text>"##,
            y0 + 14.0,
            10f64.powf(decade)
        );
        decade += 1.0;
    }
    for q in [0.25, 0.5, 0.75, 1.0] {
        let py = scale(q, 0.0, 1.0, y0, y1);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{q}</text>"#,
            LEFT - 4.0,
            py + 4.0
        );
    }
    let n = lat.len() as f64;
    let mut path = String::new();
    // At most ~2,000 points: a step per quantile.
    let step = (lat.len() / 2000).max(1);
    for (i, l) in lat.iter().enumerate().step_by(step) {
        let px = x(*l as f64 / 1e3);
        let py = scale((i + 1) as f64 / n, 0.0, 1.0, y0, y1);
        let _ = write!(path, "{}{px:.1},{py:.1} ", if i == 0 { "M" } else { "L" });
    }
    let _ = write!(
        path,
        "L{:.1},{:.1}",
        x(*lat.last().unwrap_or(&0) as f64 / 1e3),
        y1
    );
    let _ = writeln!(
        out,
        r##"<path d="{path}" fill="none" stroke="#4e79a7" stroke-width="2"/>"##
    );
}

fn runs_per_node(out: &mut String, c: &Config, r: &Report, top: f64) {
    frame(
        out,
        top,
        &format!(
            "Runs per node, busiest first (Gini {:.2}; {} runs, {:.1} J)",
            r.jobs.gini_permille as f64 / 1e3,
            r.jobs.executions,
            r.jobs.energy_mj as f64 / 1e3
        ),
        "nodes",
        "runs",
    );
    let mut runs = r.jobs.runs_per_node.clone();
    runs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let max = runs.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let (y0, y1) = (top + 24.0 + PANEL_H, top + 24.0);
    let width = (W - RIGHT - LEFT) / runs.len().max(1) as f64;
    let colour = |name: &str| {
        let i = c.profiles.iter().position(|p| p.name == name).unwrap_or(0);
        COLOURS[i % COLOURS.len()]
    };
    for (i, (profile, n)) in runs.iter().enumerate() {
        let h = scale(*n as f64, 0.0, max, 0.0, y0 - y1);
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {n}</title></rect>"#,
            LEFT + i as f64 * width,
            y0 - h,
            (width - 1.0).max(0.5),
            colour(profile),
            esc(profile)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">{max}</text>"#,
        LEFT - 4.0,
        y1 + 10.0
    );
    for (i, p) in c.profiles.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT - 110.0,
            y1 + 8.0 + 16.0 * i as f64,
            COLOURS[i % COLOURS.len()],
            W - RIGHT - 95.0,
            y1 + 17.0 + 16.0 * i as f64,
            esc(&p.name)
        );
    }
}

fn progress(out: &mut String, c: &Config, r: &Report, top: f64) {
    frame(
        out,
        top,
        &match r.converged_after {
            Some(d) => format!(
                "Replication: share of entries held by the nodes that should hold them (converged {:.2} s after the faults)",
                d.as_secs_f64()
            ),
            None => "Replication: share of entries held (did not converge)".to_owned(),
        },
        "virtual time, s (fault phase shaded)",
        "held, %",
    );
    let (y0, y1) = (top + 24.0 + PANEL_H, top + 24.0);
    let end = (c.fault_phase + c.recovery).as_millis().max(1) as f64;
    let x = |ms: f64| scale(ms, 0.0, end, LEFT, W - RIGHT);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y1}" width="{:.1}" height="{}" fill="#fbeaea"/>"##,
        x(c.fault_phase.as_millis() as f64) - LEFT,
        y0 - y1
    );
    let secs = (end / 1000.0).ceil() as u64;
    let every = (secs / 10).max(1);
    for s in (0..=secs).step_by(every as usize) {
        let px = x(s as f64 * 1000.0);
        let _ = writeln!(
            out,
            r#"<text x="{px}" y="{}" text-anchor="middle">{s}</text>"#,
            y0 + 14.0
        );
    }
    // The lowest sample sets the floor, so small dips show.
    let floor = r
        .progress
        .iter()
        .map(|(_, p)| *p)
        .min()
        .unwrap_or(0)
        .min(900) as f64
        / 10.0;
    let floor = (floor / 10.0).floor() * 10.0;
    for pct in [floor, (floor + 100.0) / 2.0, 100.0] {
        let py = scale(pct, floor, 100.0, y0, y1);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{pct:.0}</text>"#,
            LEFT - 4.0,
            py + 4.0
        );
    }
    let mut path = String::new();
    for (i, (ms, permille)) in r.progress.iter().enumerate() {
        let px = x(*ms as f64);
        let py = scale(*permille as f64 / 10.0, floor, 100.0, y0, y1);
        let _ = write!(path, "{}{px:.1},{py:.1} ", if i == 0 { "M" } else { "L" });
    }
    let _ = writeln!(
        out,
        r##"<path d="{path}" fill="none" stroke="#59a14f" stroke-width="2"/>"##
    );
}
