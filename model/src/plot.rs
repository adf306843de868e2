//! PNG charts (training curves, metric comparisons) drawn pixel by pixel.
//!
//! Plotting crates find fonts through fontconfig and freetype, which a headless build machine
//! may not have; a built-in 5x7 bitmap font and a handful of primitives are enough for line and
//! bar charts, need nothing from the system, and render the same bytes everywhere.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

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

/// Draws `panels` left to right, each `width_per_panel` x `height` pixels, into one RGB PNG at
/// `path`.
///
/// The file is written to `path` + `.tmp` and renamed, so a reader (or a report being
/// regenerated) never sees half a PNG. Empty panels render as axes with "no data"; an empty
/// panel list or a zero or huge size is an [`ModelError::InvalidArgument`]. Panels of at least
/// 400x280 get the font at twice its size: 7-pixel text is hard to read at that size on screen.
pub fn render(path: &Path, panels: &[Panel], width_per_panel: u32, height: u32) -> Result<()> {
    if panels.is_empty() {
        return Err(ModelError::invalid("plot: no panels to render"));
    }
    if width_per_panel == 0 || height == 0 {
        return Err(ModelError::invalid(format!(
            "plot: panel size {width_per_panel}x{height} has no pixels"
        )));
    }
    let width = u64::from(width_per_panel) * panels.len() as u64;
    if width * u64::from(height) > MAX_PIXELS {
        return Err(ModelError::invalid(format!(
            "plot: {width}x{height} pixels is more than the limit of {MAX_PIXELS}"
        )));
    }
    // Both fit in i32: each is at most MAX_PIXELS.
    let (w, h) = (width_per_panel as i32, height as i32);
    let mut canvas = Canvas::new(width as i32, h);
    let scale = if w >= 400 && h >= 280 { 2 } else { 1 };
    for (i, panel) in panels.iter().enumerate() {
        let area = Rect::new(i as i32 * w, 0, w, h);
        canvas.clip = area;
        match panel {
            Panel::Lines {
                title,
                x_label,
                y_label,
                series,
            } => draw_lines(&mut canvas, area, scale, title, x_label, y_label, series),
            Panel::Bars {
                title,
                y_label,
                bars,
            } => draw_bars(&mut canvas, area, scale, title, y_label, bars),
        }
    }
    write_png(path, &canvas)
}

fn write_png(path: &Path, canvas: &Canvas) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| -> std::io::Result<()> {
        let mut out = BufWriter::new(File::create(&tmp)?);
        let mut encoder = png::Encoder::new(&mut out, canvas.w as u32, canvas.h as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&canvas.px)?;
        writer.finish()?;
        out.flush()?;
        // Data on disk before the rename, so a crash cannot leave an empty file at `path`.
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ModelError::io(tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}

// ---------------------------------------------------------------------------------------------
// Panels

type Rgb = [u8; 3];

const BACKGROUND: Rgb = [255, 255, 255];
const INK: Rgb = [34, 34, 34];
const AXIS: Rgb = [85, 85, 85];
const GRID: Rgb = [229, 229, 229];
const MUTED: Rgb = [130, 130, 130];
const LEGEND_BORDER: Rgb = [200, 200, 200];

/// Tableau 10: distinguishable, and series `i` gets the same colour in every panel, so a model
/// keeps its colour from a loss curve to a metric bar when the caller keeps the order.
const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

fn colour(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// Finite and far enough from the f64 limits that spans and padding cannot overflow.
fn usable(v: f64) -> bool {
    v.is_finite() && v.abs() < 1e300
}

/// Font metrics at one scale, and the spacing derived from them.
#[derive(Clone, Copy)]
struct Type {
    scale: i32,
    /// Glyph height in pixels.
    ch: i32,
    pad: i32,
}

impl Type {
    fn new(scale: i32) -> Type {
        Type {
            scale,
            ch: GLYPH_H * scale,
            pad: 4 * scale,
        }
    }
}

/// Draws the centred title and returns the y below it.
fn draw_title(c: &mut Canvas, area: Rect, t: Type, title: &str) -> i32 {
    let text = sanitize(title);
    if text.is_empty() {
        return area.y + t.pad;
    }
    let text = fit_chars(&text, area.w - 2 * t.pad, t.scale);
    let x = area.x + (area.w - text_width(&text, t.scale)) / 2;
    // Bold by overprinting one pixel to the right, to set the title apart from the labels;
    // at scale 1 that would close the gaps inside the glyphs.
    c.text(x, area.y + 2 * t.pad, &text, t.scale, INK);
    if t.scale > 1 {
        c.text(x + 1, area.y + 2 * t.pad, &text, t.scale, INK);
    }
    area.y + 3 * t.pad + t.ch
}

/// Horizontal grid lines, ticks and right-aligned labels of a y axis.
fn draw_y_axis(c: &mut Canvas, plot: Rect, t: Type, axis: &Ticks, labels: &[Vec<u8>]) {
    for (v, label) in axis.values.iter().zip(labels) {
        let y = axis.to_px(*v, plot.bottom() - 1, plot.y).round() as i32;
        c.fill(Rect::new(plot.x, y, plot.w, 1), GRID);
        c.fill(Rect::new(plot.x - 2 * t.scale, y, 2 * t.scale, 1), AXIS);
        let x = plot.x - 3 * t.scale - t.pad - text_width(label, t.scale);
        c.text(x, y - t.ch / 2, label, t.scale, INK);
    }
}

fn draw_y_label(c: &mut Canvas, area: Rect, plot: Rect, t: Type, label: &[u8]) {
    let label = fit_chars(label, plot.h, t.scale);
    let y = plot.y + (plot.h + text_width(&label, t.scale)) / 2;
    c.text_up(area.x + t.pad, y, &label, t.scale, INK);
}

/// Width of the y axis column: optional rotated label, tick labels, tick marks.
fn y_axis_width(t: Type, y_label: &[u8], labels: &[Vec<u8>]) -> i32 {
    let widest = labels
        .iter()
        .map(|l| text_width(l, t.scale))
        .max()
        .unwrap_or(0);
    let rotated = if y_label.is_empty() { 0 } else { t.ch + t.pad };
    t.pad + rotated + widest + t.pad + 3 * t.scale
}

/// Where the parts of a line panel go, for a given top of the plot.
struct LineLayout {
    plot: Rect,
    x_axis: Ticks,
    x_labels: Vec<Vec<u8>>,
    y_axis: Ticks,
    y_labels: Vec<Vec<u8>>,
}

impl LineLayout {
    /// None when the panel is too small to hold a plot.
    fn new(
        area: Rect,
        t: Type,
        top: i32,
        has_x_label: bool,
        y_label: &[u8],
        (xlo, xhi): (f64, f64),
        (ylo, yhi): (f64, f64),
    ) -> Option<LineLayout> {
        let x_label_h = if has_x_label { t.ch + t.pad } else { 0 };
        let bottom = area.bottom() - (2 * t.pad + t.ch + x_label_h + t.pad);
        let plot_h = bottom - top;
        let y_target = (plot_h / (3 * t.ch)).clamp(2, 6) as usize;
        let y_axis = Ticks::new(ylo, yhi, y_target);
        let y_labels = y_axis.labels();
        let left = area.x + y_axis_width(t, y_label, &y_labels);
        // Room on the right for half of the last x label, which is centred on its tick.
        let last_w = Ticks::new(xlo, xhi, 6)
            .labels()
            .last()
            .map_or(0, |l| text_width(l, t.scale));
        let right = area.right() - (2 * t.pad).max(last_w / 2 + t.pad);
        let plot = Rect::new(left, top, right - left, plot_h);
        if plot.w < 8 || plot.h < 8 {
            return None;
        }
        // As many x ticks as fit without their labels touching.
        let mut target = 6;
        loop {
            let x_axis = Ticks::new(xlo, xhi, target);
            let x_labels = x_axis.labels();
            let widest = x_labels
                .iter()
                .map(|l| text_width(l, t.scale))
                .max()
                .unwrap_or(0);
            let spacing = f64::from(plot.w) * x_axis.step / (xhi - xlo);
            if target <= 2 || f64::from(widest + 3 * t.pad) <= spacing {
                return Some(LineLayout {
                    plot,
                    x_axis,
                    x_labels,
                    y_axis,
                    y_labels,
                });
            }
            target -= 1;
        }
    }

    fn to_px(&self, p: &(f64, f64)) -> (f64, f64) {
        let plot = self.plot;
        (
            self.x_axis.to_px(p.0, plot.x, plot.right() - 1),
            self.y_axis.to_px(p.1, plot.bottom() - 1, plot.y),
        )
    }

    /// Each series as anti-aliased coverage, one mask per series so that a line's overlapping
    /// segments do not darken its joints; the masks also tell where the legend can go.
    fn series_masks(&self, t: Type, series: &[Series]) -> Vec<Coverage> {
        let ok = |p: &(f64, f64)| usable(p.0) && usable(p.1);
        let half_width = 0.5 + 0.5 * f64::from(t.scale);
        series
            .iter()
            .map(|s| {
                let mut mask = Coverage::new(self.plot);
                // Few points: mark each, they are the data. Many: the line alone reads better.
                let mark_all = s.points.iter().filter(|p| ok(p)).count() <= 40;
                for (j, p) in s.points.iter().enumerate() {
                    if !ok(p) {
                        continue;
                    }
                    let a = self.to_px(p);
                    let next = s.points.get(j + 1).filter(|q| ok(q));
                    if let Some(q) = next {
                        mask.segment(a, self.to_px(q), half_width);
                    }
                    let isolated = next.is_none() && (j == 0 || !ok(&s.points[j - 1]));
                    if mark_all || isolated {
                        mask.disk(a, 1.5 + f64::from(t.scale));
                    }
                }
                mask
            })
            .collect()
    }
}

/// One legend entry, placed relative to the legend's origin; no colour for "+k more".
struct LegendItem {
    dx: i32,
    dy: i32,
    colour: Option<Rgb>,
    text: Vec<u8>,
}

fn swatch_width(t: Type) -> i32 {
    14 * t.scale
}

fn item_width(t: Type, item: &LegendItem) -> i32 {
    let swatch = if item.colour.is_some() {
        swatch_width(t) + t.pad
    } else {
        0
    };
    swatch + text_width(&item.text, t.scale)
}

/// Legend entries flowed into rows at most `max_w` wide; past `max_rows` rows the last row
/// ends with how many entries are not shown. Returns the items and the number of rows.
fn flow_legend(names: &[Vec<u8>], t: Type, max_w: i32, max_rows: usize) -> (Vec<LegendItem>, i32) {
    let row_h = t.ch + t.pad;
    let gap = 3 * t.pad;
    let max_name = max_w - swatch_width(t) - t.pad;
    let mut items: Vec<LegendItem> = Vec::new();
    let (mut x, mut row) = (0, 0);
    for (i, name) in names.iter().enumerate() {
        let mut item = LegendItem {
            dx: 0,
            dy: 0,
            colour: Some(colour(i)),
            text: fit_chars(name, max_name, t.scale),
        };
        let w = item_width(t, &item);
        if x > 0 && x + gap + w > max_w {
            row += 1;
            x = 0;
        }
        if row == max_rows {
            // Drop entries from the end until the summary fits after the last one kept.
            loop {
                let mut more = LegendItem {
                    dx: 0,
                    dy: 0,
                    colour: None,
                    text: format!("+{} more", names.len() - items.len()).into_bytes(),
                };
                let Some(last) = items.last() else {
                    items.push(more);
                    return (items, 1);
                };
                let mx = last.dx + item_width(t, last) + gap;
                if mx + item_width(t, &more) <= max_w {
                    more.dx = mx;
                    more.dy = last.dy;
                    items.push(more);
                    return (items, max_rows as i32);
                }
                items.pop();
            }
        }
        item.dx = if x > 0 { x + gap } else { 0 };
        item.dy = row as i32 * row_h;
        x = item.dx + w;
        items.push(item);
    }
    (items, row as i32 + 1)
}

fn draw_legend_items(c: &mut Canvas, x: i32, y: i32, t: Type, items: &[LegendItem]) {
    for item in items {
        let (ix, iy) = (x + item.dx, y + item.dy);
        let mut tx = ix;
        if let Some(col) = item.colour {
            let h = t.scale.max(2) + t.scale / 2;
            c.fill(Rect::new(ix, iy + (t.ch - h) / 2, swatch_width(t), h), col);
            tx += swatch_width(t) + t.pad;
        }
        c.text(tx, iy, &item.text, t.scale, INK);
    }
}

/// A legend box in a corner of the plot where it covers no data, if there is one.
fn legend_inside(plot: Rect, t: Type, names: &[Vec<u8>], masks: &[Coverage]) -> Option<Rect> {
    let rows = names.len() as i32;
    let max_w = (plot.w * 3 / 5).max(0);
    let widest = names
        .iter()
        .map(|n| swatch_width(t) + t.pad + text_width(&fit_chars(n, max_w, t.scale), t.scale))
        .max()?;
    let (w, h) = (widest + 2 * t.pad, rows * (t.ch + t.pad) + t.pad);
    let m = t.pad;
    if w + 2 * m > plot.w || h + 2 * m > plot.h {
        return None;
    }
    let corners = [
        Rect::new(plot.right() - w - m, plot.y + m, w, h),
        Rect::new(plot.x + m, plot.y + m, w, h),
        Rect::new(plot.right() - w - m, plot.bottom() - h - m, w, h),
        Rect::new(plot.x + m, plot.bottom() - h - m, w, h),
    ];
    let touches_data = |r: &Rect| {
        // A margin around the box, so that a line does not graze its border either.
        let r = Rect::new(r.x - 2, r.y - 2, r.w + 4, r.h + 4).intersect(plot);
        masks
            .iter()
            .any(|mask| (r.y..r.bottom()).any(|y| (r.x..r.right()).any(|x| mask.at(x, y) > 0.0)))
    };
    corners.into_iter().find(|r| !touches_data(r))
}

fn draw_lines(
    c: &mut Canvas,
    area: Rect,
    scale: i32,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) {
    let t = Type::new(scale);
    let (x_label, y_label) = (sanitize(x_label), sanitize(y_label));
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| usable(p.0) && usable(p.1))
    };
    let xr = padded(range(finite().map(|p| p.0)), 0.03);
    let yr = padded(range(finite().map(|p| p.1)), 0.06);
    let has_data = finite().next().is_some();
    let names: Vec<Vec<u8>> = series.iter().map(|s| sanitize(&s.name)).collect();
    let has_legend = has_data && names.iter().any(|n| !n.is_empty());

    let below_title = draw_title(c, area, t, title);
    // The top y tick label is centred on the frame and sticks out by half a line.
    let top = below_title + t.ch / 2;
    let layout = |top| LineLayout::new(area, t, top, !x_label.is_empty(), &y_label, xr, yr);
    let Some(mut l) = layout(top) else {
        return;
    };
    let mut masks = l.series_masks(t, series);
    let mut inside = None;
    let mut above = Vec::new();
    if has_legend {
        inside = legend_inside(l.plot, t, &names, &masks);
        if inside.is_none() {
            // Every corner has data: the legend goes between title and plot.
            let (items, rows) = flow_legend(&names, t, area.w - 4 * t.pad, 3);
            let Some(lower) = layout(top + t.pad + rows * (t.ch + t.pad)) else {
                return;
            };
            l = lower;
            masks = l.series_masks(t, series);
            above = items;
        }
    }
    let plot = l.plot;

    c.fill(plot, BACKGROUND);
    draw_y_axis(c, plot, t, &l.y_axis, &l.y_labels);
    for (v, label) in l.x_axis.values.iter().zip(&l.x_labels) {
        let x = l.x_axis.to_px(*v, plot.x, plot.right() - 1).round() as i32;
        c.fill(Rect::new(x, plot.y, 1, plot.h), GRID);
        c.fill(Rect::new(x, plot.bottom(), 1, 2 * t.scale), AXIS);
        let lx = x - text_width(label, t.scale) / 2;
        c.text(lx, plot.bottom() + 2 * t.scale + t.pad, label, t.scale, INK);
    }
    if !x_label.is_empty() {
        let label = fit_chars(&x_label, plot.w, t.scale);
        let x = plot.x + (plot.w - text_width(&label, t.scale)) / 2;
        let y = plot.bottom() + 2 * t.scale + 2 * t.pad + t.ch;
        c.text(x, y, &label, t.scale, INK);
    }
    if !y_label.is_empty() {
        draw_y_label(c, area, plot, t, &y_label);
    }
    for (i, mask) in masks.iter().enumerate() {
        mask.paint(c, colour(i));
    }
    if !has_data {
        let text = sanitize("no data");
        let x = plot.x + (plot.w - text_width(&text, t.scale)) / 2;
        c.text(x, plot.y + (plot.h - t.ch) / 2, &text, t.scale, MUTED);
    }
    if let Some(r) = inside {
        let items: Vec<LegendItem> = names
            .iter()
            .enumerate()
            .map(|(i, n)| LegendItem {
                dx: 0,
                dy: i as i32 * (t.ch + t.pad),
                colour: Some(colour(i)),
                text: fit_chars(n, (plot.w * 3 / 5).max(0), t.scale),
            })
            .collect();
        c.fill(r, BACKGROUND);
        c.outline(r, LEGEND_BORDER);
        draw_legend_items(c, r.x + t.pad, r.y + t.pad, t, &items);
    } else if !above.is_empty() {
        let width = above
            .iter()
            .map(|it| it.dx + item_width(t, it))
            .max()
            .unwrap_or(0);
        let x = area.x + (area.w - width) / 2;
        draw_legend_items(c, x.max(area.x + t.pad), below_title + t.pad, t, &above);
    }
    c.fill(Rect::new(plot.x - 1, plot.y, 1, plot.h + 1), AXIS);
    c.fill(Rect::new(plot.x - 1, plot.bottom(), plot.w + 1, 1), AXIS);
}

/// The y range of a bar panel. Bars start at zero when zero is near the data; when the values
/// sit far from it (AUCs between 0.6 and 0.8) the axis starts close to them instead, or every
/// bar would look the same height.
fn bar_range(bars: &[Bar]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for b in bars.iter().filter(|b| usable(b.value)) {
        let e = b.err.filter(|e| usable(*e)).map_or(0.0, f64::abs);
        lo = lo.min(b.value - e);
        hi = hi.max(b.value + e);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 1e-12 * hi.abs().max(lo.abs()) {
        let d = if hi == 0.0 { 1.0 } else { 0.1 * hi.abs() };
        return (lo - d, hi + d);
    }
    if lo >= 0.0 && lo <= 0.5 * hi {
        return (0.0, hi * 1.12);
    }
    if hi <= 0.0 && hi >= 0.5 * lo {
        return (lo * 1.12, 0.0);
    }
    if lo < 0.0 && hi > 0.0 {
        return (lo - 0.12 * span, hi + 0.12 * span);
    }
    (lo - 0.35 * span, hi + 0.2 * span)
}

fn draw_bars(c: &mut Canvas, area: Rect, scale: i32, title: &str, y_label: &str, bars: &[Bar]) {
    let t = Type::new(scale);
    let y_label = sanitize(y_label);
    let top = draw_title(c, area, t, title) + t.ch / 2;
    let n = bars.len().max(1) as i32;

    // Bar labels need the slot width, which needs the y axis width, which needs the plot
    // height, which needs the label lines: the y axis is sized for 2 label lines first.
    let (lo, hi) = bar_range(bars);
    let guess_h = area.bottom() - top - 2 * (t.ch + t.scale) - 3 * t.pad;
    let y_target = (guess_h / (3 * t.ch)).clamp(2, 6) as usize;
    let mut y_axis = Ticks::new(lo, hi, y_target);
    // Start at a tick, so the lowest gridline is the axis.
    if lo != 0.0 && hi != 0.0 {
        let snapped = (lo / y_axis.step).floor() * y_axis.step;
        let snapped = if lo >= 0.0 { snapped.max(0.0) } else { snapped };
        y_axis = Ticks::new(snapped, hi, y_target);
    }
    let y_labels = y_axis.labels();
    let left = area.x + y_axis_width(t, &y_label, &y_labels);
    let right = area.right() - 2 * t.pad;
    let slot = f64::from(right - left) / f64::from(n);
    let labels: Vec<Vec<u8>> = bars.iter().map(|b| sanitize(&b.label)).collect();
    let (label_scale, label_lines) = layout_labels(&labels, slot as i32 - 2 * t.scale, t.scale);
    let lines = label_lines.iter().map(Vec::len).max().unwrap_or(0) as i32;
    let line_h = GLYPH_H * label_scale + 2 * label_scale;
    let bottom = area.bottom() - (2 * t.pad + lines * line_h + t.pad);
    let plot = Rect::new(left, top, right - left, bottom - top);
    if plot.w < 8 || plot.h < 8 {
        return;
    }

    c.fill(plot, BACKGROUND);
    draw_y_axis(c, plot, t, &y_axis, &y_labels);
    if !y_label.is_empty() {
        draw_y_label(c, area, plot, t, &y_label);
    }
    let to_y = |v: f64| y_axis.to_px(v, plot.bottom() - 1, plot.y);
    let baseline = to_y(0f64.clamp(y_axis.lo, y_axis.hi)).round() as i32;
    let decimals = value_decimals(bars, &y_axis);
    let bar_w = ((slot * 0.62) as i32).clamp(1, 70 * t.scale);
    for (i, bar) in bars.iter().enumerate() {
        let cx = plot.x + (slot * (i as f64 + 0.5)) as i32;
        for (k, line) in label_lines[i].iter().enumerate() {
            let x = cx - text_width(line, label_scale) / 2;
            let y = plot.bottom() + 2 * t.scale + t.pad + k as i32 * line_h;
            c.text(x, y, line, label_scale, INK);
        }
        let value_text = if usable(bar.value) {
            format!("{:.*}", decimals, bar.value)
        } else {
            "n/a".to_string()
        };
        let mut tip = baseline;
        let saved_clip = c.clip;
        c.clip = c.clip.intersect(plot);
        if usable(bar.value) {
            let y = to_y(bar.value).round() as i32;
            let (y0, y1) = (y.min(baseline), y.max(baseline));
            c.fill(
                Rect::new(cx - bar_w / 2, y0, bar_w, (y1 - y0).max(1)),
                colour(i),
            );
            tip = y;
            if let Some(e) = bar.err.filter(|e| usable(*e) && *e != 0.0).map(f64::abs) {
                let ya = to_y(bar.value + e).round() as i32;
                let yb = to_y(bar.value - e).round() as i32;
                let cap = (bar_w / 3).max(3);
                let thick = t.scale;
                c.fill(Rect::new(cx - thick / 2, ya, thick, yb - ya + 1), INK);
                c.fill(Rect::new(cx - cap / 2, ya, cap, thick), INK);
                c.fill(Rect::new(cx - cap / 2, yb - thick + 1, cap, thick), INK);
                tip = if bar.value >= 0.0 { ya } else { yb };
            }
        }
        c.clip = saved_clip;
        // The value sits beyond the bar's end: above it, or below a negative one.
        let text = sanitize(&value_text);
        let vs = if text_width(&text, t.scale) <= slot as i32 - 2 * t.scale {
            t.scale
        } else {
            1
        };
        let vh = GLYPH_H * vs;
        let x = cx - text_width(&text, vs) / 2;
        let y = if usable(bar.value) && bar.value < 0.0 {
            (tip + t.pad).min(plot.bottom() - vh - 1)
        } else {
            (tip - t.pad - vh).max(plot.y + 1)
        };
        c.text(x, y, &text, vs, INK);
    }
    if bars.is_empty() {
        let text = sanitize("no data");
        let x = plot.x + (plot.w - text_width(&text, t.scale)) / 2;
        c.text(x, plot.y + (plot.h - t.ch) / 2, &text, t.scale, MUTED);
    }
    c.fill(Rect::new(plot.x - 1, plot.y, 1, plot.h + 1), AXIS);
    c.fill(Rect::new(plot.x - 1, baseline, plot.w + 1, 1), AXIS);
    if y_axis.lo > 0.0 || y_axis.hi < 0.0 {
        draw_axis_break(c, plot, t, y_axis.lo > 0.0);
    }
}

/// Two slashes across the y axis: the reader must see that the bars do not start at zero.
fn draw_axis_break(c: &mut Canvas, plot: Rect, t: Type, at_bottom: bool) {
    let s = f64::from(t.scale);
    let x = f64::from(plot.x - 1);
    let y = if at_bottom {
        f64::from(plot.bottom()) - 6.0 * s
    } else {
        f64::from(plot.y) + 6.0 * s
    };
    let area = Rect::new(plot.x - 6 * t.scale, plot.y, 12 * t.scale, plot.h);
    let gap = Rect::new(
        plot.x - 4 * t.scale,
        y as i32 - t.scale,
        7 * t.scale,
        2 * t.scale + 1,
    );
    c.fill(gap.intersect(c.clip), BACKGROUND);
    let mut mask = Coverage::new(area);
    for dy in [-1.5 * s, 1.5 * s] {
        mask.segment(
            (x - 3.0 * s, y + dy + 1.5 * s),
            (x + 3.0 * s, y + dy - 1.5 * s),
            0.6,
        );
    }
    mask.paint(c, AXIS);
}

/// Decimals for the printed bar values: two more than the tick labels show, so that values
/// close enough to share a tick still read as different; none for whole numbers.
fn value_decimals(bars: &[Bar], axis: &Ticks) -> usize {
    let whole = bars
        .iter()
        .filter(|b| usable(b.value))
        .all(|b| b.value.fract() == 0.0 && b.value.abs() < 1e15);
    if whole {
        0
    } else {
        (decimals(axis.step) + 2).min(6)
    }
}

/// Bar labels as lines: one line at the panel's scale if all fit, else two lines, else the
/// smallest scale, wrapped and truncated. One scale for every bar keeps the row even.
fn layout_labels(labels: &[Vec<u8>], max_w: i32, scale: i32) -> (i32, Vec<Vec<Vec<u8>>>) {
    let fits = |l: &[u8], s: i32| text_width(l, s) <= max_w;
    if labels.iter().all(|l| fits(l, scale)) {
        return (scale, labels.iter().map(|l| vec![l.clone()]).collect());
    }
    let wrapped =
        |s: i32| -> Vec<Vec<Vec<u8>>> { labels.iter().map(|l| wrap2(l, max_w, s)).collect() };
    let at_scale = wrapped(scale);
    let lossless = at_scale
        .iter()
        .zip(labels)
        .all(|(lines, l)| lines.iter().map(Vec::len).sum::<usize>() == l.len());
    if lossless || scale == 1 {
        return (scale, at_scale);
    }
    (1, wrapped(1))
}

/// At most two lines of at most `max_w` pixels, broken after a separator when one fits,
/// the second line cut with ".." when the label is longer still.
fn wrap2(label: &[u8], max_w: i32, scale: i32) -> Vec<Vec<u8>> {
    let max_chars = ((max_w + scale) / (ADVANCE * scale)).max(0) as usize;
    if max_chars == 0 {
        return Vec::new();
    }
    if label.len() <= max_chars {
        return vec![label.to_vec()];
    }
    let split = (1..=max_chars)
        .rev()
        .find(|&k| b" _-/.,:".contains(&label[k - 1]) && label.len() - k <= max_chars)
        .or_else(|| {
            (1..=max_chars)
                .rev()
                .find(|&k| b" _-/.,:".contains(&label[k - 1]))
        })
        .unwrap_or(max_chars);
    let first = label[..split].to_vec();
    let rest = &label[split..];
    let second = if rest.len() <= max_chars {
        rest.to_vec()
    } else {
        let mut s = rest[..max_chars.saturating_sub(2)].to_vec();
        s.extend_from_slice(&b".."[..max_chars.min(2)]);
        s
    };
    vec![first, second]
}

/// Cuts text to `max_w` pixels, marking the cut with "..".
fn fit_chars(text: &[u8], max_w: i32, scale: i32) -> Vec<u8> {
    if text_width(text, scale) <= max_w {
        return text.to_vec();
    }
    let max_chars = ((max_w + scale) / (ADVANCE * scale)).max(0) as usize;
    if max_chars < 3 {
        return text[..max_chars.min(text.len())].to_vec();
    }
    let mut out = text[..max_chars - 2].to_vec();
    out.extend_from_slice(b"..");
    out
}

// ---------------------------------------------------------------------------------------------
// Axes

/// The (lo, hi) of the finite values, None if there are none.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Widens a data range by `frac` on each side so that points do not sit on the frame; a
/// single value or a constant series gets ±10% (or ±1 around zero) instead of an empty axis.
fn padded(r: Option<(f64, f64)>, frac: f64) -> (f64, f64) {
    let Some((lo, hi)) = r else {
        return (0.0, 1.0);
    };
    let span = hi - lo;
    if span <= 1e-12 * lo.abs().max(hi.abs()) {
        let mid = lo + span / 2.0;
        let d = if mid == 0.0 { 1.0 } else { 0.1 * mid.abs() };
        return (mid - d, mid + d);
    }
    (lo - frac * span, hi + frac * span)
}

/// An axis: its data range and tick values at a 1, 2, 2.5 or 5 times a power of ten step.
#[derive(Debug)]
struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
    values: Vec<f64>,
}

impl Ticks {
    /// Requires lo < hi, both usable.
    fn new(lo: f64, hi: f64, target: usize) -> Ticks {
        let step = nice_step((hi - lo) / (target.max(2) - 1) as f64);
        // The tolerance keeps a tick exactly at `lo` that division put a hair above it.
        let first = (lo / step - 1e-9).ceil();
        let values = (0..=4 * target)
            .map(|k| (first + k as f64) * step)
            .take_while(|v| *v <= hi + step * 1e-9)
            .collect();
        Ticks {
            lo,
            hi,
            step,
            values,
        }
    }

    /// Maps `v` linearly so that `lo` lands on pixel `at_lo` and `hi` on `at_hi`.
    fn to_px(&self, v: f64, at_lo: i32, at_hi: i32) -> f64 {
        let f = (v - self.lo) / (self.hi - self.lo);
        f64::from(at_lo) + f * f64::from(at_hi - at_lo)
    }

    fn labels(&self) -> Vec<Vec<u8>> {
        let biggest = self.lo.abs().max(self.hi.abs());
        // (divisor, shown from, suffix): a suffix only when the scaled step needs at most two
        // decimals, so that 10000.5 is not shown as "10.0005k".
        let (div, suffix) = [
            (1e12, 1e12, "T"),
            (1e9, 1e9, "G"),
            (1e6, 1e6, "M"),
            (1e3, 1e4, "k"),
        ]
        .into_iter()
        .find(|&(div, from, _)| biggest >= from && self.step >= div / 100.0)
        .map_or((1.0, ""), |(div, _, suffix)| (div, suffix));
        let dec = decimals(self.step / div);
        self.values
            .iter()
            .map(|&v| {
                if v.abs() < self.step * 1e-6 {
                    // Also keeps "-0.0" away.
                    if suffix.is_empty() {
                        format!("{:.*}", dec, 0.0).into_bytes()
                    } else {
                        b"0".to_vec()
                    }
                } else {
                    format!("{:.*}{}", dec, v / div, suffix).into_bytes()
                }
            })
            .collect()
    }
}

fn nice_step(raw: f64) -> f64 {
    // powi of an integer exponent: exact for the powers that matter, unlike powf.
    let mag = 10f64.powi(raw.log10().floor() as i32);
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The fewest decimals that print multiples of `step` exactly.
fn decimals(step: f64) -> usize {
    (0..=10)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(10)
}

// ---------------------------------------------------------------------------------------------
// Pixels

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x: i32,
    y: i32,
    w: i32,
    h: i32,
}

impl Rect {
    fn new(x: i32, y: i32, w: i32, h: i32) -> Rect {
        Rect { x, y, w, h }
    }

    fn right(&self) -> i32 {
        self.x + self.w
    }

    fn bottom(&self) -> i32 {
        self.y + self.h
    }

    fn intersect(&self, o: Rect) -> Rect {
        let x = self.x.max(o.x);
        let y = self.y.max(o.y);
        let r = self.right().min(o.right());
        let b = self.bottom().min(o.bottom());
        Rect::new(x, y, (r - x).max(0), (b - y).max(0))
    }

    fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x && x < self.right() && y >= self.y && y < self.bottom()
    }
}

/// An RGB buffer where every write is clipped to `clip`, so layout arithmetic may go out of
/// bounds on tiny panels without panicking or drawing into a neighbour.
struct Canvas {
    w: i32,
    h: i32,
    px: Vec<u8>,
    clip: Rect,
}

impl Canvas {
    fn new(w: i32, h: i32) -> Canvas {
        Canvas {
            w,
            h,
            px: BACKGROUND.repeat((w * h) as usize),
            clip: Rect::new(0, 0, w, h),
        }
    }

    fn blend(&mut self, x: i32, y: i32, c: Rgb, alpha: f32) {
        if !self.clip.contains(x, y) || !(0..self.w).contains(&x) || !(0..self.h).contains(&y) {
            return;
        }
        let i = 3 * (y * self.w + x) as usize;
        for (k, &v) in c.iter().enumerate() {
            let old = f32::from(self.px[i + k]);
            self.px[i + k] = (old + (f32::from(v) - old) * alpha).round() as u8;
        }
    }

    fn fill(&mut self, r: Rect, c: Rgb) {
        let r = r
            .intersect(self.clip)
            .intersect(Rect::new(0, 0, self.w, self.h));
        for y in r.y..r.bottom() {
            let start = 3 * (y * self.w + r.x) as usize;
            for p in self.px[start..start + 3 * r.w as usize].chunks_exact_mut(3) {
                p.copy_from_slice(&c);
            }
        }
    }

    fn outline(&mut self, r: Rect, c: Rgb) {
        self.fill(Rect::new(r.x, r.y, r.w, 1), c);
        self.fill(Rect::new(r.x, r.bottom() - 1, r.w, 1), c);
        self.fill(Rect::new(r.x, r.y, 1, r.h), c);
        self.fill(Rect::new(r.right() - 1, r.y, 1, r.h), c);
    }

    /// `text` with its top left corner at (x, y), each font pixel a `scale` square.
    fn text(&mut self, x: i32, y: i32, text: &[u8], scale: i32, c: Rgb) {
        for (i, &b) in text.iter().enumerate() {
            let gx = x + i as i32 * ADVANCE * scale;
            for (col, bits) in glyph(b).iter().enumerate() {
                for row in 0..GLYPH_ROWS {
                    if bits >> row & 1 == 1 {
                        let px = gx + col as i32 * scale;
                        self.fill(Rect::new(px, y + row * scale, scale, scale), c);
                    }
                }
            }
        }
    }

    /// `text` turned a quarter counter-clockwise, read bottom to top from (x, y_bottom); the
    /// glyphs' tops face left.
    fn text_up(&mut self, x: i32, y_bottom: i32, text: &[u8], scale: i32, c: Rgb) {
        for (i, &b) in text.iter().enumerate() {
            let gy = y_bottom - i as i32 * ADVANCE * scale;
            for (col, bits) in glyph(b).iter().enumerate() {
                for row in 0..GLYPH_ROWS {
                    if bits >> row & 1 == 1 {
                        let py = gy - (col as i32 + 1) * scale;
                        self.fill(Rect::new(x + row * scale, py, scale, scale), c);
                    }
                }
            }
        }
    }
}

/// Anti-aliased shapes are accumulated here as per-pixel coverage (max, not sum) and painted
/// once, so that where a line's segments overlap at a joint it is not drawn darker.
struct Coverage {
    r: Rect,
    a: Vec<f32>,
}

impl Coverage {
    fn new(r: Rect) -> Coverage {
        Coverage {
            r,
            a: vec![0.0; (r.w.max(0) * r.h.max(0)) as usize],
        }
    }

    fn at(&self, x: i32, y: i32) -> f32 {
        if self.r.contains(x, y) {
            self.a[((y - self.r.y) * self.r.w + (x - self.r.x)) as usize]
        } else {
            0.0
        }
    }

    fn add(&mut self, x: i32, y: i32, a: f32) {
        if self.r.contains(x, y) {
            let i = ((y - self.r.y) * self.r.w + (x - self.r.x)) as usize;
            self.a[i] = self.a[i].max(a);
        }
    }

    /// A segment with round ends, `half_width` pixels either side of the centre line. Pixel
    /// centres are at integer coordinates; coverage falls off over one pixel at the edge.
    fn segment(&mut self, p0: (f64, f64), p1: (f64, f64), half_width: f64) {
        let (dx, dy) = (p1.0 - p0.0, p1.1 - p0.1);
        let len2 = dx * dx + dy * dy;
        let reach = half_width + 1.0;
        let steep = dy.abs() > dx.abs();
        // Walk the major axis; on each step only a short run across the line can be covered.
        let (u0, v0, u1, v1) = if steep {
            (p0.1, p0.0, p1.1, p1.0)
        } else {
            (p0.0, p0.1, p1.0, p1.1)
        };
        let slope = if u1 != u0 { (v1 - v0) / (u1 - u0) } else { 0.0 };
        let across = reach * (1.0 + slope * slope).sqrt();
        let (ua, ub) = (u0.min(u1), u0.max(u1));
        let (u_min, u_max, v_min, v_max) = if steep {
            (self.r.y, self.r.bottom(), self.r.x, self.r.right())
        } else {
            (self.r.x, self.r.right(), self.r.y, self.r.bottom())
        };
        let u_start = ((ua - reach).floor() as i32).max(u_min);
        let u_end = ((ub + reach).ceil() as i32).min(u_max - 1);
        for u in u_start..=u_end {
            let vc = v0 + (f64::from(u).clamp(ua, ub) - u0) * slope;
            let v_start = ((vc - across).floor() as i32).max(v_min);
            let v_end = ((vc + across).ceil() as i32).min(v_max - 1);
            for v in v_start..=v_end {
                let (x, y) = if steep { (v, u) } else { (u, v) };
                let (px, py) = (f64::from(x), f64::from(y));
                let t = if len2 > 0.0 {
                    (((px - p0.0) * dx + (py - p0.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let d = (px - p0.0 - t * dx).hypot(py - p0.1 - t * dy);
                let a = (half_width + 0.5 - d).clamp(0.0, 1.0);
                if a > 0.0 {
                    self.add(x, y, a as f32);
                }
            }
        }
    }

    fn disk(&mut self, c: (f64, f64), radius: f64) {
        self.segment(c, c, radius);
    }

    fn paint(&self, canvas: &mut Canvas, c: Rgb) {
        for y in 0..self.r.h {
            for x in 0..self.r.w {
                let a = self.a[(y * self.r.w + x) as usize];
                if a > 0.0 {
                    canvas.blend(self.r.x + x, self.r.y + y, c, a);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Font

/// Height of capitals and digits, what layout works with; descenders hang one row below it,
/// into the padding under a line.
const GLYPH_H: i32 = 7;
/// Rows a glyph may use, counting the descender row.
const GLYPH_ROWS: i32 = 8;
/// Glyph width 5 plus one pixel of spacing.
const ADVANCE: i32 = 6;

/// Printable ASCII only; anything else would need glyphs this font does not have.
fn sanitize(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| {
            if (' '..='~').contains(&c) {
                c as u8
            } else {
                b'?'
            }
        })
        .collect()
}

fn text_width(text: &[u8], scale: i32) -> i32 {
    if text.is_empty() {
        0
    } else {
        text.len() as i32 * ADVANCE * scale - scale
    }
}

fn glyph(b: u8) -> &'static [u8; 5] {
    let b = if (b' '..=b'~').contains(&b) { b } else { b'?' };
    &FONT[usize::from(b - b' ')]
}

/// The classic 5x7 LCD font, ASCII 0x20..=0x7E: five columns per glyph, bit 0 the top row;
/// g, j, p, q and y redrawn with a descender in bit 7, the parentheses rounded and V pointed,
/// as the originals read like capitals, angle brackets and U.
#[rustfmt::skip]
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x05, 0x03, 0x00, 0x00], // '
    [0x00, 0x00, 0x3E, 0x41, 0x00], // (
    [0x00, 0x41, 0x3E, 0x00, 0x00], // )
    [0x08, 0x2A, 0x1C, 0x2A, 0x08], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x09, 0x01], // F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x07, 0x18, 0x60, 0x18, 0x07], // V
    [0x3F, 0x40, 0x38, 0x40, 0x3F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7F, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x00, 0x41, 0x41, 0x7F, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x98, 0xA4, 0xA4, 0xA4, 0x7C], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x00, 0x80, 0x80, 0x7D, 0x00], // j
    [0x7F, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0xFC, 0x24, 0x24, 0x24, 0x18], // p
    [0x18, 0x24, 0x24, 0x24, 0xFC], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x9C, 0xA0, 0xA0, 0xA0, 0x7C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
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
        px == BACKGROUND
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

        let invalid = |r: Result<()>| matches!(r, Err(ModelError::InvalidArgument(_)));
        assert!(invalid(render(&path, &[], 100, 100)));
        assert!(invalid(render(&path, &panels, 0, 100)));
        assert!(invalid(render(&path, &panels, 100, 0)));
        assert!(invalid(render(&path, &panels, 100_000, 100_000)));

        let missing = dir.path().join("no/such/dir/fig.png");
        assert!(matches!(
            render(&missing, &panels, 100, 100),
            Err(ModelError::Io { .. })
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

    #[test]
    fn ticks_are_round_numbers() {
        let t = Ticks::new(0.48, 0.82, 5);
        assert!((t.step - 0.1).abs() < 1e-15);
        assert_eq!(t.labels(), [&b"0.5"[..], b"0.6", b"0.7", b"0.8"]);
        let t = Ticks::new(-0.3, 1.1, 7);
        assert_eq!(t.step, 0.25);
        assert_eq!(t.labels()[..3], [&b"-0.25"[..], b"0.00", b"0.25"]);
        let t = Ticks::new(0.0, 120_000.0, 5);
        assert_eq!(t.labels(), [&b"0"[..], b"50k", b"100k"]);
        let t = Ticks::new(1e4, 1e4 + 2.0, 5);
        assert_eq!(t.labels()[0], b"10000.0");
        assert_eq!(padded(Some((5.0, 5.0)), 0.05), (4.5, 5.5));
        assert_eq!(padded(Some((0.0, 0.0)), 0.05), (-1.0, 1.0));
        assert_eq!(padded(None, 0.05), (0.0, 1.0));
    }

    #[test]
    fn bar_axis_starts_near_the_data_unless_zero_is_close() {
        let (lo, hi) = bar_range(&[bar("a", 0.72, None), bar("b", 0.75, Some(0.01))]);
        assert!(lo > 0.6 && lo < 0.72 && hi > 0.76, "{lo} {hi}");
        let (lo, _) = bar_range(&[bar("a", 10.0, None), bar("b", 35.0, None)]);
        assert_eq!(lo, 0.0);
        let (lo, hi) = bar_range(&[bar("a", -1.0, None), bar("b", 2.0, None)]);
        assert!(lo < -1.0 && hi > 2.0);
    }

    #[test]
    fn labels_wrap_then_shrink_then_truncate() {
        let l = |s: &str| s.as_bytes().to_vec();
        // 60 px at scale 2 is 5 characters.
        let (s, lines) = layout_labels(&[l("SIREN"), l("DIN")], 60, 2);
        assert_eq!((s, lines[0].len()), (2, 1));
        let (s, lines) = layout_labels(&[l("SIM-hard")], 60, 2);
        assert_eq!((s, &lines[0]), (2, &vec![l("SIM-"), l("hard")]));
        let (s, lines) = layout_labels(&[l("ETA_long_label_baseline")], 60, 2);
        assert_eq!(s, 1);
        assert_eq!(lines[0], [l("ETA_long_"), l("label_ba..")]);
        assert_eq!(fit_chars(b"abcdefgh", text_width(b"abcde", 1), 1), b"abc..");
    }

    #[test]
    fn font_covers_printable_ascii() {
        for b in b'!'..=b'~' {
            assert!(glyph(b).iter().any(|&c| c != 0), "{} is blank", b as char);
            let descends = glyph(b).iter().any(|&c| c >= 0x80);
            assert_eq!(descends, b"gjpqy".contains(&b), "{}", b as char);
        }
        assert_eq!(glyph(b'\n'), glyph(b'?'));
        assert_eq!(sanitize("a\u{e9}b"), b"a?b");
        assert_eq!(text_width(b"ab", 2), 22);
    }

    /// Writes sample figures to the temp directory for a person to look at:
    /// `cargo test -p siren-model plot::tests::sample_figure -- --ignored`.
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
