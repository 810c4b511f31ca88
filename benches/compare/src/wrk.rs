//! Running wrk and reading its report.

use crate::Sample;
use std::path::Path;
use std::process::Command;

/// How wrk is run for one measurement.
pub struct WrkRun<'a> {
    pub url: String,
    pub threads: usize,
    pub conns: usize,
    pub secs: f64,
    pub script: Option<&'a Path>,
    /// `taskset -c` CPU list for wrk, `None` to leave it unpinned.
    pub cpus: Option<&'a str>,
}

impl WrkRun<'_> {
    pub fn run(&self) -> crate::Result<Sample> {
        let mut cmd = match self.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus, "wrk"]);
                c
            }
            None => Command::new("wrk"),
        };
        // wrk takes whole seconds (s, m, h suffixes only).
        let secs = self.secs.round().max(1.0) as u64;
        cmd.arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.conns))
            .arg(format!("-d{secs}s"))
            .arg("--latency");
        if let Some(s) = self.script {
            cmd.arg("-s").arg(s);
        }
        cmd.arg(&self.url);
        let out = cmd.output().map_err(|e| format!("cannot run wrk: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "wrk failed ({}): {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        parse(&text)
    }
}

/// Parses wrk's text report (the one printed with `--latency`).
pub fn parse(text: &str) -> crate::Result<Sample> {
    // wrk prints no 99.9th percentile.
    let mut s = Sample { p999_us: f64::NAN, ..Sample::default() };
    let mut seen_requests = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", avg, _stdev, max, ..] => {
                s.avg_us = duration_us(avg)?;
                s.max_us = duration_us(max)?;
            }
            ["50%", v] => s.p50_us = duration_us(v)?,
            ["75%", v] => s.p75_us = duration_us(v)?,
            ["90%", v] => s.p90_us = duration_us(v)?,
            ["99%", v] => s.p99_us = duration_us(v)?,
            [n, "requests", "in", secs, ..] => {
                s.requests = n.parse()?;
                s.secs = duration_us(secs.trim_end_matches(','))? / 1e6;
                seen_requests = true;
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 1, write 0, timeout 2"
                for pair in rest.chunks(2) {
                    if let [kind, n] = pair {
                        let n: u64 = n.trim_end_matches(',').parse()?;
                        match *kind {
                            "connect" => s.err_connect = n,
                            "read" => s.err_read = n,
                            "write" => s.err_write = n,
                            "timeout" => s.err_timeout = n,
                            _ => {}
                        }
                    }
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => s.non2xx = n.parse()?,
            ["Requests/sec:", v] => s.rps = v.parse()?,
            _ => {}
        }
    }
    if !seen_requests {
        return Err(format!("no request count in wrk output:\n{text}").into());
    }
    Ok(s)
}

/// "528.04us", "1.20ms", "2.00s", "1.00m" -> microseconds.
fn duration_us(v: &str) -> crate::Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600e6)
    } else {
        (v, 1.0)
    };
    Ok(num.parse::<f64>().map_err(|e| format!("bad duration {v:?}: {e}"))? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 2s test @ http://127.0.0.1:18080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.18ms    3.28ms  17.05ms   82.07%
    Req/Sec    21.60k     2.04k   26.79k    85.00%
  Latency Distribution
     50%  930.00us
     75%    5.58ms
     90%    8.56ms
     99%   12.53ms
  43305 requests in 2.02s, 5.16MB read
  Socket errors: connect 0, read 3, write 1, timeout 7
  Non-2xx or 3xx responses: 12
Requests/sec:  21451.35
Transfer/sec:      2.56MB
";

    #[test]
    fn parses_a_full_report() {
        let s = parse(REPORT).unwrap();
        assert_eq!(s.requests, 43305);
        assert!((s.secs - 2.02).abs() < 1e-9);
        assert!((s.rps - 21451.35).abs() < 1e-6);
        assert!((s.p50_us - 930.0).abs() < 1e-6);
        assert!((s.p99_us - 12530.0).abs() < 1e-6);
        assert!((s.max_us - 17050.0).abs() < 1e-6);
        assert_eq!((s.err_connect, s.err_read, s.err_write, s.err_timeout), (0, 3, 1, 7));
        assert_eq!(s.non2xx, 12);
    }

    #[test]
    fn rejects_output_without_a_count() {
        assert!(parse("wrk: connection refused").is_err());
    }

    #[test]
    fn reads_every_unit() {
        assert_eq!(duration_us("2.00s").unwrap(), 2e6);
        assert_eq!(duration_us("1.00m").unwrap(), 60e6);
        assert_eq!(duration_us("15us").unwrap(), 15.0);
    }
}
