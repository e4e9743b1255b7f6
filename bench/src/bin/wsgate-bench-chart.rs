//! `wsgate-bench-chart SPEC.json OUT.png`: draws the bar-chart grid of
//! `bench/compare.sh` (BENCHMARKS.md) from a small JSON spec written by
//! `bench/compare/report.py`:
//!
//! ```json
//! {"title": "…", "columns": 2,
//!  "panels": [{"title": "…", "unit": "µs",
//!              "bars": [{"label": "wsgate", "value": 9.1, "color": "#1f77b4"}],
//!              "lines": [{"value": 17.1, "label": "goal"}]}]}
//! ```
//!
//! Each panel is one bar per entry, the value written above it, and
//! optional dashed horizontal lines (goals). Text uses the same embedded
//! font as `wsgate-bench --chart`, so no system fonts are needed.

#![forbid(unsafe_code)]

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Deserialize;
use std::process::ExitCode;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 230;

#[derive(Deserialize)]
struct Spec {
    title: String,
    #[serde(default = "two")]
    columns: usize,
    panels: Vec<PanelSpec>,
}

fn two() -> usize {
    2
}

#[derive(Deserialize)]
struct PanelSpec {
    title: String,
    unit: String,
    bars: Vec<Bar>,
    #[serde(default)]
    lines: Vec<Line>,
    /// Write the value above each bar (off for dense panels).
    #[serde(default = "yes")]
    values: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Bar {
    label: String,
    value: f64,
    #[serde(default)]
    color: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    value: f64,
    label: String,
}

/// `#rrggbb` to a colour; grey for anything else.
fn color(hex: Option<&str>) -> RGBColor {
    let parse = |h: &str| -> Option<RGBColor> {
        let h = h.strip_prefix('#')?;
        if h.len() != 6 {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).ok();
        Some(RGBColor(byte(0)?, byte(2)?, byte(4)?))
    };
    hex.and_then(parse).unwrap_or(RGBColor(120, 120, 120))
}

/// Numbers with three significant digits: 21.4, 0.57, 4700.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Axis numbers without needless zeros: 25, 2.5, 0.25.
fn axis(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult<'a> =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>;

fn draw_panel<'a>(area: &Area<'a>, panel: &PanelSpec) -> DrawResult<'a> {
    let n = panel.bars.len().max(1);
    let top = panel
        .bars
        .iter()
        .map(|b| b.value)
        .chain(panel.lines.iter().map(|l| l.value))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let y_max = if top > 0.0 { top * 1.18 } else { 1.0 };
    let labels: Vec<String> = panel.bars.iter().map(|b| b.label.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 17))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(62)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..y_max)?;
    let dense = n > 8;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(if dense { n / 5 + 1 } else { n })
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            labels.get(i as usize).cloned().unwrap_or_default()
        })
        .y_desc(panel.unit.as_str())
        .y_label_formatter(&|v| axis(*v))
        .light_line_style(WHITE)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 13))
        .draw()?;
    let width = if dense { 0.45 } else { 0.35 };
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
        let x = i as f64;
        Rectangle::new(
            [(x - width, 0.0), (x + width, b.value.max(0.0))],
            color(b.color.as_deref()).filled(),
        )
    }))?;
    if panel.values && !dense {
        chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                short(b.value),
                (i as f64 - 0.2, b.value + y_max * 0.07),
                (FONT, 14).into_font(),
            )
        }))?;
    }
    for line in &panel.lines {
        let red = RGBColor(200, 30, 30);
        chart.draw_series(DashedLineSeries::new(
            [(-0.5, line.value), (n as f64 - 0.5, line.value)],
            6,
            4,
            red.stroke_width(2),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            line.label.clone(),
            (n as f64 - 0.5 - 0.02 * n as f64, line.value),
            (FONT, 13)
                .into_font()
                .color(&red)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Right,
                    plotters::style::text_anchor::VPos::Bottom,
                )),
        )))?;
    }
    Ok(())
}

fn draw(spec: &Spec, out: &str) -> Result<(), String> {
    plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| "the embedded font did not load".to_string())?;
    let columns = spec.columns.max(1);
    let rows = spec.panels.len().div_ceil(columns).max(1);
    let height = 50 + PANEL_HEIGHT * rows as u32;
    let root = BitMapBackend::new(out, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let body = root
        .titled(&spec.title, (FONT, 22))
        .map_err(|e| e.to_string())?;
    for (panel, area) in spec.panels.iter().zip(body.split_evenly((rows, columns))) {
        draw_panel(&area, panel).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, spec_path, out] = args.as_slice() else {
        eprintln!("usage: wsgate-bench-chart SPEC.json OUT.png");
        return ExitCode::from(2);
    };
    let spec: Spec = match std::fs::read_to_string(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("wsgate-bench-chart: reading {spec_path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match draw(&spec, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate-bench-chart: drawing {out}: {e}");
            ExitCode::FAILURE
        }
    }
}
