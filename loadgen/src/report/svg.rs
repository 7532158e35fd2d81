//! The SVG output: the latency percentile spectrum plot ([`Recorder::percentile_spectrum_svg`]).

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::{Recorder, ReportError, TICKS_PER_HALF_DISTANCE, US_PER_MS};

impl Recorder {
    /// An SVG plot of the latency percentile spectrum: x is the percentile on a logarithmic
    /// `1/(1-p)` axis (labelled 90%, 99%, 99.9%, …), y the latency in ms, one line per step
    /// with samples.
    pub fn percentile_spectrum_svg(&self, title: &str) -> Result<String, ReportError> {
        let mut series: Vec<(&str, Vec<(f64, f64)>)> = self
            .steps
            .iter()
            .filter(|s| !s.latency.is_empty())
            .map(|s| (s.name.as_str(), spectrum_points(&s.latency)))
            .collect();
        let x_top = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
            .fold(100.0_f64, f64::max);
        // Round the axis up to a power of ten so that its last label is a "99.9…%" one.
        let x_max = 10f64.powi(x_top.log10().ceil() as i32);
        // Every percentile past a histogram's last tick has its maximum as value: carry each
        // line flat to the right edge (so a one-sample step is a visible line, not a point).
        for ((_, pts), s) in series
            .iter_mut()
            .zip(self.steps.iter().filter(|s| !s.latency.is_empty()))
        {
            pts.push((x_max, s.latency.max() as f64 / US_PER_MS));
        }
        let y_top = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
            .fold(0.001_f64, f64::max);
        let y_max = y_top * 1.1;
        let y_decimals = match y_max {
            y if y >= 100.0 => 0,
            y if y >= 10.0 => 1,
            y if y >= 1.0 => 2,
            _ => 3,
        };

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (1024, 640)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(16)
                .margin_right(56)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("percentile")
                .y_desc("latency (ms)")
                .x_label_formatter(&|x| percentile_label(*x))
                .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
                .draw()
                .map_err(plot_err)?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let (r, g, b) = LINE_COLORS[i % LINE_COLORS.len()];
                let color = RGBColor(r, g, b);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(plot_err)?;
            }
            root.present().map_err(plot_err)?;
        }
        Ok(svg)
    }

    /// Writes [`Recorder::percentile_spectrum_svg`] to `path`.
    pub fn write_svg(&self, path: &Path, title: &str) -> Result<(), ReportError> {
        let svg = self.percentile_spectrum_svg(title)?;
        std::fs::write(path, svg)?;
        Ok(())
    }
}

/// Line colours of the plot (Tableau 10: distinguishable, readable on white).
const LINE_COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn plot_err<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// Points `(1/(1-p), latency ms)` of a histogram's percentile spectrum, up to (excluding) 100%.
fn spectrum_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            (
                1.0 / (1.0 - v.quantile_iterated_to()),
                v.value_iterated_to() as f64 / US_PER_MS,
            )
        })
        .collect()
}

/// Label of `x = 1/(1-p)` as a percentile: 1 → `0%`, 10 → `90%`, 1000 → `99.9%`.
fn percentile_label(x: f64) -> String {
    if x <= 1.0 {
        return "0%".to_owned();
    }
    let p = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().ceil() as i64 - 2).clamp(0, 9) as usize;
    format!("{p:.decimals$}%")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::two_workers;
    use super::*;

    #[test]
    fn svg_plot_has_one_line_per_step() {
        let (mut a, b) = two_workers();
        a.merge(&b);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spectrum.svg");
        a.write_svg(&path, "loadgen: message").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(!svg.is_empty());
        assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for label in [
            "loadgen: message",
            "message",
            "presence",
            "stream_setup",
            "latency (ms)",
            "percentile",
            "99%",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        // Three data lines plus three legend swatches.
        assert!(
            svg.matches("<polyline").count() >= 6,
            "{}",
            svg.matches("<polyline").count()
        );
        // An empty recorder still plots (empty axes).
        let empty = Recorder::new().percentile_spectrum_svg("empty").unwrap();
        assert!(empty.contains("<svg"));
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }
}
