//! `compare slow`: the latency of fast requests when one request in
//! `--slow-every` (10,000) keeps its handler busy for `--slow-ms` (20 ms) of
//! CPU, inline.
//!
//! vigil with handoff (a loop busy on one request hands its core and its idle
//! connections to a fresh thread, `--handoff-after`), the same with
//! `--handoff-after 0`, the same without slow requests (the baseline of
//! "fast p99 within 2x"), the Node cluster and may_minihttp, all on the whole
//! machine with two loops or workers, 64 keep-alive connections from the
//! driver's own generator, which times the fast and the slow requests apart.

use crate::loadgen::{self, SlowMix};
use crate::server::{self, Running, Spec};
use crate::{procfs, report, spec_for, warm_up, Config, Sample, Setup, BUCKET_MS};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The row without slow requests that the others' fast p99 is compared to.
pub const BASELINE: &str = "vigil no-slow";

/// One server configuration of the comparison.
struct Case {
    label: &'static str,
    server: &'static str,
    extra: Vec<String>,
    /// Whether the load carries the slow requests.
    mix: bool,
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct SlowRun {
    pub rep: usize,
    pub label: &'static str,
    pub mix: bool,
    /// The fast requests (`GET /`) alone.
    pub fast: Sample,
    /// The slow requests alone (empty without the mix).
    pub slow: Sample,
    /// Every completed response (fast and slow) per second.
    pub rps: f64,
    pub cpu_us: u64,
    pub cpu_us_per_req: f64,
    /// CPU seconds per wall-clock second: how many cores the tree used.
    pub cores: f64,
    pub rss_kib: u64,
    pub alive: bool,
}

impl SlowRun {
    pub fn errors(&self) -> u64 {
        self.fast.errors() + self.slow.errors()
    }
}

/// Whether `vigil --help` lists `flag`. A vigil that does not know a flag
/// exits 2 on it, so an option it lacks is dropped with a note instead.
fn vigil_knows(bin: &Path, flag: &str) -> bool {
    Command::new(bin).arg("--help").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).contains(flag)
            || String::from_utf8_lossy(&o.stderr).contains(flag)
    })
}

fn cases(cfg: &Config, notes: &mut Vec<String>) -> Vec<Case> {
    let handoff = cfg.vigil.as_deref().is_some_and(|b| vigil_knows(b, "--handoff-after"));
    let mut vigil = vec!["--demo".to_owned()];
    match (&cfg.handoff_after, handoff) {
        (Some(d), true) => vigil.extend(["--handoff-after".to_owned(), d.clone()]),
        (Some(d), false) => {
            notes.push(format!("this vigil has no --handoff-after: --handoff-after {d} not passed"))
        }
        (None, _) => {}
    }
    let mut cases = vec![Case {
        label: if handoff { "vigil handoff" } else { "vigil" },
        server: "vigil",
        extra: vigil.clone(),
        mix: true,
    }];
    if handoff {
        // Other thresholds side by side, to choose the default from.
        for threshold in &cfg.handoff_grid {
            let label: &'static str = Box::leak(format!("vigil handoff {threshold}").into());
            let extra = vec!["--demo".into(), "--handoff-after".into(), threshold.clone()];
            cases.push(Case { label, server: "vigil", extra, mix: true });
        }
        let off = ["--demo", "--handoff-after", "0"].map(str::to_owned).to_vec();
        cases.push(Case { label: "vigil handoff-off", server: "vigil", extra: off, mix: true });
    } else if cfg.vigil.is_some() {
        notes.push(
            "this vigil has no --handoff-after (vigil --help does not list it): \
             the handoff-off row is skipped, the vigil row runs the server as it is"
                .to_owned(),
        );
    }
    cases.extend([
        Case { label: BASELINE, server: "vigil", extra: vigil, mix: false },
        Case { label: "node-cluster", server: "node-cluster", extra: vec![], mix: true },
        Case { label: "may_minihttp", server: "may_minihttp", extra: vec![], mix: true },
    ]);
    cases
}

pub fn run(cfg: &Config) -> crate::Result<()> {
    let mut notes = Vec::new();
    let cases = cases(cfg, &mut notes);
    for n in &notes {
        eprintln!("note: {n}");
    }
    // Interleaved: every case once per repetition, A B C D, A B C D, ...
    let mut plan = Vec::new();
    for rep in 0..cfg.reps {
        for case in &cases {
            if crate::available(cfg, case.server, Setup::Whole) {
                plan.push((rep, case));
            }
        }
    }
    let per_run = cfg.slow_secs + cfg.warmup + 0.5;
    eprintln!(
        "slow: 1 request in {} is /work-inline?ms={}; {} runs of {:.1} s (+{:.1} s warm-up), \
         {} repetition(s), about {:.0} s",
        cfg.slow_every,
        cfg.slow_ms,
        plan.len(),
        cfg.slow_secs,
        cfg.warmup,
        cfg.reps,
        plan.len() as f64 * per_run
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for (i, &(rep, case)) in plan.iter().enumerate() {
        let addr = SocketAddr::from(([127, 0, 0, 1], server::free_port()?));
        let Some(mut spec) = spec_for(cfg, case.server, Setup::Whole, addr, &case.extra)? else {
            continue;
        };
        spec.name = case.label.to_owned();
        match one(cfg, case, &spec, rep) {
            Ok(r) => {
                eprintln!(
                    "[{:>2}/{}] {:>4.0}s rep {} {:<17} {:>8.0} req/s  fast p50 {:>7} p99 {:>7} \
                     p99.9 {:>7}  slow {:>3} p50 {:>7}  errors {}",
                    i + 1,
                    plan.len(),
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    r.label,
                    r.rps,
                    report::lat(r.fast.p50_us),
                    report::lat(r.fast.p99_us),
                    report::lat(r.fast.p999_us),
                    if r.mix { r.slow.requests.to_string() } else { "-".into() },
                    if r.mix { report::lat(r.slow.p50_us) } else { "-".into() },
                    r.errors()
                );
                // A peer that ignores the path answers at once: the row would
                // silently measure no slow request at all.
                if r.mix && r.slow.requests > 0 && r.slow.p50_us < cfg.slow_ms as f64 * 800.0 {
                    let w = format!(
                        "{}: slow requests answered in {} (median), under {} ms: \
                         does it serve /work-inline?",
                        r.label,
                        report::lat(r.slow.p50_us),
                        cfg.slow_ms
                    );
                    eprintln!("warning: {w}");
                    notes.push(w);
                }
                runs.push(r);
            }
            Err(e) => eprintln!("[{:>2}/{}] {} FAILED: {e}", i + 1, plan.len(), case.label),
        }
    }
    if runs.iter().any(|r| r.mix && r.slow.requests == 0) {
        let w = format!(
            "some runs completed no slow request: at 1 in {} per connection, a run needs \
             more requests per connection (use a longer --slow-secs)",
            cfg.slow_every
        );
        eprintln!("note: {w}");
        notes.push(w);
    }
    let summary = report::summarize_slow(&runs);
    println!("{}", report::slow_table(cfg, &summary));
    report::write_slow(cfg, &runs, &summary, &notes)?;
    crate::chart::slow(&cfg.out.join("slow.svg"), cfg, &summary)?;
    eprintln!(
        "wrote {0}/slow.json, {0}/slow.csv, {0}/slow.svg in {1:.0} s",
        cfg.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts the server of `case`, warms it up, measures one load, stops it.
fn one(cfg: &Config, case: &Case, spec: &Spec, rep: usize) -> crate::Result<SlowRun> {
    let addr = spec.addr;
    let log = cfg.out.join("logs").join(format!("slow-{}-{rep}.log", case.label.replace(' ', "-")));
    let mut server = Running::start(spec, &log)?;
    warm_up(cfg, Setup::Whole, addr);
    let cpu0 = procfs::tree_cpu_us(server.pid);
    let t0 = Instant::now();
    let out = loadgen::run(&loadgen::LoadSpec {
        addr,
        conns: 64,
        duration: Duration::from_secs_f64(cfg.slow_secs),
        keep_alive: true,
        timeout: Duration::from_secs(2),
        bucket: Duration::from_millis(BUCKET_MS),
        cpus: None,
        slow: case.mix.then(|| SlowMix {
            every: cfg.slow_every,
            path: format!("/work-inline?ms={}", cfg.slow_ms),
        }),
    });
    let wall = t0.elapsed().as_secs_f64();
    let cpu_us = procfs::tree_cpu_us(server.pid).saturating_sub(cpu0);
    let rss_kib = procfs::tree_rss_kib(server.pid);
    let alive = server.alive();
    server.stop();
    let fast = out.sample;
    let slow = out.slow.unwrap_or_default();
    let requests = fast.requests + slow.requests;
    Ok(SlowRun {
        rep,
        label: case.label,
        mix: case.mix,
        rps: requests as f64 / fast.secs.max(1e-9),
        cpu_us,
        cpu_us_per_req: cpu_us as f64 / requests.max(1) as f64,
        cores: cpu_us as f64 / 1e6 / wall,
        rss_kib,
        alive,
        fast,
        slow,
    })
}
