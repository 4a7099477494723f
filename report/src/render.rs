//! Figures to SVG with plotters' SVG backend (text as SVG `<text>`, no font or system library).

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::figures::{Body, Figure};

const WIDTH: u32 = 760;
const HEIGHT: u32 = 420;

fn color(index: usize) -> RGBColor {
    // Distinct on screen and in grey print (a short, readable palette).
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    COLORS[index % COLORS.len()]
}

/// Renders one figure as a standalone SVG document.
pub fn svg(figure: &Figure) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width(figure), HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        match &figure.body {
            Body::Lines { log2_x, series } => lines(&root, figure, *log2_x, series)?,
            Body::Bars { categories, groups } => bars(&root, figure, categories, groups)?,
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(out)
}

/// Bar figures widen until every category's label fits under its bars, written across (upright
/// labels would need anchoring plotters does not offer for axis labels).
fn width(figure: &Figure) -> u32 {
    match &figure.body {
        Body::Bars { categories, .. } => {
            let longest = categories
                .iter()
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0);
            let needed = categories.len() * (longest * 7 + 14) + 110;
            WIDTH.max(needed as u32)
        }
        Body::Lines { .. } => WIDTH,
    }
}

/// A range with room around it, never empty.
fn padded(min: f64, max: f64) -> (f64, f64) {
    if !min.is_finite() || !max.is_finite() {
        return (0.0, 1.0);
    }
    if max <= min {
        return (min - 1.0, max + 1.0);
    }
    (min, max)
}

/// A tick label: plain under 10000, with a k/M suffix above.
fn short_number(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn lines(
    root: &DrawingArea<SVGBackend, Shift>,
    figure: &Figure,
    log2_x: bool,
    series: &[crate::figures::Series],
) -> Result<()> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let (x_min, x_max) = padded(x_min, x_max);
    let y_top = if y_max > 0.0 { y_max * 1.3 } else { 1.0 };
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&figure.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(&figure.x_label)
                .y_desc(&figure.y_label)
                .x_label_formatter(&|x| short_number(*x))
                .y_label_formatter(&|y| short_number(*y))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (i, s) in series.iter().enumerate() {
                let style = color(i).stroke_width(if s.run == 0 { 2 } else { 1 });
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(&s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color(i).stroke_width(2))
                    });
                // Later runs get hollow triangles, the first filled circles: overlays stay apart
                // in grey print too.
                if s.run == 0 {
                    chart
                        .draw_series(
                            s.points
                                .iter()
                                .map(|&p| Circle::new(p, 3, color(i).filled())),
                        )
                        .map_err(|e| anyhow!("{e}"))?;
                } else {
                    chart
                        .draw_series(
                            s.points
                                .iter()
                                .map(|&p| TriangleMarker::new(p, 5, color(i).stroke_width(1))),
                        )
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }};
    }
    if log2_x {
        draw!(
            builder
                .build_cartesian_2d((x_min..x_max).log_scale().base(2.0), 0.0..y_top)
                .map_err(|e| anyhow!("{e}"))?
        );
    } else {
        draw!(
            builder
                .build_cartesian_2d(x_min..x_max, 0.0..y_top)
                .map_err(|e| anyhow!("{e}"))?
        );
    }
    Ok(())
}

fn bars(
    root: &DrawingArea<SVGBackend, Shift>,
    figure: &Figure,
    categories: &[String],
    groups: &[crate::figures::BarGroup],
) -> Result<()> {
    let y_max = groups
        .iter()
        .flat_map(|g| g.values.iter().copied())
        .fold(0.0f64, f64::max);
    let y_top = if y_max > 0.0 { y_max * 1.3 } else { 1.0 };
    let count = categories.len().max(1) as u32;
    let mut chart = ChartBuilder::on(root)
        .caption(&figure.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((0u32..count).into_segmented(), 0.0..y_top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len())
        .x_label_style(("sans-serif", 12))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                categories.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_desc(&figure.x_label)
        .y_desc(&figure.y_label)
        .y_label_formatter(&|y| short_number(*y))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let slot = 0.8 / groups.len().max(1) as f64;
    // Bars inside a category are placed in pixels of the plotting area: segmented coordinates
    // address whole categories only.
    let area = chart.plotting_area();
    let (base_x, base_y) = area.get_base_pixel();
    let y_pixel = |y: f64| area.map_coordinate(&(SegmentValue::Exact(0), y)).1 - base_y;
    let left_edge = area.map_coordinate(&(SegmentValue::Exact(0), 0.0)).0 - base_x;
    let right_edge = area.map_coordinate(&(SegmentValue::Last, 0.0)).0 - base_x;
    let pixels_per_category = f64::from(right_edge - left_edge) / f64::from(count);
    let pixels = area.strip_coord_spec();
    for (g, group) in groups.iter().enumerate() {
        for (c, value) in group.values.iter().enumerate() {
            let left =
                f64::from(left_edge) + pixels_per_category * (c as f64 + 0.1 + slot * g as f64);
            let right = left + pixels_per_category * slot;
            pixels
                .draw(&Rectangle::new(
                    [
                        (left.round() as i32, y_pixel(*value)),
                        (
                            (right.round() as i32 - 1).max(left.round() as i32),
                            y_pixel(0.0),
                        ),
                    ],
                    color(g).filled(),
                ))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    if groups.len() > 1 || groups.iter().any(|g| !g.name.is_empty()) {
        for (g, group) in groups.iter().enumerate() {
            chart
                .draw_series(std::iter::empty::<Rectangle<(SegmentValue<u32>, f64)>>())
                .map_err(|e| anyhow!("{e}"))?
                .label(&group.name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(g).filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::{BarGroup, Series};

    fn figure(body: Body) -> Figure {
        Figure {
            bench: "b".into(),
            title: "b: ops_per_s against size".into(),
            x_label: "size (B)".into(),
            y_label: "ops_per_s (ops/s)".into(),
            body,
            table: Vec::new(),
        }
    }

    #[test]
    fn line_figures_render_with_title_axes_and_legend() {
        let out = svg(&figure(Body::Lines {
            log2_x: true,
            series: vec![Series {
                name: "poll".into(),
                run: 0,
                points: vec![(16.0, 100.0), (4096.0, 50.0)],
            }],
        }))
        .unwrap();
        assert!(out.starts_with("<svg"));
        for text in [
            "b: ops_per_s against size",
            "size (B)",
            "ops_per_s (ops/s)",
            "poll",
        ] {
            assert!(out.contains(text), "no {text:?} in the SVG");
        }
    }

    #[test]
    fn bar_figures_and_empty_figures_render() {
        let out = svg(&figure(Body::Bars {
            categories: vec!["32-63".into(), "64-127".into()],
            groups: vec![BarGroup {
                name: "A count".into(),
                values: vec![3.0, 7.0],
            }],
        }))
        .unwrap();
        assert!(out.contains("64-127") && out.contains("A count"));
        assert!(out.matches("<rect").count() >= 3, "bars drawn");
        let empty = svg(&figure(Body::Lines {
            log2_x: false,
            series: vec![],
        }));
        assert!(empty.is_ok());
    }

    #[test]
    fn tick_numbers_stay_short() {
        assert_eq!(short_number(26318.0), "26k");
        assert_eq!(short_number(1_500_000.0), "1.5M");
        assert_eq!(short_number(512.0), "512");
        assert_eq!(short_number(0.25), "0.25");
    }
}
