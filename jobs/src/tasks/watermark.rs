//! The built-in watermark: the bundled logo (or a line of text) at one of nine anchors, or tiled
//! and rotated over the whole image, at a chosen opacity and size relative to the image width.
//! With its defaults it does what the system we replace did: the logo rotated 30°, at 50 %
//! opacity, 40 % of the image width, tiled over the whole image.

use std::sync::{Arc, Mutex, OnceLock};

use ab_glyph::{FontRef, PxScale};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, Luma, Rgba, RgbaImage};

use crate::recent::Recent;

use super::{
    parse_color, Assets, ImageTask, Overlay, ParamKind, ParamSpec, Params, Prepared, TaskError,
};

const LOGO_PNG: &[u8] = include_bytes!("../../assets/logo.png");
const FONT_TTF: &[u8] = include_bytes!("../../assets/DejaVuSans-Bold.ttf");

pub const POSITIONS: &[&str] = &[
    "tiled",
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
];

static PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "text",
        label: "Text",
        help: "Text to draw instead of the logo; leave empty for the logo.",
        kind: ParamKind::Text { max_len: 100, default: "" },
    },
    ParamSpec {
        name: "logo",
        label: "Logo",
        help: "The bundled logo, or the logo file uploaded with the batch (chosen automatically when you send one).",
        kind: ParamKind::Choice {
            options: &["bundled", "uploaded"],
            default: "bundled",
        },
    },
    ParamSpec {
        name: "color",
        label: "Text colour",
        help: "Colour of the text (the logo keeps its own colours).",
        kind: ParamKind::Color { default: "#ffffff" },
    },
    ParamSpec {
        name: "position",
        label: "Position",
        help: "One of nine anchors, or tiled over the whole image.",
        kind: ParamKind::Choice {
            options: POSITIONS,
            default: "tiled",
        },
    },
    ParamSpec {
        name: "opacity",
        label: "Opacity",
        help: "0 is invisible, 1 is fully opaque.",
        kind: ParamKind::Float {
            min: 0.0,
            max: 1.0,
            default: 0.5,
            step: 0.05,
        },
    },
    ParamSpec {
        name: "scale",
        label: "Size",
        help: "Width of the mark as a fraction of the image width.",
        kind: ParamKind::Float {
            min: 0.02,
            max: 1.0,
            default: 0.4,
            step: 0.01,
        },
    },
    ParamSpec {
        name: "rotation",
        label: "Rotation (tiled)",
        help: "Degrees, counter-clockwise; applies when tiled.",
        kind: ParamKind::Float {
            min: -180.0,
            max: 180.0,
            default: 30.0,
            step: 1.0,
        },
    },
    ParamSpec {
        name: "margin",
        label: "Margin",
        help: "Space to the edges (anchors) or between tiles, as a fraction of the image's shorter side.",
        kind: ParamKind::Float {
            min: 0.0,
            max: 0.45,
            default: 0.03,
            step: 0.01,
        },
    },
];

pub struct Watermark;

impl ImageTask for Watermark {
    fn name(&self) -> &'static str {
        "watermark"
    }

    fn label(&self) -> &'static str {
        "Watermark"
    }

    fn description(&self) -> &'static str {
        "Puts the logo, or your text, on the image: at an anchor or tiled over it."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn prepare(&self, params: &Params, assets: &Assets) -> Result<Box<dyn Prepared>, TaskError> {
        Ok(Box::new(PreparedMark {
            settings: Settings::new(params, assets)?,
            overlays: Mutex::new(Recent::new(SIZES_KEPT)),
        }))
    }
}

/// How many image sizes a prepared watermark keeps its sized mark for.
const SIZES_KEPT: usize = 8;

/// The watermark made ready for a batch: the logo (or text) chosen, and the mark sized for each
/// image size met so far (most batches have one or two sizes).
struct PreparedMark {
    settings: Settings,
    /// The mark sized for each image size (width, height).
    overlays: Mutex<Recent<(u32, u32), Arc<Overlay>>>,
}

impl PreparedMark {
    fn overlay_for(&self, w: u32, h: u32) -> Result<Arc<Overlay>, TaskError> {
        let lock = || self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(overlay) = lock().get(&(w, h)) {
            return Ok(overlay);
        }
        let mark = self.settings.mark(w, h)?;
        let mut positions = Vec::new();
        self.settings
            .place(&mark, w, h, |x, y| positions.push((x, y)));
        let overlay = Arc::new(Overlay::new(mark, positions, (w, h)));
        lock().put((w, h), overlay.clone());
        Ok(overlay)
    }
}

impl Prepared for PreparedMark {
    fn apply(&self, image: DynamicImage) -> Result<DynamicImage, TaskError> {
        let overlay = self.overlay_for(image.width(), image.height())?;
        Ok(paint(image, |buf, channels| overlay.blend_rgb(buf, channels)))
    }

    fn overlay(&self, width: u32, height: u32) -> Option<Result<Arc<Overlay>, TaskError>> {
        Some(self.overlay_for(width, height))
    }
}

/// What the mark is made of.
enum Source {
    Logo(Arc<RgbaImage>),
    Text { text: String, color: [u8; 3] },
}

struct Settings {
    source: Source,
    position: String,
    opacity: f64,
    scale: f64,
    rotation: f64,
    margin: f64,
}

impl Settings {
    fn new(p: &Params, assets: &Assets) -> Result<Self, TaskError> {
        let text = p.text("text").trim();
        let source = if !text.is_empty() {
            Source::Text {
                text: text.to_owned(),
                color: parse_color(p.text("color")).unwrap_or([255, 255, 255]),
            }
        } else if p.text("logo") == "uploaded" {
            Source::Logo(
                assets
                    .logo
                    .clone()
                    .ok_or_else(|| TaskError("no logo was uploaded with this batch".into()))?,
            )
        } else {
            Source::Logo(logo())
        };
        Ok(Self {
            source,
            position: p.text("position").to_owned(),
            opacity: p.float("opacity"),
            scale: p.float("scale"),
            rotation: p.float("rotation"),
            margin: p.float("margin"),
        })
    }

    /// The mark to paint, already sized, faded and (when tiled) rotated. Its width is `scale`
    /// of the image's, but it is never taller than the image: a very wide, low image (20,000 ×
    /// 10, say) gets a mark sized by its height, not a huge one.
    fn mark(&self, w: u32, h: u32) -> Result<RgbaImage, TaskError> {
        let target_w = ((w as f64 * self.scale).round() as u32).clamp(1, w.max(1));
        let mut mark = match &self.source {
            Source::Logo(logo) => {
                let fit_w =
                    (h as f64 * logo.width() as f64 / logo.height() as f64).max(1.0) as u32;
                let target_w = target_w.min(fit_w);
                let target_h = ((logo.height() as f64 * target_w as f64 / logo.width() as f64)
                    .round() as u32)
                    .max(1);
                image::imageops::resize(logo.as_ref(), target_w, target_h, FilterType::Triangle)
            }
            Source::Text { text, color } => render_text(text, *color, target_w, h)?,
        };
        let opacity = self.opacity.clamp(0.0, 1.0);
        for px in mark.pixels_mut() {
            px.0[3] = (px.0[3] as f64 * opacity).round() as u8;
        }
        if self.position == "tiled" && self.rotation.abs() > f64::EPSILON {
            mark = rotate_expanded(&mark, self.rotation);
        }
        Ok(mark)
    }

    /// Calls `paint(x, y)` with the top-left corner of every copy of the mark.
    fn place(&self, mark: &RgbaImage, w: u32, h: u32, mut paint: impl FnMut(i64, i64)) {
        let (w, h) = (w as i64, h as i64);
        let (mw, mh) = (mark.width() as i64, mark.height() as i64);
        let margin = (self.margin * w.min(h) as f64).round() as i64;
        if self.position == "tiled" {
            let step_x = (mw + margin).max(1);
            let step_y = (mh + margin).max(1);
            let mut row = 0i64;
            let mut y = -(mh / 2);
            while y < h {
                let shift = if row % 2 == 1 { step_x / 2 } else { 0 };
                let mut x = -(mw / 2) - shift;
                while x < w {
                    paint(x, y);
                    x += step_x;
                }
                y += step_y;
                row += 1;
            }
            return;
        }
        let (col, row) = anchor(&self.position);
        let x = match col {
            0 => margin,
            1 => (w - mw) / 2,
            _ => w - mw - margin,
        };
        let y = match row {
            0 => margin,
            1 => (h - mh) / 2,
            _ => h - mh - margin,
        };
        paint(x, y);
    }
}

/// Column and row (0, 1, 2) of an anchor name.
fn anchor(position: &str) -> (u8, u8) {
    match position {
        "top-left" => (0, 0),
        "top" => (1, 0),
        "top-right" => (2, 0),
        "left" => (0, 1),
        "right" => (2, 1),
        "bottom-left" => (0, 2),
        "bottom" => (1, 2),
        "bottom-right" => (2, 2),
        _ => (1, 1),
    }
}

/// The bundled logo, decoded once per process.
fn logo() -> Arc<RgbaImage> {
    static LOGO: OnceLock<Arc<RgbaImage>> = OnceLock::new();
    LOGO.get_or_init(|| {
        Arc::new(
            image::load_from_memory_with_format(LOGO_PNG, image::ImageFormat::Png)
                .expect("the bundled logo is a valid PNG")
                .to_rgba8(),
        )
    })
    .clone()
}

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_TTF).expect("the bundled font is valid"))
}

/// The text, `target_w` wide (or less, to be at most about `max_h` high), white or `color` with
/// a dark outline.
fn render_text(
    text: &str,
    color: [u8; 3],
    target_w: u32,
    max_h: u32,
) -> Result<RgbaImage, TaskError> {
    let font = font();
    let probe = 100.0;
    let (probe_w, probe_h) = imageproc::drawing::text_size(PxScale::from(probe), font, text);
    if probe_w == 0 {
        return Err(TaskError(
            "the watermark text has no visible characters".into(),
        ));
    }
    let by_width = probe * target_w as f32 / probe_w as f32;
    // The padding and outline add about a third to the height of the glyphs.
    let by_height = probe * max_h as f32 / (probe_h.max(1) as f32 * 1.35);
    let size = by_width.min(by_height).clamp(4.0, 2000.0);
    let scale = PxScale::from(size);
    let (tw, th) = imageproc::drawing::text_size(scale, font, text);
    let pad = (size / 10.0).ceil() as u32 + 2;
    let (cw, ch) = (tw + 2 * pad, th + 2 * pad);
    let mut coverage = GrayImage::new(cw, ch);
    imageproc::drawing::draw_text_mut(
        &mut coverage,
        Luma([255]),
        pad as i32,
        pad as i32,
        scale,
        font,
        text,
    );
    let outline = ((size / 24.0).round() as u32).max(1);
    // Outline: the most coverage within `outline` pixels.
    let around = dilate(&coverage, outline);
    let mut out = RgbaImage::new(cw, ch);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let around = around.get_pixel(x, y).0[0];
        let c = coverage.get_pixel(x, y).0[0] as u32;
        let shadow = around as u32 * 160 / 255;
        let alpha = c + shadow * (255 - c) / 255;
        let mix = |fg: u8| -> u8 {
            if alpha == 0 {
                0
            } else {
                ((fg as u32 * c + 20 * shadow * (255 - c) / 255) / alpha.max(1)).min(255) as u8
            }
        };
        *px = Rgba([mix(color[0]), mix(color[1]), mix(color[2]), alpha as u8]);
    }
    Ok(out)
}

/// The largest value within `r` pixels (a square window), in two passes (rows, then columns):
/// O(pixels × r) rather than O(pixels × r²), which matters for large text marks.
fn dilate(src: &GrayImage, r: u32) -> GrayImage {
    let (w, h) = src.dimensions();
    let pass = |src: &GrayImage, horizontal: bool| {
        let mut out = GrayImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let (pos, len) = if horizontal { (x, w) } else { (y, h) };
                let (lo, hi) = (pos.saturating_sub(r), (pos + r).min(len - 1));
                let most = (lo..=hi)
                    .map(|i| {
                        let (sx, sy) = if horizontal { (i, y) } else { (x, i) };
                        src.get_pixel(sx, sy).0[0]
                    })
                    .max()
                    .unwrap_or(0);
                out.put_pixel(x, y, Luma([most]));
            }
        }
        out
    };
    pass(&pass(src, true), false)
}

/// Rotates counter-clockwise by `degrees` on a canvas large enough to keep every corner:
/// bilinear, on alpha-premultiplied values (no dark fringe where the mark meets transparency).
fn rotate_expanded(mark: &RgbaImage, degrees: f64) -> RgbaImage {
    let (w, h) = (mark.width() as f64, mark.height() as f64);
    let rad = degrees.to_radians();
    let (s, c) = (rad.sin().abs(), rad.cos().abs());
    let out_w = ((w * c + h * s).ceil() as u32 + 2).max(mark.width());
    let out_h = ((w * s + h * c).ceil() as u32 + 2).max(mark.height());
    // The mark sits in the middle of the canvas, which turns about its centre.
    let (ox, oy) = (
        ((out_w - mark.width()) / 2) as f32,
        ((out_h - mark.height()) / 2) as f32,
    );
    let (cx, cy) = (out_w as f32 / 2.0, out_h as f32 / 2.0);
    let (sin, cos) = (rad.sin() as f32, rad.cos() as f32);
    let (mw, mh) = (mark.width() as i64, mark.height() as i64);
    let src = mark.as_raw();
    let tap = |x: i64, y: i64| -> [f32; 4] {
        if x < 0 || y < 0 || x >= mw || y >= mh {
            return [0.0; 4];
        }
        let at = (y * mw + x) as usize * 4;
        let a = src[at + 3] as f32;
        [src[at] as f32 * a, src[at + 1] as f32 * a, src[at + 2] as f32 * a, a]
    };
    let mut out = RgbaImage::new(out_w, out_h);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        // The pre-image of this pixel, in the mark's own coordinates.
        let sx = cx + cos * dx - sin * dy - ox;
        let sy = cy + sin * dx + cos * dy - oy;
        if sx <= -1.0 || sy <= -1.0 || sx >= mw as f32 || sy >= mh as f32 {
            continue;
        }
        let (left, top) = (sx.floor() as i64, sy.floor() as i64);
        let (fx, fy) = (sx - left as f32, sy - top as f32);
        let mut acc = [0f32; 4];
        for (tx, ty, weight) in [
            (left, top, (1.0 - fx) * (1.0 - fy)),
            (left + 1, top, fx * (1.0 - fy)),
            (left, top + 1, (1.0 - fx) * fy),
            (left + 1, top + 1, fx * fy),
        ] {
            if weight > 0.0 {
                let v = tap(tx, ty);
                for k in 0..4 {
                    acc[k] += v[k] * weight;
                }
            }
        }
        if acc[3] >= 0.5 {
            let a = acc[3];
            let channel = |v: f32| (v / a).round().clamp(0.0, 255.0) as u8;
            *px = Rgba([
                channel(acc[0]),
                channel(acc[1]),
                channel(acc[2]),
                a.round().min(255.0) as u8,
            ]);
        }
    }
    out
}

/// Runs `f` on the image's pixels as 8-bit RGB or RGBA (with the channel count), keeping the
/// image's own kind where it can (RGB stays RGB, grey stays grey, alpha stays alpha).
fn paint(image: DynamicImage, f: impl FnOnce(&mut [u8], usize)) -> DynamicImage {
    match image {
        DynamicImage::ImageRgb8(mut img) => {
            f(&mut img, 3);
            DynamicImage::ImageRgb8(img)
        }
        DynamicImage::ImageRgba8(mut img) => {
            f(&mut img, 4);
            DynamicImage::ImageRgba8(img)
        }
        other => {
            let has_alpha = other.color().has_alpha();
            let grey = !other.color().has_color();
            let mut rgba = other.to_rgba8();
            f(&mut rgba, 4);
            let out = DynamicImage::ImageRgba8(rgba);
            match (grey, has_alpha) {
                (true, false) => DynamicImage::ImageLuma8(out.to_luma8()),
                (true, true) => DynamicImage::ImageLumaA8(out.to_luma_alpha8()),
                (false, false) => DynamicImage::ImageRgb8(out.to_rgb8()),
                (false, true) => out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::Pipeline;
    use serde_json::json;

    fn run(params: serde_json::Value, img: DynamicImage) -> DynamicImage {
        let mut step = params;
        step["task"] = json!("watermark");
        let p = Pipeline::parse(&json!([step])).expect("valid");
        let prepared = p.0[0]
            .task
            .prepare(&p.0[0].params, &Assets::default())
            .expect("prepares");
        prepared.apply(img).expect("applies")
    }

    fn grey(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            w,
            h,
            image::Rgb([100, 100, 100]),
        ))
    }

    #[test]
    fn the_default_tiles_the_logo_over_the_whole_image() {
        let out = run(json!({}), grey(400, 300)).to_rgb8();
        // Every quarter of the image is touched by some tile.
        for (qx, qy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let changed = (0..150)
                .flat_map(|y| (0..200).map(move |x| (x, y)))
                .filter(|&(x, y)| out.get_pixel(qx * 200 + x, qy * 150 + y).0 != [100, 100, 100])
                .count();
            assert!(
                changed > 500,
                "quarter ({qx},{qy}) has only {changed} changed pixels"
            );
        }
    }

    #[test]
    fn an_anchored_mark_stays_in_its_corner() {
        let out = run(
            json!({"position": "bottom-right", "opacity": 1.0, "scale": 0.25, "margin": 0.05}),
            grey(400, 300),
        )
        .to_rgb8();
        let margin = 15; // 0.05 × 300
        let mark_w = 100; // 0.25 × 400
        for (x, y, px) in out.enumerate_pixels() {
            let inside = x >= 400 - margin - mark_w
                && y >= 300 - margin - mark_w
                && x < 400 - margin
                && y < 300 - margin;
            if !inside {
                assert_eq!(
                    px.0,
                    [100, 100, 100],
                    "pixel ({x},{y}) outside the mark changed"
                );
            }
        }
        let changed = out.pixels().filter(|p| p.0 != [100, 100, 100]).count();
        assert!(changed > 1000, "the mark painted only {changed} pixels");
    }

    #[test]
    fn the_mark_is_never_taller_than_a_very_wide_low_image() {
        let params = |v: serde_json::Value| {
            let mut step = v;
            step["task"] = json!("watermark");
            Pipeline::parse(&json!([step])).expect("valid")
        };
        for text in ["", "Copyright 2026"] {
            let p = params(json!({"text": text, "scale": 1.0, "position": "center"}));
            let mark = Settings::new(&p.0[0].params, &Assets::default())
                .expect("settings")
                .mark(100_000, 10)
                .expect("a mark");
            assert!(
                mark.height() <= 14 && mark.width() <= 400,
                "{text:?}: {}×{}",
                mark.width(),
                mark.height()
            );
            // Tiled and rotated, it grows by its rotation only.
            let p = params(json!({"text": text, "scale": 1.0, "rotation": 45.0}));
            let mark = Settings::new(&p.0[0].params, &Assets::default())
                .expect("settings")
                .mark(100_000, 10)
                .expect("a mark");
            assert!(
                mark.width() * mark.height() <= 400 * 400,
                "{text:?} tiled: {}×{}",
                mark.width(),
                mark.height()
            );
        }
    }

    #[test]
    fn the_mark_turns_as_imageproc_turns_it() {
        use imageproc::geometric_transformations::{rotate_about_center, Border, Interpolation};
        // An asymmetric mark: an opaque bar along the top, and a block near the left.
        let mark = RgbaImage::from_fn(120, 40, |x, y| {
            if y < 8 || (x < 20 && y < 30) {
                Rgba([200, 40, 40, 255])
            } else {
                Rgba([0, 0, 0, 0])
            }
        });
        for degrees in [30.0, -45.0, 90.0] {
            let ours = rotate_expanded(&mark, degrees);
            // The same canvas, turned by imageproc (clockwise by the negated angle).
            let mut canvas = RgbaImage::new(ours.width(), ours.height());
            image::imageops::replace(
                &mut canvas,
                &mark,
                ((ours.width() - 120) / 2) as i64,
                ((ours.height() - 40) / 2) as i64,
            );
            let theirs = rotate_about_center(
                &canvas,
                -(degrees as f32).to_radians(),
                Interpolation::Bilinear,
                Border::Constant(Rgba([0, 0, 0, 0])),
            );
            let differ = ours
                .pixels()
                .zip(theirs.pixels())
                .filter(|(a, b)| a.0[3].abs_diff(b.0[3]) > 64)
                .count();
            let painted = theirs.pixels().filter(|p| p.0[3] > 128).count();
            assert!(painted > 1200, "{degrees}: {painted}");
            assert!(
                differ * 20 < painted,
                "{degrees}°: {differ} of {painted} pixels disagree"
            );
        }
    }

    #[test]
    fn dilate_takes_the_most_of_a_square_window() {
        let mut img = GrayImage::new(7, 5);
        img.put_pixel(3, 2, Luma([200]));
        img.put_pixel(0, 0, Luma([50]));
        let out = dilate(&img, 1);
        for (x, y, px) in out.enumerate_pixels() {
            let near = x.abs_diff(3) <= 1 && y.abs_diff(2) <= 1;
            let corner = x <= 1 && y <= 1;
            let want = if near { 200 } else if corner { 50 } else { 0 };
            assert_eq!(px.0[0], want, "({x},{y})");
        }
    }

    #[test]
    fn zero_opacity_changes_nothing() {
        let out = run(json!({"opacity": 0.0}), grey(120, 80));
        assert_eq!(out.to_rgb8(), grey(120, 80).to_rgb8());
    }

    #[test]
    fn text_is_drawn_in_its_colour() {
        let out = run(
            json!({"text": "Hello", "position": "center", "opacity": 1.0, "color": "#ff0000", "scale": 0.8}),
            grey(300, 120),
        )
        .to_rgb8();
        let red = out
            .pixels()
            .filter(|p| p.0[0] > 200 && p.0[1] < 60 && p.0[2] < 60)
            .count();
        assert!(red > 300, "only {red} red pixels");
    }

    #[test]
    fn grey_and_alpha_images_keep_their_kind() {
        let luma = DynamicImage::ImageLuma8(GrayImage::from_pixel(50, 40, Luma([9])));
        assert_eq!(run(json!({}), luma).color(), image::ColorType::L8);
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_pixel(50, 40, Rgba([1, 2, 3, 0])));
        assert_eq!(run(json!({}), rgba).color(), image::ColorType::Rgba8);
    }
}
