//! SVG charts drawn with plotters: stage scores, bpb against the baseline ladder, index against cost.
//!
//! Every function returns a whole SVG document as a string. Text is left to the viewer's fonts
//! (`<text>` elements), so no font files are needed. A chart that cannot be drawn comes back as a
//! small SVG that says why: charts never fail a report.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const WIDTH: u32 = 760;
const HEIGHT: u32 = 380;
const FONT: &str = "sans-serif";

/// A colour per series, stable by index (colour-blind friendly first).
fn colour(i: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x17, 0xbe, 0xcf),
    ];
    P[i % P.len()]
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG that says what could not be drawn.
fn message_svg(title: &str, message: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"60\"><text x=\"10\" y=\"24\" font-family=\"{FONT}\" font-size=\"15\">{}</text><text x=\"10\" y=\"46\" font-family=\"{FONT}\" font-size=\"13\" fill=\"#666\">{}</text></svg>",
        escape(title),
        escape(message)
    )
}

fn finite(x: f64) -> bool {
    x.is_finite()
}

/// Shortens a label for an axis.
fn short(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

type DrawResult = Result<(), String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The root area every chart draws on.
type Root<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Draws on a white `size` canvas and returns the SVG, or an SVG saying why it could not be drawn.
fn render(title: &str, size: (u32, u32), draw: impl FnOnce(&Root<'_>) -> DrawResult) -> String {
    let mut svg = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(err)
            .and_then(|_| draw(&root))
            .and_then(|_| root.present().map_err(err))
    };
    match result {
        Ok(()) => svg,
        Err(e) => message_svg(title, &format!("the chart could not be drawn: {e}")),
    }
}

/// Bits per byte of models (`points`: label, bpb) against the world's baseline ladder
/// (`baselines`: uniform, unigram, gzip, xz, conditional xz as horizontal lines). Lower is better.
pub fn bpb_ladder(title: &str, baselines: &[(String, f64)], points: &[(String, f64)]) -> String {
    let points: Vec<&(String, f64)> = points.iter().filter(|p| finite(p.1)).collect();
    let baselines: Vec<&(String, f64)> = baselines.iter().filter(|b| finite(b.1)).collect();
    if points.is_empty() && baselines.is_empty() {
        return message_svg(title, "no verified bits per byte to show");
    }
    render(title, (WIDTH, HEIGHT), |root| {
        // The uniform baseline (8 bpb) would squash everything else; start the axis at the
        // weakest baseline that is still in view of the models.
        let top_model = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
        let shown: Vec<&&(String, f64)> = baselines
            .iter()
            .filter(|b| b.1 <= (top_model * 1.6).max(3.0) || points.is_empty())
            .collect();
        let ymax = shown
            .iter()
            .map(|b| b.1)
            .chain(points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            * 1.12;
        let n = points.len().max(1);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 17))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(52)
            .margin_right(130)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax.max(0.5))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("bits per byte (lower is better)")
            .y_label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(err)?;
        // Labels of close rungs (gzip 2.74, xz 2.69) would overlap: lay them out top to bottom at
        // least one line apart, each beside its own line as far as possible.
        let mut labels: Vec<(i32, i32, String)> = Vec::new();
        for b in &shown {
            let style = ShapeStyle::from(&RGBColor(0x99, 0x99, 0x99)).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(-0.5, b.1), (n as f64 - 0.5, b.1)],
                    6,
                    4,
                    style,
                ))
                .map_err(err)?;
            let (px, py) = chart.backend_coord(&(n as f64 - 0.5, b.1));
            labels.push((px, py, format!("{} {:.3}", b.0, b.1)));
        }
        labels.sort_by_key(|l| l.1);
        let mut last = i32::MIN / 2;
        for (px, py, text) in labels {
            let y = py.max(last + 14);
            last = y;
            root.draw(&Text::new(
                text,
                (px + 6, y),
                TextStyle::from((FONT, 12).into_font())
                    .color(&RGBColor(0x55, 0x55, 0x55))
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        for (i, p) in points.iter().enumerate() {
            let x = i as f64;
            let c = colour(i);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.28, 0.0), (x + 0.28, p.1)],
                    c.mix(0.75).filled(),
                )))
                .map_err(err)?;
            let (px, py) = chart.backend_coord(&(x, p.1));
            root.draw(&Text::new(
                format!("{:.3}", p.1),
                (px, py - 4),
                TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(err)?;
            let (lx, ly) = chart.backend_coord(&(x, 0.0));
            root.draw(&Text::new(
                short(&p.0, 28),
                (lx, ly + 8),
                TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        Ok(())
    })
}

/// Normalised score per stage (0–1) per agent: grouped bars, one group per stage, one colour per
/// agent (`series`: agent label, one value per stage in the order of `stages`; None: not reached).
pub fn stage_scores(
    title: &str,
    stages: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> String {
    if stages.is_empty() || series.is_empty() {
        return message_svg(title, "no scored stages to show");
    }
    let legend_rows = series.len().div_ceil(3) as u32;
    let height = HEIGHT + 20 * legend_rows;
    render(title, (WIDTH, height), |root| {
        let (plot, legend) = root.split_vertically(HEIGHT);
        let n = stages.len();
        let ymax = series
            .iter()
            .flat_map(|s| s.1.iter().flatten())
            .copied()
            .filter(|v| finite(*v))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, (FONT, 17))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("normalised score (reference = 1)")
            .y_label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let k = series.len() as f64;
        let width = 0.8 / k;
        for (si, (_, values)) in series.iter().enumerate() {
            let c = colour(si);
            for (i, v) in values.iter().enumerate().take(n) {
                let Some(v) = v.filter(|v| finite(*v)) else {
                    continue;
                };
                let x0 = i as f64 - 0.4 + si as f64 * width;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0 + width * 0.08, 0.0), (x0 + width * 0.92, v)],
                        c.filled(),
                    )))
                    .map_err(err)?;
            }
        }
        for (i, s) in stages.iter().enumerate() {
            let (lx, ly) = chart.backend_coord(&(i as f64, 0.0));
            plot.draw(&Text::new(
                s.clone(),
                (lx, ly + 8),
                TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        for (si, (label, _)) in series.iter().enumerate() {
            let col = (si % 3) as i32;
            let row = (si / 3) as i32;
            let x = 64 + col * 230;
            let y = 4 + row * 20;
            legend
                .draw(&Rectangle::new(
                    [(x, y + 3), (x + 12, y + 15)],
                    colour(si).filled(),
                ))
                .map_err(err)?;
            legend
                .draw(&Text::new(
                    short(label, 30),
                    (x + 18, y + 9),
                    TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// One agent on the index-against-cost chart.
#[derive(Debug, Clone)]
pub(crate) struct CostPoint {
    pub label: String,
    /// Cost on the x axis (dollars, or CPU-seconds).
    pub cost: f64,
    /// Bootstrap Index mean.
    pub index: f64,
    /// 95% confidence interval of the index, drawn as a bar.
    pub ci: Option<(f64, f64)>,
}

/// Bootstrap Index (mean, with its confidence interval) against cost (`x_desc` names the unit).
pub(crate) fn index_vs_cost(title: &str, x_desc: &str, points: &[CostPoint]) -> String {
    let points: Vec<&CostPoint> = points
        .iter()
        .filter(|p| finite(p.cost) && finite(p.index))
        .collect();
    if points.is_empty() {
        return message_svg(title, "no finished runs to show");
    }
    render(title, (WIDTH, HEIGHT), |root| {
        let xmax = points.iter().map(|p| p.cost).fold(0.0f64, f64::max);
        let xmax = if xmax > 0.0 { xmax * 1.25 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 17))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..xmax, 0f64..105f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("Bootstrap Index")
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(err)?;
        for (i, p) in points.iter().enumerate() {
            let c = colour(i);
            if let Some((lo, hi)) = p.ci.filter(|(a, b)| finite(*a) && finite(*b)) {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(p.cost, lo), (p.cost, hi)],
                        c.stroke_width(2),
                    )))
                    .map_err(err)?;
            }
            chart
                .draw_series(std::iter::once(Circle::new(
                    (p.cost, p.index),
                    5,
                    c.filled(),
                )))
                .map_err(err)?;
        }
        // Agents close together (the cheap ones near the origin) would print over each other:
        // labels go bottom to top at least one line apart, with a leader line when moved.
        let mut labels: Vec<(i32, i32, String, RGBColor)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (px, py) = chart.backend_coord(&(p.cost, p.index));
                (px, py, short(&p.label, 32), colour(i))
            })
            .collect();
        labels.sort_by_key(|l| std::cmp::Reverse(l.1));
        let mut last = i32::MAX / 2;
        for (px, py, text, c) in labels {
            let y = (py - 4).min(last - 14);
            last = y;
            if py - 4 - y > 6 {
                root.draw(&PathElement::new(
                    vec![(px + 4, py - 4), (px + 10, y)],
                    c.stroke_width(1),
                ))
                .map_err(err)?;
            }
            root.draw(&Text::new(
                text,
                (px + 10, y),
                TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_chart_has_each_model_and_baseline() {
        let svg = bpb_ladder(
            "bpb",
            &[
                ("uniform".into(), 8.0),
                ("gzip".into(), 2.73),
                ("xz_conditional".into(), 1.83),
            ],
            &[("reference".into(), 1.42), ("a <b>".into(), 2.1)],
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        for needle in [
            "gzip 2.730",
            "xz_conditional 1.830",
            "reference",
            "1.420",
            "a &lt;b&gt;",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        // The uniform baseline is far above the models: left out so the chart stays readable.
        assert!(!svg.contains("uniform 8.000"));
    }

    #[test]
    fn charts_without_data_say_so_and_nan_is_dropped() {
        assert!(bpb_ladder("t", &[], &[]).contains("no verified"));
        assert!(stage_scores("t", &[], &[]).contains("no scored"));
        let svg = index_vs_cost(
            "t",
            "CPU-seconds",
            &[CostPoint {
                label: "x".into(),
                cost: f64::NAN,
                index: 1.0,
                ci: None,
            }],
        );
        assert!(svg.contains("no finished runs"));
        let svg = stage_scores(
            "scores",
            &["crawl".into(), "train".into()],
            &[
                ("reference".into(), vec![Some(1.0), Some(1.0)]),
                ("null".into(), vec![Some(0.0), None]),
            ],
        );
        assert!(svg.contains("crawl") && svg.contains("null"));
        let svg = index_vs_cost(
            "t",
            "CPU-seconds",
            &[CostPoint {
                label: "reference".into(),
                cost: 120.0,
                index: 100.0,
                ci: Some((98.0, 100.0)),
            }],
        );
        assert!(svg.contains("reference") && svg.contains("CPU-seconds"));
    }
}
