//! SVG charts of the results.

use crate::report::{SlowSummary, Spread, Summary};
use crate::{ChaosRun, Config, BUCKET_MS};
use plotters::prelude::*;
use std::path::Path;

fn color(server: &str) -> RGBColor {
    match server {
        s if s.starts_with("vigil") => RGBColor(31, 119, 180),
        s if s.starts_with("may") => RGBColor(127, 127, 127),
        s if s.starts_with("node-cluster") => RGBColor(44, 160, 44),
        s if s.starts_with("node") => RGBColor(152, 223, 138),
        s if s.starts_with("nginx") => RGBColor(255, 127, 14),
        _ => RGBColor(148, 103, 189),
    }
}

/// Grouped bars, one group per setup and scenario, one bar per server, with
/// the min-max of the repetitions as a whisker: requests/s above, CPU
/// microseconds per request below. Both axes are logarithmic: pipelined
/// runs reach ten times the rate of the others, and node's CPU per request
/// is ten times may_minihttp's, so a linear axis hides everything else.
pub fn bench(path: &Path, rows: &[Summary]) -> crate::Result<()> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    let mut servers: Vec<&str> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.setup, r.scenario)) {
            groups.push((r.setup, r.scenario));
        }
        if !servers.contains(&r.server.as_str()) {
            servers.push(&r.server);
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 1));
    type Pick = fn(&Summary) -> (f64, f64, f64);
    let metrics: [(&str, Pick); 2] = [
        ("requests/s (median, min-max)", |s| (s.rps.med, s.rps.min, s.rps.max)),
        ("CPU microseconds per request, whole server (median, min-max)", |s| {
            (s.cpu_us_per_req.med, s.cpu_us_per_req.min, s.cpu_us_per_req.max)
        }),
    ];
    let g = groups.len();
    let width = 0.8 / servers.len() as f64;
    for (panel, (title, pick)) in panels.iter().zip(metrics) {
        let values = rows.iter().flat_map(|r| {
            let (med, lo, hi) = pick(r);
            [med, lo, hi]
        });
        let positive: Vec<f64> = values.filter(|v| *v > 0.0 && v.is_finite()).collect();
        let ymin = positive.iter().copied().fold(f64::INFINITY, f64::min).min(1e9) / 2.0;
        // Headroom above the tallest bar for the legend.
        let ymax = positive.iter().copied().fold(ymin * 4.0, f64::max) * 4.0;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..(g as f64 - 0.5), (ymin..ymax).log_scale())?;
        let labels: Vec<String> = groups.iter().map(|(a, b)| format!("{a} / {b}")).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(g + 1)
            .x_label_formatter(&|x| category_label(&labels, *x))
            .y_label_formatter(&|y| {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .draw()?;
        for (si, server) in servers.iter().enumerate() {
            let c = color(server);
            let bars: Vec<(f64, (f64, f64, f64))> = rows
                .iter()
                .filter(|r| r.server == *server)
                .filter_map(|r| {
                    let gi = groups.iter().position(|k| *k == (r.setup, r.scenario))?;
                    Some((gi as f64 - 0.4 + width * si as f64, pick(r)))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|&(x, (med, _, _))| {
                    Rectangle::new([(x, ymin), (x + width * 0.9, med.max(ymin))], c.filled())
                }))?
                .label(*server)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
            chart.draw_series(bars.iter().map(|&(x, (_, lo, hi))| {
                let mid = x + width * 0.45;
                PathElement::new(vec![(mid, lo), (mid, hi)], BLACK.stroke_width(1))
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Completed responses per second in each bucket, one curve per case of the
/// load-generator runs, with a vertical mark where a loop or worker was
/// replaced.
pub fn chaos(path: &Path, runs: &[ChaosRun], secs: f64, chaos_n: u64) -> crate::Result<()> {
    let series: Vec<&ChaosRun> = runs.iter().filter(|r| !r.ok.is_empty()).collect();
    if series.is_empty() {
        return Ok(());
    }
    let per_s = 1000.0 / BUCKET_MS as f64;
    let bucket_s = BUCKET_MS as f64 / 1000.0;
    let ymax =
        series.iter().flat_map(|r| r.ok.iter()).map(|&v| v as f64 * per_s).fold(0.0, f64::max)
            * 1.15;
    let root = SVGBackend::new(path, (1100, 550)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("responses/s per {BUCKET_MS} ms, 64 keep-alive connections, 1 request in {chaos_n} stalls; vertical marks: a loop (vigil) or worker (node) replaced"),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..secs, 0.0..ymax.max(1.0))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("seconds")
        .y_desc("responses/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for r in &series {
        let base = if r.label.starts_with("vigil") {
            RGBColor(31, 119, 180)
        } else {
            RGBColor(44, 160, 44)
        };
        // The no-chaos twin is drawn faint: it is the reference line.
        let style = if r.chaos { base.stroke_width(2) } else { base.mix(0.35).stroke_width(1) };
        // The last bucket is partial (the run ends inside it): left out.
        let n = r.ok.len().saturating_sub(1);
        chart
            .draw_series(LineSeries::new(
                r.ok[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| ((i as f64 + 0.5) * bucket_s, v as f64 * per_s)),
                style,
            ))?
            .label(r.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        let mark = base.mix(if r.chaos { 0.6 } else { 0.25 });
        chart.draw_series(
            r.marks
                .iter()
                .map(|&(t, _)| PathElement::new(vec![(t, 0.0), (t, ymax)], mark.stroke_width(1))),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Fast-request latency under the slow mix: per server, bars for p50, p99
/// and p99.9 (median over repetitions, whisker min-max), darker for the
/// higher percentile, on a log axis (p50 is tens of microseconds, a request
/// stuck behind a slow one tens of milliseconds). The dashed line is twice
/// the p99 of vigil without slow requests: the target for fast p99.
pub fn slow(path: &Path, cfg: &Config, rows: &[SlowSummary]) -> crate::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    type Pick = fn(&SlowSummary) -> Spread;
    let pcts: [(&str, Pick, f64); 3] =
        [("p50", |s| s.p50, 0.35), ("p99", |s| s.p99, 0.65), ("p99.9", |s| s.p999, 1.0)];
    let target = rows.iter().find(|r| r.label == crate::slow::BASELINE).map(|r| 2.0 * r.p99.med);
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| pcts.iter().flat_map(move |(_, pick, _)| [pick(r).min, pick(r).max]))
        .chain(target)
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let ymin = values.iter().copied().fold(f64::INFINITY, f64::min).min(1e9) / 2.0;
    // Headroom above the tallest bar for the legend.
    let ymax = values.iter().copied().fold(ymin * 4.0, f64::max) * 6.0;
    let root = SVGBackend::new(path, (1100, 550)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "latency of GET / while 1 request in {} burns {} ms inline (64 connections, \
                 2 loops/workers; median, min-max over repetitions)",
                cfg.slow_every, cfg.slow_ms
            ),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), (ymin..ymax).log_scale())?;
    let labels: Vec<&str> = rows.iter().map(|r| r.label).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(n + 1)
        .x_label_formatter(&|x| category_label(&labels, *x))
        .y_desc("microseconds")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let width = 0.8 / pcts.len() as f64;
    for (pi, &(name, pick, alpha)) in pcts.iter().enumerate() {
        let bars: Vec<(f64, Spread, RGBColor)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i as f64 - 0.4 + width * pi as f64, pick(r), color(r.label)))
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, s, c)| {
                Rectangle::new(
                    [(x, ymin), (x + width * 0.9, s.med.max(ymin))],
                    c.mix(alpha).filled(),
                )
            }))?
            .label(name)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLACK.mix(alpha * 0.8).filled())
            });
        chart.draw_series(bars.iter().map(|&(x, s, _)| {
            let mid = x + width * 0.45;
            PathElement::new(vec![(mid, s.min.max(ymin)), (mid, s.max.max(ymin))], BLACK)
        }))?;
    }
    if let Some(t) = target.filter(|t| *t > 0.0) {
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(DashedLineSeries::new(
                [(-0.5, t), (n as f64 - 0.5, t)],
                6,
                4,
                red.stroke_width(1),
            ))?
            .label("2 x p99 of vigil without slow requests")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The label of the category at `x` on a categorical axis (categories at
/// 0, 1, 2...), empty between them.
fn category_label<T: AsRef<str>>(labels: &[T], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
        labels[i as usize].as_ref().to_owned()
    } else {
        String::new()
    }
}
