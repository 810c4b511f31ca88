//! `compare`: the load comparison behind `make bench` and `make chaos`.
//!
//! ```text
//! compare bench    [--quick] [options]   vigil vs may_minihttp, node, nginx
//! compare chaos    [--quick] [options]   stalls injected: vigil vs node cluster,
//!                                        then the supervision overhead pairs
//! compare overhead [--quick] [options]   only the supervision overhead pairs
//! compare slow     [--quick] [options]   1 request in 10,000 burns 20 ms inline:
//!                                        fast-request latency, vigil with and
//!                                        without handoff, node cluster, may
//! compare instructions [options]         instructions per request under
//!                                        callgrind: vigil, may, the C floor
//! ```
//! See BENCHMARKS.md for what is measured and why.

mod chart;
mod instructions;
mod loadgen;
mod procfs;
mod report;
mod server;
mod slow;
mod wrk;

use server::{Running, Spec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// vigil logs one line per loop replacement containing this; the chaos mode
/// counts and plots those lines. Adjust here if the log wording changes.
/// ("replaced_by=" rather than "replaced": the exit summary line says
/// "loops_replaced=", which is not a replacement.)
pub const VIGIL_REPLACED: &str = "replaced_by=";
/// node-cluster.js logs this when its master kills a silent worker.
pub const NODE_REPLACED: &str = "killed";

/// One measurement's load-side figures (from wrk or the load generator).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub requests: u64,
    pub secs: f64,
    pub rps: f64,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p75_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// The generator's exact 99.9th percentile; NaN from wrk, which has none.
    pub p999_us: f64,
    pub max_us: f64,
    pub err_connect: u64,
    pub err_read: u64,
    pub err_write: u64,
    pub err_timeout: u64,
    pub non2xx: u64,
}

impl Sample {
    pub fn errors(&self) -> u64 {
        self.err_connect + self.err_read + self.err_write + self.err_timeout + self.non2xx
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Server on CPU 0, load on CPU 1: one core each, nothing shared.
    Pinned,
    /// Server and load unpinned, servers with two workers.
    Whole,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Pinned => "pinned",
            Setup::Whole => "whole",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    KeepAlive,
    Pipelined,
    Close,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KeepAlive => "keep-alive",
            Scenario::Pipelined => "pipelined16",
            Scenario::Close => "close",
        }
    }
}

/// Validated options.
pub struct Config {
    pub mode: Mode,
    pub quick: bool,
    pub out: PathBuf,
    pub vigil: Option<PathBuf>,
    pub may: Option<PathBuf>,
    /// The minimal C epoll server (benches/peers/c-floor).
    pub floor: Option<PathBuf>,
    pub node: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub peers_dir: PathBuf,
    pub secs: f64,
    pub warmup: f64,
    pub reps: usize,
    pub chaos_secs: f64,
    pub chaos_n: u64,
    /// `compare slow`: seconds per run, one slow request in `slow_every`
    /// per connection, `slow_ms` of work each, and vigil's --handoff-after
    /// when one was given (otherwise the server's default).
    pub slow_secs: f64,
    pub slow_every: u64,
    pub slow_ms: u64,
    pub handoff_after: Option<String>,
    /// More handoff thresholds to measure beside the default (`--handoff-grid 1ms,2ms`).
    pub handoff_grid: Vec<String>,
    /// Only these servers (row names), when given.
    pub only: Option<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bench,
    Chaos,
    Overhead,
    Slow,
    Instructions,
}

const USAGE: &str = "usage: compare bench|chaos|overhead|slow|instructions [--quick] [--out DIR]
  [--vigil-bin PATH (default $VIGIL_BIN or target/release/vigil)]
  [--may-bin PATH] [--floor-bin PATH] [--peers DIR (default benches/peers)]
  [--secs S] [--warmup S] [--reps N] [--chaos-secs S] [--chaos-n N]
  [--slow-secs S] [--slow-every N] [--slow-ms MS] [--handoff-after D] [--handoff-grid D,D..]
  [--only vigil,vigil-routed,may_minihttp,c-floor,node,node-cluster,nginx]";

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1).collect()).and_then(|c| run(&c)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: Vec<String>) -> Result<Config> {
    let mut it = args.into_iter();
    let mode = match it.next().as_deref() {
        Some("bench") => Mode::Bench,
        Some("chaos") => Mode::Chaos,
        Some("overhead") => Mode::Overhead,
        Some("slow") => Mode::Slow,
        Some("instructions") => Mode::Instructions,
        _ => return Err(USAGE.into()),
    };
    let mut raw: Vec<(String, Option<String>)> = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => raw.push((a, None)),
            "-h" | "--help" => return Err(USAGE.into()),
            _ if a.starts_with("--") => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
                raw.push((a, Some(v)));
            }
            _ => return Err(format!("unexpected {a:?}\n{USAGE}").into()),
        }
    }
    let get = |k: &str| raw.iter().rev().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
    let quick = raw.iter().any(|(n, _)| n == "--quick");
    let num = |k: &str, d: f64| -> Result<f64> {
        get(k).map_or(Ok(d), |v| v.parse().map_err(|e| format!("{k}: {e}").into()))
    };
    let existing = |p: PathBuf| if p.is_file() { Some(p) } else { None };
    let vigil = get("--vigil-bin")
        .or_else(|| std::env::var("VIGIL_BIN").ok())
        .unwrap_or_else(|| "target/release/vigil".into());
    // Durations: the full bench is 72 runs; 3 s each plus warm-up keeps
    // `make bench` under 10 minutes on 2 cores with the builds.
    let cfg = Config {
        mode,
        quick,
        out: get("--out").unwrap_or_else(|| "target/bench".into()).into(),
        vigil: existing(vigil.into()),
        may: get("--may-bin").map(PathBuf::from).and_then(existing),
        floor: get("--floor-bin").map(PathBuf::from).and_then(existing),
        node: server::which("node"),
        nginx: server::which("nginx"),
        peers_dir: get("--peers").unwrap_or_else(|| "benches/peers".into()).into(),
        secs: num("--secs", if quick { 1.0 } else { 3.0 })?,
        warmup: num("--warmup", if quick { 0.2 } else { 0.5 })?,
        reps: num("--reps", if quick { 1.0 } else { 3.0 })? as usize,
        // Quick chaos runs still outlast node's 5 s watchdog once.
        chaos_secs: num("--chaos-secs", if quick { 8.0 } else { 20.0 })?,
        chaos_n: num("--chaos-n", DEFAULT_CHAOS_N as f64)? as u64,
        slow_secs: num("--slow-secs", if quick { 2.0 } else { 8.0 })?,
        slow_every: num("--slow-every", 10_000.0)? as u64,
        slow_ms: num("--slow-ms", 20.0)? as u64,
        handoff_after: get("--handoff-after"),
        handoff_grid: get("--handoff-grid")
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        only: get("--only").map(|s| s.split(',').map(str::to_owned).collect()),
    };
    if cfg.reps == 0
        || cfg.secs <= 0.0
        || cfg.chaos_secs <= 0.0
        || cfg.chaos_n == 0
        || cfg.slow_secs <= 0.0
        || cfg.slow_every == 0
    {
        return Err(
            "--reps, --secs, --chaos-secs, --chaos-n, --slow-secs and --slow-every must be positive"
                .into(),
        );
    }
    Ok(cfg)
}

fn run(cfg: &Config) -> Result<()> {
    std::fs::create_dir_all(cfg.out.join("logs"))?;
    if cfg.mode == Mode::Instructions {
        return instructions::run(cfg);
    }
    // The slow mix needs the driver's own generator only.
    if cfg.mode != Mode::Slow && server::which("wrk").is_none() {
        return Err("wrk is not installed (make bench installs it)".into());
    }
    for (what, found) in [
        ("vigil", &cfg.vigil),
        ("may_minihttp peer", &cfg.may),
        ("node", &cfg.node),
        ("nginx", &cfg.nginx),
    ] {
        if found.is_none() && !(cfg.mode == Mode::Slow && what == "nginx") {
            eprintln!("note: {what} not found, skipped");
        }
    }
    let load = procfs::loadavg();
    if load > 0.5 {
        eprintln!("note: load average {load:.2} before the run: other work shares the CPUs, absolute figures will be low");
    }
    match cfg.mode {
        Mode::Bench => bench(cfg),
        Mode::Chaos => {
            chaos(cfg)?;
            overhead(cfg)
        }
        Mode::Overhead => overhead(cfg),
        Mode::Slow => slow::run(cfg),
        Mode::Instructions => instructions::run(cfg),
    }
}

/// The CPU list a setup pins the server to, and the load to.
fn pins(setup: Setup) -> (Option<&'static str>, Option<&'static str>) {
    match setup {
        Setup::Pinned => (Some("0"), Some("1")),
        Setup::Whole => (None, None),
    }
}

/// Whether server `name` is installed, selected, and part of `setup`
/// (node runs alone when pinned and as a cluster on the whole machine).
fn available(cfg: &Config, name: &str, setup: Setup) -> bool {
    let selected = cfg.only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let installed = match (name, setup) {
        ("vigil" | "vigil-routed", _) => cfg.vigil.is_some(),
        ("may_minihttp", _) => cfg.may.is_some(),
        // One thread: the floor of one core, measured pinned only.
        ("c-floor", Setup::Pinned) => cfg.floor.is_some(),
        ("node", Setup::Pinned) | ("node-cluster", Setup::Whole) => cfg.node.is_some(),
        ("nginx", _) => cfg.nginx.is_some(),
        _ => false,
    };
    selected && installed
}

/// How to start server `name` in `setup` on `addr`, or None if it is not
/// available there.
fn spec_for(
    cfg: &Config,
    name: &str,
    setup: Setup,
    addr: SocketAddr,
    extra: &[String],
) -> Result<Option<Spec>> {
    if !available(cfg, name, setup) {
        return Ok(None);
    }
    let workers = if setup == Setup::Pinned { "1" } else { "2" };
    let port = addr.port().to_string();
    let peers = &cfg.peers_dir;
    let mut env = Vec::new();
    let mut mark = None;
    let argv: Vec<String> = match (name, setup) {
        ("vigil" | "vigil-routed", _) => {
            let Some(bin) = &cfg.vigil else {
                return Ok(None);
            };
            mark = Some(VIGIL_REPLACED);
            let mut v = vec![
                path(bin),
                "--listen".into(),
                addr.to_string(),
                "--loops".into(),
                workers.into(),
            ];
            if name == "vigil-routed" {
                // The same hello world through the app layer: every path a
                // matched route, per-route metrics and the access log, to a
                // file.
                let log = std::fs::canonicalize(&cfg.out)?.join("access.log");
                let _ = std::fs::remove_file(&log);
                v.extend([
                    "--access-log".into(),
                    path(&log),
                    "--access-log-format".into(),
                    "combined".into(),
                ]);
            }
            v.extend_from_slice(extra);
            v
        }
        ("may_minihttp", _) => {
            let Some(bin) = &cfg.may else { return Ok(None) };
            vec![path(bin), addr.to_string(), workers.into()]
        }
        ("c-floor", Setup::Pinned) => {
            let Some(bin) = &cfg.floor else { return Ok(None) };
            vec![path(bin), addr.to_string()]
        }
        ("node", Setup::Pinned) => {
            let Some(node) = &cfg.node else {
                return Ok(None);
            };
            vec![path(node), path(&peers.join("node-hello.js")), port]
        }
        ("node-cluster", Setup::Whole) => {
            let Some(node) = &cfg.node else {
                return Ok(None);
            };
            mark = Some(NODE_REPLACED);
            let mut v =
                vec![path(node), path(&peers.join("node-cluster.js")), port, workers.into()];
            v.extend_from_slice(extra);
            v
        }
        ("nginx", _) => {
            let Some(nginx) = &cfg.nginx else {
                return Ok(None);
            };
            // One scratch prefix, rewritten per start: one server runs at a time.
            let prefix = std::fs::canonicalize(&cfg.out)?.join("nginx");
            std::fs::create_dir_all(&prefix)?;
            let conf = std::fs::read_to_string(peers.join("nginx.conf.in"))?
                .replace("@PREFIX@", &path(&prefix))
                .replace("@PORT@", &port)
                .replace("@WORKERS@", workers);
            let conf_path = prefix.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            env.push(("LANG".into(), "C".into()));
            vec![
                path(nginx),
                "-p".into(),
                path(&prefix),
                "-e".into(),
                path(&prefix.join("error.log")),
                "-c".into(),
                path(&conf_path),
            ]
        }
        _ => return Ok(None),
    };
    let argv = match pins(setup).0 {
        Some(cpus) => {
            ["taskset".to_owned(), "-c".into(), cpus.into()].into_iter().chain(argv).collect()
        }
        None => argv,
    };
    Ok(Some(Spec { name: name.to_owned(), addr, argv, env, mark }))
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One measured run: the server's figures around one load.
#[derive(Clone, Debug)]
pub struct Run {
    pub rep: usize,
    pub setup: &'static str,
    pub scenario: &'static str,
    pub server: String,
    pub tool: &'static str,
    pub sample: Sample,
    pub cpu_us: u64,
    pub cpu_us_per_req: f64,
    pub rss_kib: u64,
    pub procs: usize,
    /// Set after the repetition: this run against may_minihttp's run of the
    /// same setup, scenario and repetition.
    pub rps_vs_may: Option<f64>,
    pub cpu_vs_may: Option<f64>,
}

/// Starts `spec`, warms it up, measures one load, stops it.
fn measure(
    cfg: &Config,
    spec: &Spec,
    setup: Setup,
    scenario: Scenario,
    rep: usize,
    secs: f64,
) -> Result<Run> {
    let addr = spec.addr;
    let log = cfg.out.join("logs").join(format!(
        "{}-{}-{}-{rep}.log",
        spec.name,
        setup.name(),
        scenario.name()
    ));
    let server = Running::start(spec, &log)?;
    warm_up(cfg, setup, addr);
    let cpu0 = procfs::tree_cpu_us(server.pid);
    let (tool, sample) = load(cfg, setup, scenario, addr, secs)?;
    let cpu_us = procfs::tree_cpu_us(server.pid).saturating_sub(cpu0);
    let rss_kib = procfs::tree_rss_kib(server.pid);
    let procs = procfs::tree(server.pid).len();
    server.stop();
    Ok(Run {
        rep,
        setup: setup.name(),
        scenario: scenario.name(),
        server: spec.name.clone(),
        tool,
        cpu_us_per_req: cpu_us as f64 / sample.requests.max(1) as f64,
        sample,
        cpu_us,
        rss_kib,
        procs,
        rps_vs_may: None,
        cpu_vs_may: None,
    })
}

/// Keep-alive load for `cfg.warmup` seconds, whatever the scenario: it lets
/// node's JIT compile the handler and every server fault in its buffers
/// before the measured run. (wrk cannot run for less than 1 s.)
fn warm_up(cfg: &Config, setup: Setup, addr: SocketAddr) {
    if cfg.warmup > 0.0 {
        loadgen::run(&loadgen::LoadSpec {
            addr,
            conns: 16,
            duration: Duration::from_secs_f64(cfg.warmup),
            keep_alive: true,
            timeout: Duration::from_secs(2),
            bucket: Duration::from_millis(BUCKET_MS),
            cpus: pins(setup).1.map(|_| vec![1]),
            slow: None,
        });
    }
}

/// Drives one scenario: wrk for keep-alive and pipelined, the built-in
/// generator for close (see loadgen.rs for why).
fn load(
    cfg: &Config,
    setup: Setup,
    scenario: Scenario,
    addr: SocketAddr,
    secs: f64,
) -> Result<(&'static str, Sample)> {
    let threads = if setup == Setup::Pinned { 1 } else { 2 };
    let script = cfg.peers_dir.parent().unwrap_or(Path::new(".")).join("pipeline.lua");
    let wrk = |script: Option<&Path>| {
        wrk::WrkRun {
            url: format!("http://{addr}/"),
            threads,
            conns: 64,
            secs,
            script,
            cpus: pins(setup).1,
        }
        .run()
    };
    Ok(match scenario {
        Scenario::KeepAlive => ("wrk", wrk(None)?),
        Scenario::Pipelined => {
            let mut s = wrk(Some(&script))?;
            // With pipelining wrk times a batch from its write, and prints
            // 0.00us for most percentiles: only the maximum is kept.
            s.avg_us = f64::NAN;
            s.p50_us = f64::NAN;
            s.p75_us = f64::NAN;
            s.p90_us = f64::NAN;
            s.p99_us = f64::NAN;
            s.p999_us = f64::NAN;
            ("wrk", s)
        }
        Scenario::Close => {
            let out = loadgen::run(&loadgen::LoadSpec {
                addr,
                conns: 32,
                duration: Duration::from_secs_f64(secs),
                keep_alive: false,
                timeout: Duration::from_secs(2),
                bucket: Duration::from_millis(250),
                cpus: pins(setup).1.map(|_| vec![1]),
                slow: None,
            });
            ("loadgen", out.sample)
        }
    })
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data, zeroed is the empty set; CPU_SET and
    // sched_setaffinity only touch that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

const BENCH_SERVERS: [&str; 7] =
    ["may_minihttp", "vigil", "vigil-routed", "c-floor", "node", "node-cluster", "nginx"];

fn bench(cfg: &Config) -> Result<()> {
    let setups = [Setup::Pinned, Setup::Whole];
    let scenarios = [Scenario::KeepAlive, Scenario::Pipelined, Scenario::Close];
    let mut plan = Vec::new();
    for rep in 0..cfg.reps {
        for &setup in &setups {
            for &scenario in &scenarios {
                for name in BENCH_SERVERS {
                    if available(cfg, name, setup) {
                        plan.push((rep, setup, scenario, name));
                    }
                }
            }
        }
    }
    let per_run = cfg.secs + cfg.warmup + 0.5;
    eprintln!(
        "bench: {} runs of {:.1} s (+{:.1} s warm-up), {} repetition(s), about {:.0} s",
        plan.len(),
        cfg.secs,
        cfg.warmup,
        cfg.reps,
        plan.len() as f64 * per_run
    );
    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    for (i, &(rep, setup, scenario, name)) in plan.iter().enumerate() {
        let addr = SocketAddr::from(([127, 0, 0, 1], server::free_port()?));
        let Some(spec) = spec_for(cfg, name, setup, addr, &[])? else {
            continue;
        };
        match measure(cfg, &spec, setup, scenario, rep, cfg.secs) {
            Ok(r) => {
                eprintln!(
                    "[{:>3}/{}] {:>4.0}s rep {} {:<6} {:<11} {:<12} {:>9.0} req/s {:>7.2} us/req  p99 {:>8.0} us  errors {}",
                    i + 1,
                    plan.len(),
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    r.setup,
                    r.scenario,
                    r.server,
                    r.sample.rps,
                    r.cpu_us_per_req,
                    r.sample.p99_us,
                    r.sample.errors()
                );
                runs.push(r);
            }
            Err(e) => eprintln!(
                "[{:>3}/{}] {name} {} {}: FAILED: {e}",
                i + 1,
                plan.len(),
                setup.name(),
                scenario.name()
            ),
        }
    }
    report::ratios_vs_may(&mut runs);
    let summary = report::summarize(&runs);
    println!("{}", report::table(&summary));
    report::write_bench(cfg, &runs, &summary)?;
    chart::bench(&cfg.out.join("compare.svg"), &summary)?;
    eprintln!(
        "wrote {0}/bench.json, {0}/bench.csv, {0}/compare.svg in {1:.0} s",
        cfg.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One server of the chaos comparison.
struct ChaosCase {
    label: &'static str,
    server: &'static str,
    extra: Vec<String>,
    chaos: bool,
}

/// Results of one chaos case.
#[derive(Debug)]
pub struct ChaosRun {
    pub label: &'static str,
    pub chaos: bool,
    pub tool: &'static str,
    pub sample: Sample,
    pub cpu_us: u64,
    pub cpu_us_per_req: f64,
    /// CPU seconds per wall-clock second: how many cores the tree used.
    pub cores: f64,
    pub rss_kib: u64,
    /// Replacement log lines seen during the load, seconds from its start.
    pub marks: Vec<(f64, String)>,
    pub ok: Vec<u64>,
    pub failed: Vec<u64>,
    pub alive: bool,
}

fn chaos(cfg: &Config) -> Result<()> {
    let n = cfg.chaos_n.to_string();
    let cases = [
        ChaosCase {
            label: "vigil chaos",
            server: "vigil",
            extra: [
                "--chaos-stall",
                &format!("1/{n}"),
                "--stall-timeout",
                "250ms",
                "--max-abandoned",
                "1000",
            ]
            .map(str::to_owned)
            .to_vec(),
            chaos: true,
        },
        ChaosCase { label: "vigil", server: "vigil", extra: vec![], chaos: false },
        ChaosCase {
            label: "node-cluster chaos",
            server: "node-cluster",
            extra: vec![n.clone()],
            chaos: true,
        },
        ChaosCase { label: "node-cluster", server: "node-cluster", extra: vec![], chaos: false },
    ];
    let secs = cfg.chaos_secs;
    let mut results = Vec::new();
    // wrk first (totals, comparable with `make bench`), then the time series
    // with the built-in generator, each case on a fresh server.
    for tool in ["wrk", "loadgen"] {
        for case in &cases {
            let addr = SocketAddr::from(([127, 0, 0, 1], server::free_port()?));
            let Some(spec) = spec_for(cfg, case.server, Setup::Whole, addr, &case.extra)? else {
                eprintln!("chaos: {} not available, skipped", case.label);
                continue;
            };
            eprintln!("chaos: {} with {tool}, {secs:.0} s ...", case.label);
            match chaos_one(cfg, case, &spec, addr, tool, secs) {
                Ok(r) => {
                    eprintln!(
                        "chaos: {:<19} {:<7} {:>9.0} req/s  errors {:>5}  replaced {:>3}  {:.2} cores  {:.2} us/req",
                        r.label,
                        r.tool,
                        r.sample.rps,
                        r.sample.errors(),
                        r.marks.len(),
                        r.cores,
                        r.cpu_us_per_req
                    );
                    results.push(r);
                }
                Err(e) => eprintln!("chaos: {} FAILED: {e}", case.label),
            }
        }
    }
    println!("\n1 request in {} stalls for ever{}", cfg.chaos_n, report::chaos_table(&results));
    let stem = chaos_stem(cfg);
    report::write_chaos(cfg, &stem, &results)?;
    chart::chaos(&cfg.out.join(format!("{stem}.svg")), &results, secs, cfg.chaos_n)?;
    eprintln!("wrote {0}/{stem}.json, {0}/{stem}.csv, {0}/{stem}.svg", cfg.out.display());
    Ok(())
}

/// Name of the chaos outputs: `chaos` at the default 1 in 100,000, and
/// `chaos-n20000` (say) otherwise, so that runs at two rates can share one
/// output directory.
fn chaos_stem(cfg: &Config) -> String {
    if cfg.chaos_n == DEFAULT_CHAOS_N {
        "chaos".into()
    } else {
        format!("chaos-n{}", cfg.chaos_n)
    }
}

pub const DEFAULT_CHAOS_N: u64 = 100_000;

fn chaos_one(
    cfg: &Config,
    case: &ChaosCase,
    spec: &Spec,
    addr: SocketAddr,
    tool: &'static str,
    secs: f64,
) -> Result<ChaosRun> {
    let log = cfg.out.join("logs").join(format!(
        "{}-{}-{tool}.log",
        chaos_stem(cfg),
        case.label.replace(' ', "-")
    ));
    let mut server = Running::start(spec, &log)?;
    // The same warm-up as in `bench`, so the curves start with node's JIT
    // done; with chaos on, it may already stall a loop or a worker.
    warm_up(cfg, Setup::Whole, addr);
    let cpu0 = procfs::tree_cpu_us(server.pid);
    let t0 = Instant::now();
    let (sample, ok, failed) = if tool == "wrk" {
        let s = wrk::WrkRun {
            url: format!("http://{addr}/"),
            threads: 2,
            conns: 64,
            secs,
            script: None,
            cpus: None,
        }
        .run()?;
        (s, vec![], vec![])
    } else {
        let out = loadgen::run(&loadgen::LoadSpec {
            addr,
            conns: 64,
            duration: Duration::from_secs_f64(secs),
            keep_alive: true,
            timeout: Duration::from_secs(2),
            bucket: Duration::from_millis(BUCKET_MS),
            cpus: None,
            slow: None,
        });
        (out.sample, out.ok, out.failed)
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu_us = procfs::tree_cpu_us(server.pid).saturating_sub(cpu0);
    let rss_kib = procfs::tree_rss_kib(server.pid);
    let marks: Vec<_> =
        server.marks_since(t0).into_iter().filter(|(t, _)| *t >= 0.0 && *t <= wall).collect();
    let alive = server.alive();
    server.stop();
    Ok(ChaosRun {
        label: case.label,
        chaos: case.chaos,
        tool,
        cpu_us_per_req: cpu_us as f64 / sample.requests.max(1) as f64,
        cores: cpu_us as f64 / 1e6 / wall,
        sample,
        cpu_us,
        rss_kib,
        marks,
        ok,
        failed,
        alive,
    })
}

/// Width of one time-series bucket.
pub const BUCKET_MS: u64 = 250;

/// CPU per request of `vigil --loops 1` pinned, with supervision as shipped
/// and with `--stall-timeout 0`, measured in interleaved pairs.
fn overhead(cfg: &Config) -> Result<()> {
    if cfg.vigil.is_none() {
        eprintln!("overhead: vigil not found, skipped");
        return Ok(());
    }
    let variants: [(&str, Vec<String>); 2] =
        [("supervised", vec![]), ("stall-timeout 0", vec!["--stall-timeout".into(), "0".into()])];
    let mut runs = Vec::new();
    for rep in 0..cfg.reps {
        for scenario in [Scenario::KeepAlive, Scenario::Pipelined] {
            for (label, extra) in &variants {
                let addr = SocketAddr::from(([127, 0, 0, 1], server::free_port()?));
                let Some(mut spec) = spec_for(cfg, "vigil", Setup::Pinned, addr, extra)? else {
                    continue;
                };
                spec.name = format!("vigil {label}");
                match measure(cfg, &spec, Setup::Pinned, scenario, rep, cfg.secs) {
                    Ok(r) => {
                        eprintln!(
                            "overhead: rep {} {:<11} {:<22} {:>9.0} req/s {:>7.2} us/req",
                            rep + 1,
                            r.scenario,
                            r.server,
                            r.sample.rps,
                            r.cpu_us_per_req
                        );
                        runs.push(r);
                    }
                    Err(e) => eprintln!("overhead: {label} FAILED: {e}"),
                }
            }
        }
    }
    println!("{}", report::overhead_table(&runs));
    report::write_overhead(cfg, &runs)?;
    eprintln!("wrote {}/overhead.json", cfg.out.display());
    Ok(())
}
