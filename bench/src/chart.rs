//! PNG charts of a run, drawn with plotters' bitmap backend.
//!
//! Text is rendered with ab_glyph from a font embedded in the binary
//! (Ubuntu Light, from the `epaint_default_fonts` crate), so no system
//! fonts, fontconfig or freetype are needed. A chart is a column of panels;
//! each panel has line or bar series sharing one x axis.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::OnceLock;

use hdrhistogram::Histogram;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 380;

/// Drawing a chart failed.
#[derive(Debug, thiserror::Error)]
#[error("drawing chart {path}: {reason}")]
pub struct ChartError {
    pub path: String,
    pub reason: String,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Line,
    /// One bar per point, 0.8 x-units wide, centred on x.
    Bars,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

impl Series {
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            style: Style::Line,
        }
    }

    pub fn bars(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            style: Style::Bars,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Panel {
    pub fn new(title: &str, x_label: &str, y_label: &str, series: Vec<Series>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series,
        }
    }
}

/// Points for a latency-by-percentile panel: x is the number of nines
/// (0 = p0, 1 = p90, 2 = p99, 3 = p99.9), y the latency.
pub fn percentile_curve(h: &Histogram<u64>, max_nines: f64) -> Vec<(f64, f64)> {
    (0..=(max_nines * 20.0) as u32)
        .map(|i| {
            let nines = f64::from(i) / 20.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.value_at_quantile(q) as f64)
        })
        .collect()
}

fn register_font() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            plotters::style::register_font(
                FONT,
                FontStyle::Normal,
                epaint_default_fonts::UBUNTU_LIGHT,
            )
            .map_err(|_| "the embedded font did not load".to_string())
        })
        .clone()
}

/// Draws `panels` one above the other under `title` into a PNG at `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<(), ChartError> {
    let err = |reason: String| ChartError {
        path: path.display().to_string(),
        reason,
    };
    register_font().map_err(err)?;
    let rows = panels.len().max(1);
    let height = 50 + PANEL_HEIGHT * rows as u32;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let body = root
        .titled(title, (FONT, 24))
        .map_err(|e| err(e.to_string()))?;
    for (panel, area) in panels.iter().zip(body.split_evenly((rows, 1)).iter()) {
        draw_panel(area, panel).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// Axis numbers without needless decimals: 20000, 2.5, 0.25.
fn compact(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult<'a> =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>;

fn draw_panel<'a>(area: &Area<'a>, panel: &Panel) -> DrawResult<'a> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let has_bars = panel.series.iter().any(|s| s.style == Style::Bars);
    let pad = if has_bars { 0.5 } else { 0.0 };
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min) - pad;
    let x_max = points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max) + pad;
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else {
        (0.0, 1.0)
    };
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .label_style((FONT, 14))
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for (i, series) in panel.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let drawn =
            match series.style {
                Style::Line => chart.draw_series(LineSeries::new(
                    series.points.iter().copied(),
                    color.stroke_width(2),
                ))?,
                Style::Bars => chart.draw_series(series.points.iter().map(|&(x, y)| {
                    Rectangle::new([(x - 0.4, 0.0), (x + 0.4, y)], color.filled())
                }))?,
            };
        drawn
            .label(series.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
    }
    if panel.series.len() > 1 {
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_curve_is_monotonic() {
        let mut h = crate::summary::histogram(3);
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let curve = percentile_curve(&h, 3.0);
        assert_eq!(curve.first().map(|p| p.0), Some(0.0));
        assert_eq!(curve.last().map(|p| p.0), Some(3.0));
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn axis_numbers() {
        assert_eq!(compact(20000.0), "20000");
        assert_eq!(compact(2.5), "2.5");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact(0.0), "0");
    }

    #[test]
    fn draws_a_png() {
        let path =
            std::env::temp_dir().join(format!("wsgate-bench-test-{}.png", std::process::id()));
        let panels = [
            Panel::new(
                "lines",
                "s",
                "µs",
                vec![Series::line("p99", vec![(0.0, 1.0), (1.0, 3.0)])],
            ),
            Panel::new(
                "bars",
                "s",
                "closes",
                vec![
                    Series::bars("1012", vec![(0.0, 5.0), (1.0, 4.0)]),
                    Series::line("open", vec![]),
                ],
            ),
        ];
        draw(&path, "test", &panels).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
