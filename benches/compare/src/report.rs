//! Ratios, medians, the terminal tables and the JSON/CSV files.

use crate::slow::{SlowRun, BASELINE as SLOW_BASELINE};
use crate::{ChaosRun, Config, Run, BUCKET_MS};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// The baseline every ratio is taken against.
pub const BASELINE: &str = "may_minihttp";

/// Sets each run's ratios against may_minihttp's run of the same repetition,
/// setup and scenario: runs close in time share the machine's state (clock
/// speed, other load), so the ratio is steadier than either absolute figure.
pub fn ratios_vs_may(runs: &mut [Run]) {
    let base: Vec<(usize, &str, &str, f64, f64)> = runs
        .iter()
        .filter(|r| r.server == BASELINE)
        .map(|r| (r.rep, r.setup, r.scenario, r.sample.rps, r.cpu_us_per_req))
        .collect();
    for r in runs.iter_mut() {
        if let Some(&(_, _, _, rps, cpu)) =
            base.iter().find(|b| (b.0, b.1, b.2) == (r.rep, r.setup, r.scenario))
        {
            r.rps_vs_may = (rps > 0.0).then(|| r.sample.rps / rps);
            r.cpu_vs_may = (cpu > 0.0).then(|| r.cpu_us_per_req / cpu);
        }
    }
}

/// Median, minimum and maximum of some values.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub med: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { med, min: v[0], max: v[n - 1] })
    }

    fn json(self) -> Value {
        json!({ "median": self.med, "min": self.min, "max": self.max })
    }
}

/// One row of the summary: a server in one setup and scenario over all
/// repetitions.
#[derive(Clone, Debug)]
pub struct Summary {
    pub setup: &'static str,
    pub scenario: &'static str,
    pub server: String,
    pub reps: usize,
    pub rps: Spread,
    pub cpu_us_per_req: Spread,
    pub rps_vs_may: Option<Spread>,
    pub cpu_vs_may: Option<Spread>,
    pub rss_kib: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The largest maximum latency over the repetitions.
    pub max_us: f64,
    pub errors: u64,
}

pub fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut keys: Vec<(&'static str, &'static str, String)> = Vec::new();
    for r in runs {
        let k = (r.setup, r.scenario, r.server.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .filter_map(|(setup, scenario, server)| {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.setup == setup && r.scenario == scenario && r.server == server)
                .collect();
            let col = |f: &dyn Fn(&Run) -> f64| Spread::of(rs.iter().map(|r| f(r)).collect());
            let opt = |f: &dyn Fn(&Run) -> Option<f64>| {
                Spread::of(rs.iter().filter_map(|r| f(r)).collect())
            };
            Some(Summary {
                setup,
                scenario,
                reps: rs.len(),
                rps: col(&|r| r.sample.rps)?,
                cpu_us_per_req: col(&|r| r.cpu_us_per_req)?,
                rps_vs_may: opt(&|r| r.rps_vs_may),
                cpu_vs_may: opt(&|r| r.cpu_vs_may),
                rss_kib: col(&|r| r.rss_kib as f64)?.med,
                p50_us: col(&|r| r.sample.p50_us)?.med,
                p99_us: col(&|r| r.sample.p99_us)?.med,
                max_us: col(&|r| r.sample.max_us)?.max,
                errors: rs.iter().map(|r| r.sample.errors()).sum(),
                server,
            })
        })
        .collect()
}

fn ratio(s: Option<Spread>) -> String {
    s.map_or("-".into(), |s| format!("{:.2} ({:.2}-{:.2})", s.med, s.min, s.max))
}

pub fn lat(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else if us >= 10_000.0 {
        format!("{:.0}ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
    }
}

pub fn table(rows: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<6} {:<11} {:<12} {:>22} {:>20} {:>17} {:>17} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "setup",
        "scenario",
        "server",
        "req/s med (min-max)",
        "CPU us/req med",
        "req/s vs may",
        "CPU/req vs may",
        "RSS MiB",
        "p50",
        "p99",
        "max",
        "errors"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<6} {:<11} {:<12} {:>22} {:>20} {:>17} {:>17} {:>7.1} {:>7} {:>7} {:>7} {:>6}",
            r.setup,
            r.scenario,
            r.server,
            format!("{:.0} ({:.0}-{:.0})", r.rps.med, r.rps.min, r.rps.max),
            format!(
                "{:.2} ({:.2}-{:.2})",
                r.cpu_us_per_req.med, r.cpu_us_per_req.min, r.cpu_us_per_req.max
            ),
            ratio(r.rps_vs_may),
            ratio(r.cpu_vs_may),
            r.rss_kib / 1024.0,
            lat(r.p50_us),
            lat(r.p99_us),
            lat(r.max_us),
            r.errors
        );
    }
    t
}

fn sample_json(s: &crate::Sample) -> Value {
    json!({
        "requests": s.requests, "secs": s.secs, "rps": s.rps,
        "latency_us": { "avg": s.avg_us, "p50": s.p50_us, "p75": s.p75_us,
                         "p90": s.p90_us, "p99": s.p99_us, "p999": s.p999_us,
                         "max": s.max_us },
        "errors": { "connect": s.err_connect, "read": s.err_read, "write": s.err_write,
                    "timeout": s.err_timeout, "non2xx": s.non2xx },
    })
}

fn run_json(r: &Run) -> Value {
    json!({
        "rep": r.rep, "setup": r.setup, "scenario": r.scenario, "server": r.server,
        "tool": r.tool, "load": sample_json(&r.sample), "cpu_us": r.cpu_us,
        "cpu_us_per_req": r.cpu_us_per_req, "rss_kib": r.rss_kib, "processes": r.procs,
        "rps_vs_may": r.rps_vs_may, "cpu_vs_may": r.cpu_vs_may,
    })
}

fn config_json(cfg: &Config) -> Value {
    json!({
        "quick": cfg.quick, "secs": cfg.secs, "warmup": cfg.warmup, "reps": cfg.reps,
        "chaos_secs": cfg.chaos_secs, "chaos_n": cfg.chaos_n,
        "slow_secs": cfg.slow_secs, "slow_every": cfg.slow_every, "slow_ms": cfg.slow_ms,
        "handoff_after": cfg.handoff_after,
        "vigil": cfg.vigil.as_ref().map(|p| p.display().to_string()),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

pub fn write_bench(cfg: &Config, runs: &[Run], summary: &[Summary]) -> crate::Result<()> {
    let rows: Vec<Value> = summary
        .iter()
        .map(|s| {
            json!({
                "setup": s.setup, "scenario": s.scenario, "server": s.server, "reps": s.reps,
                "rps": s.rps.json(), "cpu_us_per_req": s.cpu_us_per_req.json(),
                "rps_vs_may": s.rps_vs_may.map(Spread::json),
                "cpu_vs_may": s.cpu_vs_may.map(Spread::json),
                "rss_kib_median": s.rss_kib, "p50_us_median": s.p50_us,
                "p99_us_median": s.p99_us, "max_us": s.max_us, "errors": s.errors,
            })
        })
        .collect();
    let doc = json!({
        "config": config_json(cfg),
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        "summary": rows,
    });
    std::fs::write(cfg.out.join("bench.json"), serde_json::to_string_pretty(&doc)?)?;
    let mut csv = String::from(
        "rep,setup,scenario,server,tool,requests,secs,rps,cpu_us,cpu_us_per_req,rps_vs_may,cpu_vs_may,rss_kib,processes,p50_us,p75_us,p90_us,p99_us,max_us,err_connect,err_read,err_write,err_timeout,non2xx\n",
    );
    let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in runs {
        let s = &r.sample;
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{:.3},{:.1},{},{:.4},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.rep,
            r.setup,
            r.scenario,
            r.server,
            r.tool,
            s.requests,
            s.secs,
            s.rps,
            r.cpu_us,
            r.cpu_us_per_req,
            o(r.rps_vs_may),
            o(r.cpu_vs_may),
            r.rss_kib,
            r.procs,
            s.p50_us,
            s.p75_us,
            s.p90_us,
            s.p99_us,
            s.max_us,
            s.err_connect,
            s.err_read,
            s.err_write,
            s.err_timeout,
            s.non2xx
        );
    }
    std::fs::write(cfg.out.join("bench.csv"), csv)?;
    Ok(())
}

/// Requests/s of the chaos case against its no-chaos twin with the same tool.
pub fn retained(runs: &[ChaosRun], r: &ChaosRun) -> Option<f64> {
    if !r.chaos {
        return None;
    }
    let base = r.label.trim_end_matches(" chaos");
    runs.iter()
        .find(|b| !b.chaos && b.label == base && b.tool == r.tool)
        .filter(|b| b.sample.rps > 0.0)
        .map(|b| r.sample.rps / b.sample.rps)
}

pub fn chaos_table(runs: &[ChaosRun]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<19} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>7} {:>7} {:>6}",
        "server",
        "tool",
        "req/s",
        "retained",
        "errors",
        "refused",
        "timeouts",
        "replaced",
        "cores",
        "CPU us/req",
        "RSS",
        "p99",
        "max",
        "alive"
    );
    for r in runs {
        let _ = writeln!(
            t,
            "{:<19} {:<7} {:>9.0} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8.2} {:>10.2} {:>6.0} {:>7} {:>7} {:>6}",
            r.label,
            r.tool,
            r.sample.rps,
            retained(runs, r).map_or("-".into(), |v| format!("{:.1}%", v * 100.0)),
            r.sample.errors(),
            r.sample.err_connect,
            r.sample.err_timeout,
            r.marks.len(),
            r.cores,
            r.cpu_us_per_req,
            r.rss_kib as f64 / 1024.0,
            lat(r.sample.p99_us),
            lat(r.sample.max_us),
            if r.alive { "yes" } else { "NO" }
        );
    }
    t
}

pub fn write_chaos(cfg: &Config, stem: &str, runs: &[ChaosRun]) -> crate::Result<()> {
    let doc = json!({
        "config": config_json(cfg),
        "bucket_ms": BUCKET_MS,
        "cases": runs.iter().map(|r| json!({
            "label": r.label, "chaos": r.chaos, "tool": r.tool, "load": sample_json(&r.sample),
            "retained": retained(runs, r), "cpu_us": r.cpu_us, "cpu_us_per_req": r.cpu_us_per_req,
            "cores": r.cores, "rss_kib": r.rss_kib, "alive_after": r.alive,
            "replacements": r.marks.iter().map(|(t, l)| json!({ "secs": t, "line": l })).collect::<Vec<_>>(),
            "ok_per_bucket": r.ok, "failed_per_bucket": r.failed,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(cfg.out.join(format!("{stem}.json")), serde_json::to_string_pretty(&doc)?)?;
    // The time series, one row per bucket and case, for plotting elsewhere.
    let mut csv = String::from("label,bucket_start_s,ok,failed,ok_per_s\n");
    let per_s = 1000.0 / BUCKET_MS as f64;
    for r in runs.iter().filter(|r| !r.ok.is_empty()) {
        for (i, (ok, failed)) in r.ok.iter().zip(&r.failed).enumerate() {
            let _ = writeln!(
                csv,
                "{},{:.3},{},{},{:.0}",
                r.label,
                i as f64 * BUCKET_MS as f64 / 1000.0,
                ok,
                failed,
                *ok as f64 * per_s
            );
        }
    }
    std::fs::write(cfg.out.join(format!("{stem}.csv")), csv)?;
    Ok(())
}

/// CPU per request with supervision against `--stall-timeout 0`, per pair.
fn overhead_pairs(runs: &[Run]) -> Vec<(&'static str, f64)> {
    let mut pairs = Vec::new();
    for a in runs.iter().filter(|r| r.server == "vigil supervised") {
        if let Some(b) =
            runs.iter().find(|b| b.server != a.server && b.rep == a.rep && b.scenario == a.scenario)
        {
            if b.cpu_us_per_req > 0.0 {
                pairs.push((a.scenario, a.cpu_us_per_req / b.cpu_us_per_req - 1.0));
            }
        }
    }
    pairs
}

pub fn overhead_table(runs: &[Run]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<11} {:<24} {:>22} {:>9}",
        "scenario", "vigil --loops 1 pinned", "CPU us/req med (min-max)", "req/s med"
    );
    for s in summarize(runs) {
        let _ = writeln!(
            t,
            "{:<11} {:<24} {:>22} {:>9.0}",
            s.scenario,
            s.server,
            format!(
                "{:.3} ({:.3}-{:.3})",
                s.cpu_us_per_req.med, s.cpu_us_per_req.min, s.cpu_us_per_req.max
            ),
            s.rps.med
        );
    }
    let pairs = overhead_pairs(runs);
    for scenario in ["keep-alive", "pipelined16"] {
        let v: Vec<f64> = pairs.iter().filter(|p| p.0 == scenario).map(|p| p.1).collect();
        if let Some(s) = Spread::of(v) {
            let _ = writeln!(
                t,
                "supervision overhead, {scenario}: {:+.1}% CPU/req (pairs: {:+.1}% to {:+.1}%)",
                s.med * 100.0,
                s.min * 100.0,
                s.max * 100.0
            );
        }
    }
    t
}

pub fn write_overhead(cfg: &Config, runs: &[Run]) -> crate::Result<()> {
    let doc = json!({
        "config": config_json(cfg),
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        "overhead_per_pair": overhead_pairs(runs).iter()
            .map(|(s, v)| json!({ "scenario": s, "cpu_per_req_delta": v })).collect::<Vec<_>>(),
    });
    std::fs::write(cfg.out.join("overhead.json"), serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

/// One row of the slow-mix table: a server configuration over all
/// repetitions. Latencies are the fast requests'.
#[derive(Clone, Debug)]
pub struct SlowSummary {
    pub label: &'static str,
    pub mix: bool,
    pub reps: usize,
    pub rps: Spread,
    pub p50: Spread,
    pub p99: Spread,
    pub p999: Spread,
    /// The largest fast-request latency over the repetitions.
    pub max_us: f64,
    /// Fast p99 against the no-slow vigil run of the same repetition.
    pub p99_vs_base: Option<Spread>,
    pub slow_requests: u64,
    /// Median over repetitions of the slow requests' median latency.
    pub slow_p50_us: f64,
    pub cpu_us_per_req: Spread,
    pub errors: u64,
    pub alive: bool,
}

pub fn summarize_slow(runs: &[SlowRun]) -> Vec<SlowSummary> {
    let mut labels: Vec<&'static str> = Vec::new();
    for r in runs {
        if !labels.contains(&r.label) {
            labels.push(r.label);
        }
    }
    let base = |rep: usize| runs.iter().find(|b| b.label == SLOW_BASELINE && b.rep == rep);
    labels
        .into_iter()
        .filter_map(|label| {
            let rs: Vec<&SlowRun> = runs.iter().filter(|r| r.label == label).collect();
            let col = |f: &dyn Fn(&SlowRun) -> f64| Spread::of(rs.iter().map(|r| f(r)).collect());
            let vs: Vec<f64> = rs
                .iter()
                .filter_map(|r| {
                    let b = base(r.rep)?;
                    (b.fast.p99_us > 0.0).then(|| r.fast.p99_us / b.fast.p99_us)
                })
                .collect();
            let with_slow: Vec<f64> =
                rs.iter().filter(|r| r.slow.requests > 0).map(|r| r.slow.p50_us).collect();
            Some(SlowSummary {
                label,
                mix: rs.first()?.mix,
                reps: rs.len(),
                rps: col(&|r| r.rps)?,
                p50: col(&|r| r.fast.p50_us)?,
                p99: col(&|r| r.fast.p99_us)?,
                p999: col(&|r| r.fast.p999_us)?,
                max_us: col(&|r| r.fast.max_us)?.max,
                p99_vs_base: Spread::of(vs),
                slow_requests: rs.iter().map(|r| r.slow.requests).sum(),
                slow_p50_us: Spread::of(with_slow).map_or(f64::NAN, |s| s.med),
                cpu_us_per_req: col(&|r| r.cpu_us_per_req)?,
                errors: rs.iter().map(|r| r.errors()).sum(),
                alive: rs.iter().all(|r| r.alive),
            })
        })
        .collect()
}

fn lat_spread(s: Spread) -> String {
    format!("{} ({}-{})", lat(s.med), lat(s.min), lat(s.max))
}

pub fn slow_table(cfg: &Config, rows: &[SlowSummary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nslow mix: 1 request in {} per connection is GET /work-inline?ms={} ({} ms of CPU \
         inline), the others GET /; 64 connections, 2 loops/workers, {:.0} s per run; \
         median (min-max) over repetitions; latencies of the GET / requests only",
        cfg.slow_every, cfg.slow_ms, cfg.slow_ms, cfg.slow_secs
    );
    let _ = writeln!(
        t,
        "{:<17} {:>22} {:>22} {:>22} {:>22} {:>18} {:>7} {:>6} {:>8} {:>10} {:>6} {:>5}",
        "server",
        "req/s med (min-max)",
        "p50",
        "p99",
        "p99.9",
        "p99 vs no-slow",
        "max",
        "slow n",
        "slow p50",
        "CPU us/req",
        "errors",
        "alive"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<17} {:>22} {:>22} {:>22} {:>22} {:>18} {:>7} {:>6} {:>8} {:>10.2} {:>6} {:>5}",
            r.label,
            format!("{:.0} ({:.0}-{:.0})", r.rps.med, r.rps.min, r.rps.max),
            lat_spread(r.p50),
            lat_spread(r.p99),
            lat_spread(r.p999),
            ratio(r.p99_vs_base),
            lat(r.max_us),
            if r.mix { r.slow_requests.to_string() } else { "-".into() },
            if r.mix { lat(r.slow_p50_us) } else { "-".into() },
            r.cpu_us_per_req.med,
            r.errors,
            if r.alive { "yes" } else { "NO" }
        );
    }
    t
}

pub fn write_slow(
    cfg: &Config,
    runs: &[SlowRun],
    summary: &[SlowSummary],
    notes: &[String],
) -> crate::Result<()> {
    let doc = json!({
        "config": config_json(cfg),
        "notes": notes,
        "baseline": SLOW_BASELINE,
        "runs": runs.iter().map(|r| json!({
            "rep": r.rep, "label": r.label, "slow_mix": r.mix, "rps": r.rps,
            "fast": sample_json(&r.fast), "slow": sample_json(&r.slow),
            "cpu_us": r.cpu_us, "cpu_us_per_req": r.cpu_us_per_req, "cores": r.cores,
            "rss_kib": r.rss_kib, "alive_after": r.alive,
        })).collect::<Vec<_>>(),
        "summary": summary.iter().map(|s| json!({
            "label": s.label, "slow_mix": s.mix, "reps": s.reps, "rps": s.rps.json(),
            "fast_p50_us": s.p50.json(), "fast_p99_us": s.p99.json(),
            "fast_p999_us": s.p999.json(), "fast_max_us": s.max_us,
            "fast_p99_vs_baseline": s.p99_vs_base.map(Spread::json),
            "slow_requests": s.slow_requests, "slow_p50_us_median": s.slow_p50_us,
            "cpu_us_per_req": s.cpu_us_per_req.json(), "errors": s.errors,
            "alive_after_all": s.alive,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(cfg.out.join("slow.json"), serde_json::to_string_pretty(&doc)?)?;
    let mut csv = String::from(
        "rep,label,slow_mix,rps,fast_requests,fast_p50_us,fast_p90_us,fast_p99_us,fast_p999_us,fast_max_us,fast_errors,slow_requests,slow_p50_us,slow_p99_us,slow_max_us,slow_errors,cpu_us,cpu_us_per_req,cores,rss_kib,alive\n",
    );
    for r in runs {
        let (f, s) = (&r.fast, &r.slow);
        let _ = writeln!(
            csv,
            "{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.4},{:.3},{},{}",
            r.rep,
            r.label,
            r.mix,
            r.rps,
            f.requests,
            f.p50_us,
            f.p90_us,
            f.p99_us,
            f.p999_us,
            f.max_us,
            f.errors(),
            s.requests,
            s.p50_us,
            s.p99_us,
            s.max_us,
            s.errors(),
            r.cpu_us,
            r.cpu_us_per_req,
            r.cores,
            r.rss_kib,
            r.alive
        );
    }
    std::fs::write(cfg.out.join("slow.csv"), csv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.med, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(vec![4.0, 1.0]).unwrap().med, 2.5);
        assert!(Spread::of(vec![]).is_none());
    }
}
