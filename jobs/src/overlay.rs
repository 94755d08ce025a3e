//! A mark painted over an image: one RGBA picture at one or more places (an anchored logo, a
//! tiled one). A step that is only that says so (`Prepared::overlay`), and the JPEG fast path
//! then blends it in the image's own YCbCr planes instead of decoding to RGB and back.
//!
//! The mark is converted to YCbCr once, premultiplied by its alpha, with its chroma averaged
//! over the image's chroma cells (one variant per subsampling and per offset of the mark within
//! a cell), and cached: every image of the batch reuses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use image::RgbaImage;

/// A rectangle of pixels: `x0..x1` × `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

/// Which plane of the mark in YCbCr: (horizontal factor, vertical factor, x offset, y offset,
/// component).
type VariantKey = (u8, u8, u8, u8, u8);

/// One mark at one or more places, for an image of one size.
pub struct Overlay {
    mark: RgbaImage,
    /// Top-left corners of every copy of the mark, in image pixels (may be off the image).
    positions: Vec<(i64, i64)>,
    /// The size of the image the positions are for.
    size: (u32, u32),
    /// The mark's pixels in YCbCr, and its planes at each plane's resolution, made when first
    /// needed.
    ycc_pixels: OnceLock<Vec<[u8; 4]>>,
    ycc: Mutex<HashMap<VariantKey, Arc<PlaneMark>>>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("mark", &self.mark.dimensions())
            .field("positions", &self.positions.len())
            .field("size", &self.size)
            .finish()
    }
}

impl Overlay {
    /// `mark` (straight alpha) at each of `positions` on an image of `size`. The mark is
    /// trimmed to the pixels it paints, so fully transparent borders cost nothing.
    pub fn new(mark: RgbaImage, positions: Vec<(i64, i64)>, size: (u32, u32)) -> Self {
        let (mark, dx, dy) = trim(mark);
        let positions = positions
            .into_iter()
            .map(|(x, y)| (x + dx as i64, y + dy as i64))
            .filter(|&(x, y)| {
                x < size.0 as i64
                    && y < size.1 as i64
                    && x + mark.width() as i64 > 0
                    && y + mark.height() as i64 > 0
            })
            .collect();
        Self {
            mark,
            positions,
            size,
            ycc_pixels: OnceLock::new(),
            ycc: Mutex::default(),
        }
    }

    pub fn mark(&self) -> &RgbaImage {
        &self.mark
    }

    pub fn positions(&self) -> &[(i64, i64)] {
        &self.positions
    }

    /// The smallest rectangle holding every pixel the overlay may change, or `None` when it
    /// changes none.
    pub fn bounds(&self) -> Option<Rect> {
        let (w, h) = (self.size.0 as i64, self.size.1 as i64);
        let (mw, mh) = (self.mark.width() as i64, self.mark.height() as i64);
        let mut out: Option<Rect> = None;
        for &(x, y) in &self.positions {
            let r = Rect {
                x0: x.clamp(0, w) as u32,
                y0: y.clamp(0, h) as u32,
                x1: (x + mw).clamp(0, w) as u32,
                y1: (y + mh).clamp(0, h) as u32,
            };
            if r.x0 >= r.x1 || r.y0 >= r.y1 {
                continue;
            }
            out = Some(match out {
                None => r,
                Some(o) => Rect {
                    x0: o.x0.min(r.x0),
                    y0: o.y0.min(r.y0),
                    x1: o.x1.max(r.x1),
                    y1: o.y1.max(r.y1),
                },
            });
        }
        out
    }

    /// Source-over blend onto an interleaved 8-bit RGB (`channels` 3) or RGBA (4) buffer of
    /// `size`.
    pub fn blend_rgb(&self, buf: &mut [u8], channels: usize) {
        let (w, h) = (self.size.0 as i64, self.size.1 as i64);
        let (mw, mh) = (self.mark.width() as i64, self.mark.height() as i64);
        let src = self.mark.as_raw();
        for &(x0, y0) in &self.positions {
            let (xs, xe) = (x0.max(0), (x0 + mw).min(w));
            let (ys, ye) = (y0.max(0), (y0 + mh).min(h));
            if xs >= xe || ys >= ye {
                continue;
            }
            for y in ys..ye {
                let src_row = ((y - y0) * mw) as usize * 4;
                let dst_row = (y * w) as usize * channels;
                for x in xs..xe {
                    let s = src_row + (x - x0) as usize * 4;
                    let a = src[s + 3] as u32;
                    if a == 0 {
                        continue;
                    }
                    let d = dst_row + x as usize * channels;
                    let inv = 255 - a;
                    for c in 0..3 {
                        buf[d + c] =
                            ((src[s + c] as u32 * a + buf[d + c] as u32 * inv + 127) / 255) as u8;
                    }
                    if channels == 4 {
                        buf[d + 3] = (a + (buf[d + 3] as u32 * inv + 127) / 255).min(255) as u8;
                    }
                }
            }
        }
    }

    /// Each copy of the mark as one plane sees it: the mark's cells in that plane (`component`
    /// 0 is Y, 1 Cb, 2 Cr, subsampled by `factors`) and the plane cell of their top-left.
    fn placed(
        &self,
        component: usize,
        factors: (u8, u8),
    ) -> impl Iterator<Item = (Arc<PlaneMark>, i64, i64)> + '_ {
        let (sx, sy) = (factors.0.max(1) as i64, factors.1.max(1) as i64);
        self.positions.iter().map(move |&(x0, y0)| {
            let (ox, oy) = (x0.rem_euclid(sx), y0.rem_euclid(sy));
            let key = (
                sx as u8,
                sy as u8,
                ox as u8,
                oy as u8,
                component.min(2) as u8,
            );
            (self.ycc(key), x0.div_euclid(sx), y0.div_euclid(sy))
        })
    }

    /// The real size of a plane subsampled by `factors`, in cells (rounded up).
    fn plane_size(&self, factors: (u8, u8)) -> (i64, i64) {
        let (sx, sy) = (factors.0.max(1) as i64, factors.1.max(1) as i64);
        (
            (self.size.0 as i64 + sx - 1) / sx,
            (self.size.1 as i64 + sy - 1) / sy,
        )
    }

    /// Blends onto one plane of a planar YCbCr image: `component` 0 is Y (full resolution),
    /// 1 is Cb and 2 is Cr, each subsampled by `factors` (horizontal, vertical; (1, 1) for Y).
    /// `plane` has rows of `stride` bytes and at least `rows` of them.
    pub fn blend_plane(
        &self,
        plane: &mut [u8],
        stride: usize,
        rows: usize,
        component: usize,
        factors: (u8, u8),
    ) {
        let (pw, ph) = self.plane_size(factors);
        let (pw, ph) = (pw.min(stride as i64), ph.min(rows as i64));
        for (cells, cx0, cy0) in self.placed(component, factors) {
            let (ys, ye) = (cy0.max(0), (cy0 + cells.height as i64).min(ph));
            for y in ys..ye {
                let row = (y - cy0) as usize;
                // Only the cells this row of the mark paints.
                let (first, end) = cells.spans[row];
                let xs = (cx0 + first as i64).max(0);
                let xe = (cx0 + end as i64).min(pw);
                if xs >= xe {
                    continue;
                }
                let n = (xe - xs) as usize;
                let at = row * cells.width as usize + (xs - cx0) as usize;
                let start = y as usize * stride + xs as usize;
                blend_row(
                    &mut plane[start..start + n],
                    &cells.pre[at..at + n],
                    &cells.inv[at..at + n],
                );
            }
        }
    }

    /// The overlay as the blocks of one plane see it (`component` 0 is Y, 1 Cb, 2 Cr,
    /// subsampled by `factors`): for blending 8 × 8 blocks in the DCT domain.
    pub fn block_painter(&self, component: usize, factors: (u8, u8)) -> BlockPainter {
        BlockPainter {
            placed: self.placed(component, factors).collect(),
            plane: self.plane_size(factors),
        }
    }

    /// The mark's pixels in YCbCr (with alpha), made once.
    fn ycc_pixels(&self) -> &[[u8; 4]] {
        self.ycc_pixels.get_or_init(|| {
            self.mark
                .pixels()
                .map(|p| {
                    let [r, g, b, a] = p.0;
                    let (y, cb, cr) = ycbcr(r, g, b);
                    let byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
                    [byte(y), byte(cb), byte(cr), a]
                })
                .collect()
        })
    }

    fn ycc(&self, key: VariantKey) -> Arc<PlaneMark> {
        let mut cache = self.ycc.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| Arc::new(PlaneMark::new(self.ycc_pixels(), self.mark.width(), key)))
            .clone()
    }
}

/// One component of the mark in YCbCr, premultiplied, at the resolution of the image plane's
/// cells: per cell, `pre` = Σ alpha × value ÷ n and `inv` = 255 − Σ alpha ÷ n, where n is the
/// cell's size in pixels and pixels outside the mark count as transparent. A blend is then
/// `out = (pre + inv × in) ÷ 255`: exact for Y (cells of one pixel), and for subsampled chroma
/// the average of the per-pixel blends.
pub struct PlaneMark {
    width: u32,
    height: u32,
    pre: Vec<u16>,
    inv: Vec<u16>,
    /// Per row, the cells from the first to the last that paint anything.
    spans: Vec<(u32, u32)>,
}

impl PlaneMark {
    /// `pixels` is the mark (`mw` wide) in YCbCr with alpha.
    fn new(pixels: &[[u8; 4]], mw: u32, (sx, sy, ox, oy, component): VariantKey) -> Self {
        let mh = if mw == 0 {
            0
        } else {
            pixels.len() as i64 / mw as i64
        };
        let mw = mw as i64;
        let (sx, sy, ox, oy) = (sx as i64, sy as i64, ox as i64, oy as i64);
        let c = component.min(2) as usize;
        let cw = (mw + ox + sx - 1) / sx;
        let ch = (mh + oy + sy - 1) / sy;
        let n = (sx * sy) as u32;
        let cells = (cw * ch) as usize;
        let (mut pre, mut inv) = (Vec::with_capacity(cells), Vec::with_capacity(cells));
        let mut spans = Vec::with_capacity(ch as usize);
        for cy in 0..ch {
            let mut span = (u32::MAX, 0);
            let rows = (cy * sy - oy).max(0)..((cy + 1) * sy - oy).min(mh);
            for cx in 0..cw {
                let cols = (cx * sx - ox).max(0)..((cx + 1) * sx - ox).min(mw);
                let (mut sum, mut alpha) = (0u32, 0u32);
                for y in rows.clone() {
                    for x in cols.clone() {
                        let p = pixels[(y * mw + x) as usize];
                        sum += p[3] as u32 * p[c] as u32;
                        alpha += p[3] as u32;
                    }
                }
                let alpha = ((alpha + n / 2) / n) as u16;
                if alpha > 0 {
                    span = (span.0.min(cx as u32), cx as u32 + 1);
                }
                // Never more than alpha × 255, so that a blend cannot overflow.
                pre.push((((sum + n / 2) / n) as u16).min(alpha * 255));
                inv.push(255 - alpha);
            }
            spans.push(if span.0 < span.1 { span } else { (0, 0) });
        }
        Self {
            width: cw as u32,
            height: ch as u32,
            pre,
            inv,
            spans,
        }
    }
}

/// One overlay's copies of the mark in one plane, looked up once, for block after block.
pub struct BlockPainter {
    placed: Vec<(Arc<PlaneMark>, i64, i64)>,
    /// The plane's real size in cells.
    plane: (i64, i64),
}

impl BlockPainter {
    /// Whether the marks paint any cell of the 8 × 8 block whose top-left cell is (`bx`, `by`).
    pub fn paints(&self, bx: u32, by: u32) -> bool {
        self.placed.iter().any(|(cells, cx0, cy0)| {
            (0..8i64).any(|j| {
                let my = by as i64 + j - cy0;
                if my < 0 || my >= cells.height as i64 {
                    return false;
                }
                let (first, end) = cells.spans[my as usize];
                let (mx0, mx1) = (bx as i64 - cx0, bx as i64 + 8 - cx0);
                (first as i64) < mx1 && (end as i64) > mx0 && first < end
            })
        })
    }

    /// Blends onto the 8 × 8 block (row-major, unrounded pixel values) whose top-left cell is
    /// (`bx`, `by`), as [`Overlay::blend_plane`] does. True when the marks paint any of its
    /// cells.
    pub fn blend(&self, block: &mut [f32; 64], bx: u32, by: u32) -> bool {
        let (pw, ph) = self.plane;
        let mut changed = false;
        for (cells, cx0, cy0) in &self.placed {
            for j in 0..8i64 {
                let (py, my) = (by as i64 + j, by as i64 + j - cy0);
                if py >= ph || my < 0 || my >= cells.height as i64 {
                    continue;
                }
                let (first, end) = cells.spans[my as usize];
                for i in 0..8i64 {
                    let (px, mx) = (bx as i64 + i, bx as i64 + i - cx0);
                    if px >= pw || mx < first as i64 || mx >= end as i64 {
                        continue;
                    }
                    let at = my as usize * cells.width as usize + mx as usize;
                    let inv = cells.inv[at];
                    if inv == 255 {
                        continue;
                    }
                    let v = &mut block[(j * 8 + i) as usize];
                    *v = (cells.pre[at] as f32 + inv as f32 * *v) / 255.0;
                    changed = true;
                }
            }
        }
        changed
    }
}

/// Blends `overlays` onto an RGB image held as floats (`width` × `height` × 3), in floating
/// point and without rounding: the full-precision render that the quality figures compare with.
pub fn blend_exact(rgb: &mut [f32], width: u32, height: u32, overlays: &[Arc<Overlay>]) {
    let (w, h) = (width as i64, height as i64);
    for overlay in overlays {
        for &(x0, y0) in overlay.positions() {
            for (mx, my, p) in overlay.mark().enumerate_pixels() {
                let (x, y) = (x0 + mx as i64, y0 + my as i64);
                if x < 0 || y < 0 || x >= w || y >= h {
                    continue;
                }
                let a = p.0[3] as f32 / 255.0;
                let at = (y * w + x) as usize * 3;
                for c in 0..3 {
                    rgb[at + c] = p.0[c] as f32 * a + rgb[at + c] * (1.0 - a);
                }
            }
        }
    }
}

/// Peak signal-to-noise ratio of `a` against `b` (8-bit scale), in dB.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

/// `dst = (pre + inv × dst) ÷ 255`, rounded, over one row.
fn blend_row(dst: &mut [u8], pre: &[u16], inv: &[u16]) {
    let n = dst.len().min(pre.len()).min(inv.len());
    let (dst, pre, inv) = (&mut dst[..n], &pre[..n], &inv[..n]);
    for k in 0..n {
        // pre ≤ (255 − inv) × 255, so the sum stays within 255 × 255.
        let t = pre[k]
            .wrapping_add((dst[k] as u16).wrapping_mul(inv[k]))
            .wrapping_add(128);
        dst[k] = (t.wrapping_add(t >> 8) >> 8) as u8;
    }
}

/// JPEG's (JFIF, full-range BT.601) RGB → YCbCr.
fn ycbcr(r: u8, g: u8, b: u8) -> (f32, f32, f32) {
    let (r, g, b) = (r as f32, g as f32, b as f32);
    (
        0.299 * r + 0.587 * g + 0.114 * b,
        128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b,
        128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b,
    )
}

/// Crops `mark` to its painted (alpha > 0) pixels; returns the crop and its offset.
fn trim(mark: RgbaImage) -> (RgbaImage, u32, u32) {
    let (w, h) = mark.dimensions();
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in mark.enumerate_pixels() {
        if p.0[3] > 0 {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    if x0 >= x1 {
        return (RgbaImage::new(0, 0), 0, 0);
    }
    if (x0, y0, x1, y1) == (0, 0, w, h) {
        return (mark, 0, 0);
    }
    let crop = image::imageops::crop_imm(&mark, x0, y0, x1 - x0, y1 - y0).to_image();
    (crop, x0, y0)
}
