//! Bar charts as SVG files (plotters' SVG backend: text is left to the
//! viewer's fonts, so nothing here needs a font file or a system library).
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::{
    coord::{Shift, types::RangedCoordf64},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// One series of bars: a value per category.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<f64>,
}

/// A horizontal reference line (a goal, a published figure).
pub struct Reference<'a> {
    pub name: &'a str,
    pub value: f64,
}

/// What to draw.
pub struct Bars<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub categories: Vec<String>,
    pub series: Vec<Series<'a>>,
    pub references: Vec<Reference<'a>>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];
const REFERENCE_COLORS: [RGBColor; 3] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// The chart the bars are drawn on: categories along x, values along y.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
/// A drawing error of the SVG backend.
type DrawError = DrawingAreaErrorKind<std::io::Error>;

/// Draws grouped bars (one group per category, one bar per series) and the
/// reference lines into an SVG file at `path`.
pub fn bars(path: &Path, b: &Bars) -> Result<()> {
    let n = b.categories.len().max(1);
    let width = (140 * n as u32 + 160).max(640);
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    let err = |e: DrawError| anyhow!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(b.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..top(b))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(b.y_label)
        .draw()
        .map_err(err)?;
    categories(&root, &chart, b).map_err(err)?;
    series(&mut chart, b).map_err(err)?;
    references(&mut chart, b, n).map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The top of the y axis: the highest bar or reference line, with room
/// above it.
fn top(b: &Bars) -> f64 {
    b.series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(b.references.iter().map(|r| r.value))
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.15
}

/// Category names under the bars, centred on each group.
fn categories(
    root: &DrawingArea<SVGBackend, Shift>,
    chart: &Chart,
    b: &Bars,
) -> Result<(), DrawError> {
    let label = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, name) in b.categories.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(name.clone(), (x, y + 8), label.clone()))?;
    }
    Ok(())
}

/// A bar per series in each category's group, side by side.
fn series(chart: &mut Chart, b: &Bars) -> Result<(), DrawError> {
    let k = b.series.len().max(1);
    let w = 0.8 / k as f64;
    for (j, s) in b.series.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        chart
            .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f64 + 0.1 + j as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.95, v)], color.filled())
            }))?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    Ok(())
}

/// The reference lines across the `n` categories.
fn references(chart: &mut Chart, b: &Bars, n: usize) -> Result<(), DrawError> {
    for (j, r) in b.references.iter().enumerate() {
        let color = REFERENCE_COLORS[j % REFERENCE_COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                [(0.0, r.value), (n as f64, r.value)],
                color.stroke_width(2),
            ))?
            .label(format!("{} ({})", r.name, short(r.value)))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
    }
    Ok(())
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_labels() {
        let dir = std::env::temp_dir().join(format!("lb-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        bars(
            &path,
            &Bars {
                title: "ns/packet",
                y_label: "ns",
                categories: vec!["tcp4".into(), "udp4".into()],
                series: vec![
                    Series {
                        name: "lb",
                        values: vec![90.0, 91.0],
                    },
                    Series {
                        name: "macswap",
                        values: vec![15.0, 15.0],
                    },
                ],
                references: vec![Reference {
                    name: "goal",
                    value: 30.0,
                }],
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in ["ns/packet", "tcp4", "udp4", "macswap", "goal (30.00)"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
