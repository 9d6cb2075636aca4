//! An SVG plot of a benchmark: Certificates Ready, apply→Ready latency and the operator's resident memory,
//! over the same time axis. Plain SVG text, no plotting library: any browser shows it.

use crate::report::RunReport;
use std::fmt::Write as _;

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 190.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A step of 1, 2 or 5 times a power of ten that cuts `0..max` into about five parts.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|step| *step >= rough).unwrap_or(10.0 * power)
}

fn label(value: f64) -> String {
    if value.fract().abs() < 1e-9 { format!("{value:.0}") } else { format!("{value}") }
}

struct Panel {
    top: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, value: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (value / self.x_max).clamp(0.0, 1.0)
    }

    fn y(&self, value: f64) -> f64 {
        self.top + PANEL_HEIGHT * (1.0 - (value / self.y_max).clamp(0.0, 1.0))
    }

    fn frame(&self, svg: &mut String, title: &str, y_unit: &str) {
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{:.1}" font-size="14" font-weight="bold">{title}</text>"#,
            self.top - 8.0
        );
        let step = tick_step(self.y_max);
        let mut value = 0.0;
        while value <= self.y_max * 1.0001 {
            let y = self.y(value);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                label((value * 1000.0).round() / 1000.0)
            );
            value += step;
        }
        let step = tick_step(self.x_max);
        let mut value = 0.0;
        while value <= self.x_max * 1.0001 {
            let x = self.x(value);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                self.top,
                self.top + PANEL_HEIGHT,
                self.top + PANEL_HEIGHT + 14.0,
                label((value * 1000.0).round() / 1000.0)
            );
            value += step;
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{PANEL_HEIGHT}" fill="none" stroke="#444"/><text x="14" y="{:.1}" font-size="11" transform="rotate(-90 14 {:.1})" text-anchor="middle">{y_unit}</text>"##,
            self.top,
            WIDTH - LEFT - RIGHT,
            self.top + PANEL_HEIGHT / 2.0,
            self.top + PANEL_HEIGHT / 2.0
        );
    }

    fn polyline(&self, svg: &mut String, points: impl Iterator<Item = (f64, f64)>, color: &str) {
        let coordinates: Vec<String> = points.map(|(x, y)| format!("{:.1},{:.1}", self.x(x), self.y(y))).collect();
        if !coordinates.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                coordinates.join(" ")
            );
        }
    }
}

/// The SVG document for the runs (one color each) under `title`.
pub fn render(title: &str, runs: &[RunReport]) -> String {
    let x_max = runs.iter().flat_map(|run| run.timeline.iter().map(|p| p.t)).fold(1.0f64, f64::max);
    let ready_max = runs.iter().map(|r| r.certificates as f64).fold(1.0, f64::max);
    let latency_max = runs.iter().flat_map(|r| r.latencies.iter().map(|l| l.latency)).fold(0.1, f64::max);
    let rss_max =
        runs.iter().flat_map(|r| r.timeline.iter().map(|p| p.rss_kib as f64 / 1024.0)).fold(1.0, f64::max) * 1.1;
    let height = TOP + 3.0 * (PANEL_HEIGHT + GAP) + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" viewBox="0 0 {WIDTH} {height}">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="20" font-size="15">{}</text>"#, escape(title));
    let panels = [
        Panel { top: TOP + 10.0, x_max, y_max: ready_max },
        Panel { top: TOP + 10.0 + PANEL_HEIGHT + GAP, x_max, y_max: latency_max * 1.1 },
        Panel { top: TOP + 10.0 + 2.0 * (PANEL_HEIGHT + GAP), x_max, y_max: rss_max },
    ];
    panels[0].frame(&mut svg, "Certificates Ready", "count");
    panels[1].frame(&mut svg, "apply → Ready latency of each Certificate (at its Ready time)", "seconds");
    panels[2].frame(&mut svg, "operator resident memory (VmRSS)", "MiB");
    for (index, run) in runs.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        panels[0].polyline(&mut svg, run.timeline.iter().map(|p| (p.t, p.ready as f64)), color);
        for point in &run.latencies {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.8" fill="{color}" fill-opacity="0.6"/>"#,
                panels[1].x(point.ready_at),
                panels[1].y(point.latency)
            );
        }
        panels[2].polyline(&mut svg, run.timeline.iter().map(|p| (p.t, p.rss_kib as f64 / 1024.0)), color);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{color}">■ {}</text>"#,
            LEFT + 10.0 + 300.0 * index as f64,
            height - 12.0,
            escape(&run.label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">seconds since the first apply</text>"#,
        WIDTH - RIGHT,
        height - 12.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(1000.0), 200.0);
        assert_eq!(tick_step(0.9), 0.2);
        assert_eq!(tick_step(37.0), 10.0);
        assert_eq!(tick_step(0.0), 1.0);
    }
}
