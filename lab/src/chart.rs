//! PNG charts (training curves, metric comparisons) drawn by plotters.
//!
//! Text is drawn with DejaVu Sans, committed in `lab/fonts/` with its licence and registered
//! through plotters' `ab_glyph` support, so a chart needs no system font and looks the same on
//! every machine. Panels sit side by side; each is a few plotters calls.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// One line of a [`Panel::Lines`]; points are joined in the order given, and a non-finite
/// coordinate breaks the line instead of pulling the axis to infinity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One bar of a [`Panel::Bars`]; `err` is drawn as `value ± err`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub err: Option<f64>,
}

/// One chart of a figure; [`render`] puts panels side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Panel {
    Lines {
        title: String,
        x_label: String,
        y_label: String,
        series: Vec<Series>,
    },
    Bars {
        title: String,
        y_label: String,
        bars: Vec<Bar>,
    },
}

/// Bounds the pixel buffer (3 bytes a pixel) so that a unit mix-up in the size fails cleanly
/// instead of asking for gigabytes.
const MAX_PIXELS: u64 = 1 << 26;

/// Panels smaller than this get no axes (there is no room for their labels), only a blank area.
const MIN_AXES: (u32, u32) = (100, 75);

const FONT: &str = "sans-serif";

/// Tableau 10: series `i` gets the same colour in every panel, so a model keeps its colour from
/// a loss curve to a metric bar when the caller keeps the order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Register the bundled font once per process.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let bytes: &'static [u8] = include_bytes!("../fonts/DejaVuSans.ttf");
        register_font(FONT, FontStyle::Normal, bytes).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(LabError::invalid("the bundled font does not parse"))
    }
}

/// Draws `panels` left to right, each `width_per_panel` x `height` pixels, into one RGB PNG at
/// `path`.
///
/// The file is written to `path` + `.tmp` and renamed, so a reader (or a report being
/// regenerated) never sees half a PNG. Empty panels render as axes without data; an empty panel
/// list or a zero or huge size is a [`LabError::InvalidArgument`].
pub fn render(path: &Path, panels: &[Panel], width_per_panel: u32, height: u32) -> Result<()> {
    if panels.is_empty() {
        return Err(LabError::invalid("plot: no panels to render"));
    }
    if width_per_panel == 0 || height == 0 {
        return Err(LabError::invalid(format!(
            "plot: panel size {width_per_panel}x{height} has no pixels"
        )));
    }
    let width = u64::from(width_per_panel) * panels.len() as u64;
    if width * u64::from(height) > MAX_PIXELS {
        return Err(LabError::invalid(format!(
            "plot: {width}x{height} pixels is more than the limit of {MAX_PIXELS}"
        )));
    }
    font()?;
    // Fits in u32: at most MAX_PIXELS.
    let width = width as u32;
    let mut px = vec![255u8; width as usize * height as usize * 3];
    let failed = |e: String| LabError::Chart {
        path: path.to_path_buf(),
        detail: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut px, (width, height)).into_drawing_area();
        let axes = width_per_panel >= MIN_AXES.0 && height >= MIN_AXES.1;
        for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            if axes {
                draw_panel(area, panel, height).map_err(|e| failed(e.to_string()))?;
            }
        }
        root.present().map_err(|e| failed(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&px, width, height, image::ColorType::Rgb8)
        .map_err(|e| failed(e.to_string()))?;
    write_atomically(path, &png)
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(area: &Area<'_>, panel: &Panel, height: u32) -> DrawResult {
    // Text grows with the panel, within readable bounds.
    let text = (height / 24).clamp(10, 16);
    match panel {
        Panel::Lines {
            title,
            x_label,
            y_label,
            series,
        } => draw_lines(area, text, title, x_label, y_label, series),
        Panel::Bars {
            title,
            y_label,
            bars,
        } => draw_bars(area, text, title, y_label, bars),
    }
}

fn draw_lines(
    area: &Area<'_>,
    text: u32,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> DrawResult {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points = || series.iter().flat_map(|s| s.points.iter().filter(finite));
    let xs = span(points().map(|p| p.0));
    let ys = span(points().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, text + 2))
        .margin(text)
        .x_label_area_size(text * 3)
        .y_label_area_size(text * 4)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, text))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let style = colour(i).stroke_width(2);
        // A non-finite point ends one run and starts the next.
        for (r, run) in s.points.split(|p| !finite(&p)).enumerate() {
            let drawn = chart.draw_series(LineSeries::new(run.iter().copied(), style))?;
            if r == 0 && !s.name.is_empty() {
                drawn
                    .label(s.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            }
            if run.len() == 1 {
                chart.draw_series(run.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
            }
        }
    }
    if series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .label_font((FONT, text))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    Ok(())
}

fn draw_bars(area: &Area<'_>, text: u32, title: &str, y_label: &str, bars: &[Bar]) -> DrawResult {
    let lows = bars.iter().map(|b| b.value - b.err.unwrap_or(0.0).abs());
    let highs = bars.iter().map(|b| b.value + b.err.unwrap_or(0.0).abs());
    let mut ys = span(lows.chain(highs).filter(|v| v.is_finite()));
    // Zero on the axis when the data comes close to it.
    if ys.start > 0.0 && ys.start < 0.25 * ys.end {
        ys.start = 0.0;
    }
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, text + 2))
        .margin(text)
        .x_label_area_size(text * 3)
        .y_label_area_size(text * 4)
        .build_cartesian_2d((0..n).into_segmented(), ys.clone())?;
    // About 0.6 em per character: longer labels are cut so that neighbours do not overlap.
    let room = (area.dim_in_pixel().0 as usize / n) * 10 / (6 * text as usize).max(1);
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => bars.get(*i).map_or(String::new(), |b| fit(&b.label, room)),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_label_formatter(&|v| tick(*v))
        .y_desc(y_label)
        .label_style((FONT, text))
        .draw()?;
    let base = ys.start.max(0.0).min(ys.end);
    for (i, b) in bars.iter().enumerate().filter(|(_, b)| b.value.is_finite()) {
        let top = b.value.clamp(ys.start, ys.end);
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), base),
                (SegmentValue::Exact(i + 1), top),
            ],
            colour(i).filled(),
        );
        bar.set_margin(0, 0, 6, 6);
        chart.draw_series(std::iter::once(bar))?;
        if let Some(e) = b.err.filter(|e| e.is_finite() && *e > 0.0) {
            let at = SegmentValue::CenterOf(i);
            let (lo, hi) = ((b.value - e).max(ys.start), (b.value + e).min(ys.end));
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(at.clone(), lo), (at, hi)],
                BLACK.stroke_width(2),
            )))?;
        }
    }
    Ok(())
}

/// A tick label: at most four significant decimals, no trailing zeros.
fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// `label` cut to `room` characters, with an ellipsis when cut.
fn fit(label: &str, room: usize) -> String {
    if label.chars().count() <= room {
        return label.to_string();
    }
    let mut s: String = label.chars().take(room.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The range of the finite values with 5% room on each side (`0..1` without values, a unit
/// around a single value).
fn span(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return 0.0..1.0;
    }
    if lo == hi {
        return lo - 0.5..hi + 0.5;
    }
    let pad = 0.05 * (hi - lo);
    let padded = lo - pad..hi + pad;
    // Near the ends of f64 the room would overflow: keep the bare range.
    if padded.start.is_finite() && padded.end.is_finite() {
        padded
    } else {
        lo..hi
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        // Data on disk before the rename, so a crash cannot leave an empty file at `path`.
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(LabError::io(tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        LabError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn line_panel(title: &str, series: Vec<Series>) -> Panel {
        Panel::Lines {
            title: title.into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series,
        }
    }

    fn curve(name: &str, n: usize, f: impl Fn(f64) -> f64) -> Series {
        Series {
            name: name.into(),
            points: (0..n).map(|i| (i as f64 * 100.0, f(i as f64))).collect(),
        }
    }

    fn bar(label: &str, value: f64, err: Option<f64>) -> Bar {
        Bar {
            label: label.into(),
            value,
            err,
        }
    }

    fn sample_panels() -> Vec<Panel> {
        vec![
            line_panel(
                "Training loss",
                vec![
                    curve("SIREN", 120, |x| 0.45 + 0.25 * (-x / 25.0).exp()),
                    curve("DIN", 120, |x| 0.47 + 0.22 * (-x / 30.0).exp()),
                    Series {
                        name: "with gaps".into(),
                        points: vec![
                            (0.0, 0.6),
                            (3000.0, 0.58),
                            (f64::NAN, 0.5),
                            (6000.0, 0.55),
                            (9000.0, f64::INFINITY),
                            (11000.0, 0.52),
                        ],
                    },
                ],
            ),
            Panel::Lines {
                title: "Validation GAUC per epoch".into(),
                x_label: "epoch".into(),
                y_label: "GAUC".into(),
                series: vec![
                    Series {
                        name: "SIREN (hard+soft)".into(),
                        points: (1..=8)
                            .map(|e| (e as f64, 0.70 + 0.01 * (e as f64).ln()))
                            .collect(),
                    },
                    Series {
                        name: "constant".into(),
                        points: (1..=8).map(|e| (e as f64, 0.70)).collect(),
                    },
                    Series {
                        name: "one point".into(),
                        points: vec![(4.0, 0.715)],
                    },
                ],
            },
            Panel::Bars {
                title: "Test GAUC".into(),
                y_label: "GAUC".into(),
                bars: vec![
                    bar("SIREN", 0.7312, Some(0.004)),
                    bar("DIN", 0.7105, Some(0.005)),
                    bar("SIM-hard", 0.7188, None),
                    bar("ETA_long_label_baseline", 0.7211, Some(0.003)),
                    bar("pop", 0.6502, None),
                ],
            },
        ]
    }

    fn is_background(px: &[u8]) -> bool {
        px == [255, 255, 255]
    }

    #[test]
    fn renders_a_figure_that_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fig.png");
        render(&path, &sample_panels(), 480, 360).unwrap();
        let (w, h, px) = decode(&path);
        assert_eq!((w, h), (3 * 480, 360));
        assert!(!dir.path().join("fig.png.tmp").exists());

        let pixels: Vec<&[u8]> = px.chunks_exact(3).collect();
        let inked = pixels.iter().filter(|p| !is_background(p)).count();
        assert!(
            inked > pixels.len() / 20,
            "only {inked} non-background pixels"
        );
        let colours: HashSet<&[u8]> = pixels.iter().copied().collect();
        assert!(colours.len() >= 8, "only {} colours", colours.len());
        // Every series and bar colour is really drawn, at full strength somewhere.
        for c in &PALETTE[..5] {
            let c = [c.0, c.1, c.2];
            assert!(pixels.iter().any(|p| *p == c), "colour {c:?} missing");
        }
        // Each panel has ink of its own.
        for panel in 0..3 {
            let x0 = panel * 480;
            let ink = (0..360)
                .flat_map(|y| (x0..x0 + 480).map(move |x| (x, y)))
                .filter(|&(x, y)| !is_background(pixels[y * 1440 + x]))
                .count();
            assert!(ink > 480 * 360 / 20, "panel {panel}: {ink}");
        }
    }

    #[test]
    fn overwrites_and_rejects_bad_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fig.png");
        let panels = sample_panels();
        render(&path, &panels[..1], 200, 150).unwrap();
        render(&path, &panels, 200, 150).unwrap();
        assert_eq!(decode(&path).0, 600);

        let invalid = |r: Result<()>| matches!(r, Err(LabError::InvalidArgument(_)));
        assert!(invalid(render(&path, &[], 100, 100)));
        assert!(invalid(render(&path, &panels, 0, 100)));
        assert!(invalid(render(&path, &panels, 100, 0)));
        assert!(invalid(render(&path, &panels, 100_000, 100_000)));

        let missing = dir.path().join("no/such/dir/fig.png");
        assert!(matches!(
            render(&missing, &panels, 100, 100),
            Err(LabError::Io { .. })
        ));
    }

    #[test]
    fn empty_and_degenerate_inputs_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let panels = vec![
            line_panel("no series", vec![]),
            line_panel(
                "",
                vec![Series {
                    name: String::new(),
                    points: vec![],
                }],
            ),
            line_panel(
                "only NaN",
                vec![Series {
                    name: "nan".into(),
                    points: vec![(f64::NAN, 1.0), (1.0, f64::NEG_INFINITY), (f64::MAX, 1.0)],
                }],
            ),
            line_panel(
                "huge and tiny",
                vec![
                    curve("big", 5, |x| 1e12 * x),
                    curve("flat zero", 5, |_| 0.0),
                    curve("tiny", 5, |x| 1e-9 * x),
                ],
            ),
            Panel::Bars {
                title: "no bars".into(),
                y_label: String::new(),
                bars: vec![],
            },
            Panel::Bars {
                title: "odd bars \u{3bb}".into(),
                y_label: "\u{2206}".into(),
                bars: vec![
                    bar("nan", f64::NAN, Some(1.0)),
                    bar("neg", -3.0, Some(f64::INFINITY)),
                    bar("", 0.0, Some(-0.5)),
                    bar(&"x".repeat(200), 2.5, None),
                ],
            },
            Panel::Bars {
                title: "one bar".into(),
                y_label: "v".into(),
                bars: vec![bar("only", 0.7, None)],
            },
        ];
        for (w, h) in [(480, 360), (120, 90), (16, 16), (1, 1)] {
            render(&path, &panels, w, h).unwrap();
            assert_eq!(decode(&path).0, w * panels.len() as u32);
        }
    }

    /// Writes sample figures to the temp directory for a person to look at:
    /// `cargo test -p siren-lab chart::tests::sample_figure -- --ignored`.
    #[test]
    #[ignore]
    fn sample_figure() {
        let path = std::env::temp_dir().join("plot-sample.png");
        render(&path, &sample_panels(), 480, 360).unwrap();
        eprintln!("wrote {}", path.display());

        let many: Vec<Series> = (0..13)
            .map(|k| {
                curve(&format!("model_{k}"), 2000, move |x| {
                    (x / 300.0 + k as f64).sin() + k as f64 * 0.1
                })
            })
            .collect();
        let edge = vec![
            line_panel("13 series, 2000 points", many),
            line_panel("nothing", vec![]),
            Panel::Bars {
                title: "Delta vs baseline (%)".into(),
                y_label: "relative change".into(),
                bars: vec![
                    bar("A", 1.5, Some(0.4)),
                    bar("B", -0.8, Some(0.3)),
                    bar("C", 0.2, None),
                    bar("D", f64::NAN, None),
                ],
            },
            Panel::Bars {
                title: "Latency p99 (ms)".into(),
                y_label: String::new(),
                bars: vec![
                    bar("hard", 12.0, None),
                    bar("soft", 31.0, None),
                    bar("scan", 240.0, None),
                ],
            },
        ];
        let path = std::env::temp_dir().join("plot-sample-edge.png");
        render(&path, &edge, 340, 260).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
