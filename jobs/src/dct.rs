//! The JPEG fast path for marks that cover part of the image (an anchored logo or text): the
//! image is never decoded. libjpeg-turbo's lossless transform (`tj3Transform`, no operation)
//! hands us the quantised DCT coefficients of every block; only the blocks under a mark are
//! dequantised with the image's own tables, turned into pixels (inverse DCT), blended in their
//! component's YCbCr at that component's resolution, turned back (forward DCT) and
//! re-quantised. Every other block keeps its coefficients bit for bit: no generation loss where
//! the mark is not. For a baseline JPEG with one scan and no restart intervals, the MCU rows
//! that the marks do not touch are not even encoded again: their entropy-coded bits are copied
//! ([`crate::jpeg_scan::Scan::splice`]), and so does the ICC profile (EXIF, whose thumbnail
//! would show the image without its mark, does not). Other
//! JPEGs (progressive, restart intervals, Huffman tables without a code the band needs) go
//! through libjpeg's lossless transform, which decodes and encodes every block.

use image::metadata::Orientation;
use turbojpeg::{libc, raw};

use crate::jpeg::JpegInfo;
use crate::overlay::{BlockPainter, Overlay, Rect};
use crate::pipeline::{Format, Output, PreparedPipeline, ProcessError};

/// The marks may cover at most this share of the image (in MCU-aligned area) for this path;
/// beyond it, blending the decoded planes costs less. Measured with `./scripts/bench pipeline`
/// (time of this path over the planar path's, one core) when every block was transcoded: 0.81
/// at a 1.9 % share and 0.90 at 5.7 % on 12 MP, 0.87 at 3.0 % and 1.00–1.08 at 8.3 % on 2 MP.
/// That is about 0.77 plus 2.8 times the share (every painted block costs an inverse and a
/// forward DCT in floating point); 6 % kept it faster wherever it was taken. Copying the
/// untouched rows made it faster still (0.62–0.82 of the planar path on the same images), so
/// 6 % is on the safe side.
const MAX_SHARE: f64 = 0.06;

/// Natural (row-major) index of the i-th coefficient in zig-zag order, as DQT stores them.
pub(crate) const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// One component of the image, as its frame header and quantisation table describe it.
#[derive(Debug, Clone)]
struct Component {
    /// Sampling factors (H, V).
    sampling: (u8, u8),
    /// Its quantisation table, in natural order.
    quant: [f32; 64],
}

/// The components of a baseline or progressive Huffman-coded JPEG; `None` for anything else.
fn components(input: &[u8]) -> Option<Vec<Component>> {
    let mut tables: [Option<[f32; 64]>; 4] = [None; 4];
    let mut frame: Option<Vec<(u8, u8, usize)>> = None;
    let mut at = 2;
    if input.get(..2)? != [0xff, 0xd8] {
        return None;
    }
    loop {
        while *input.get(at)? != 0xff {
            at += 1;
        }
        while *input.get(at)? == 0xff {
            at += 1;
        }
        let marker = *input.get(at)?;
        at += 1;
        if marker == 0xda {
            break; // start of scan: every table it needs came before
        }
        let len = u16::from_be_bytes([*input.get(at)?, *input.get(at + 1)?]) as usize;
        let segment = input.get(at + 2..at + len)?;
        match marker {
            0xdb => {
                let mut s = segment;
                while !s.is_empty() {
                    let (precision, id) = (s[0] >> 4, (s[0] & 15) as usize);
                    let size = if precision == 0 { 64 } else { 128 };
                    let values = s.get(1..1 + size)?;
                    let mut table = [0f32; 64];
                    for (i, &natural) in ZIGZAG.iter().enumerate() {
                        table[natural] = if precision == 0 {
                            values[i] as f32
                        } else {
                            u16::from_be_bytes([values[2 * i], values[2 * i + 1]]) as f32
                        };
                    }
                    *tables.get_mut(id)? = Some(table);
                    s = &s[1 + size..];
                }
            }
            // Baseline, extended and progressive Huffman frames.
            0xc0..=0xc2 => {
                let count = *segment.get(5)? as usize;
                let mut comps = Vec::with_capacity(count);
                for c in 0..count {
                    let spec = segment.get(6 + 3 * c..9 + 3 * c)?;
                    comps.push((spec[1] >> 4, spec[1] & 15, spec[2] as usize));
                }
                frame = Some(comps);
            }
            // Lossless, hierarchical or arithmetic-coded frames: not here.
            0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => return None,
            _ => {}
        }
        at += len;
    }
    frame?
        .into_iter()
        .map(|(h, v, table)| {
            Some(Component {
                sampling: (h.max(1), v.max(1)),
                quant: (*tables.get(table)?)?,
            })
        })
        .collect()
}

/// The orthonormal 8-point DCT-II basis `B[u][x]` and its transpose.
struct Basis {
    forward: [[f32; 8]; 8],
    inverse: [[f32; 8]; 8],
}

fn basis() -> &'static Basis {
    static BASIS: std::sync::OnceLock<Basis> = std::sync::OnceLock::new();
    BASIS.get_or_init(|| {
        let mut forward = [[0f32; 8]; 8];
        let mut inverse = [[0f32; 8]; 8];
        for u in 0..8 {
            let c = if u == 0 { (0.5f64).sqrt() } else { 1.0 };
            for x in 0..8 {
                let v = (c / 2.0
                    * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos())
                    as f32;
                forward[u][x] = v;
                inverse[x][u] = v;
            }
        }
        Basis { forward, inverse }
    })
}

/// `m · x · mᵀ` for row-major 8 × 8 blocks: the forward DCT with `m` = B (coefficients from
/// level-shifted pixels), the inverse with `m` = Bᵀ. Written so that the inner loops vectorise.
fn transform_block(x: &[f32; 64], m: &[[f32; 8]; 8]) -> [f32; 64] {
    // tmp = x · mᵀ: tmp[r][k] = Σj x[r][j] m[k][j]
    let mut tmp = [0f32; 64];
    for r in 0..8 {
        let row: &mut [f32; 8] = (&mut tmp[r * 8..r * 8 + 8]).try_into().expect("8");
        for j in 0..8 {
            let v = x[r * 8 + j];
            for k in 0..8 {
                row[k] += v * m[k][j];
            }
        }
    }
    // out = m · tmp: out[k][c] = Σj m[k][j] tmp[j][c]
    let mut out = [0f32; 64];
    for k in 0..8 {
        let row: &mut [f32; 8] = (&mut out[k * 8..k * 8 + 8]).try_into().expect("8");
        for j in 0..8 {
            let w = m[k][j];
            for c in 0..8 {
                row[c] += w * tmp[j * 8 + c];
            }
        }
    }
    out
}

/// What the coefficient filter needs.
struct Job {
    components: Vec<Component>,
    /// Per component: the rectangle of blocks it may change, and the marks as its blocks see
    /// them.
    regions: Vec<(Rect, Vec<BlockPainter>)>,
}

/// The largest horizontal and vertical sampling factors: an MCU is 8 times them in pixels.
fn max_sampling(components: &[Component]) -> (u32, u32) {
    let h = components.iter().map(|c| c.sampling.0).max().unwrap_or(1);
    let v = components.iter().map(|c| c.sampling.1).max().unwrap_or(1);
    (h as u32, v as u32)
}

impl Job {
    /// The job of painting `overlays` within `rect` (whole MCUs, in pixels).
    fn new(components: Vec<Component>, overlays: &[std::sync::Arc<Overlay>], rect: Rect) -> Self {
        let (hmax, vmax) = max_sampling(&components);
        let regions = components
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let factors = (
                    (hmax / c.sampling.0 as u32) as u8,
                    (vmax / c.sampling.1 as u32) as u8,
                );
                let (bw, bh) = (8 * factors.0 as u32, 8 * factors.1 as u32);
                let blocks = Rect {
                    x0: rect.x0 / bw,
                    y0: rect.y0 / bh,
                    x1: rect.x1.div_ceil(bw),
                    y1: rect.y1.div_ceil(bh),
                };
                let painters = overlays
                    .iter()
                    .map(|o| o.block_painter(ci.min(2), factors))
                    .collect();
                (blocks, painters)
            })
            .collect();
        Self {
            components,
            regions,
        }
    }

    /// Blends the marks into one row of blocks of component `ci` at block row `row`.
    fn filter_row(&self, blocks: &mut [i16], ci: usize, row: u32) {
        let Some((region, painters)) = self.regions.get(ci) else {
            return;
        };
        if row < region.y0 || row >= region.y1 {
            return;
        }
        let quant = &self.components[ci].quant;
        let count = (blocks.len() / 64) as u32;
        for col in region.x0..region.x1.min(count) {
            let (x, y) = (col * 8, row * 8);
            if !painters.iter().any(|p| p.paints(x, y)) {
                continue;
            }
            let block = &mut blocks[col as usize * 64..col as usize * 64 + 64];
            let mut coeffs = [0f32; 64];
            for k in 0..64 {
                coeffs[k] = block[k] as f32 * quant[k];
            }
            let mut pixels = transform_block(&coeffs, &basis().inverse);
            for p in pixels.iter_mut() {
                *p += 128.0;
            }
            let mut changed = false;
            for painter in painters {
                changed |= painter.blend(&mut pixels, x, y);
            }
            if !changed {
                continue;
            }
            for p in pixels.iter_mut() {
                *p = p.clamp(0.0, 255.0) - 128.0;
            }
            let coeffs = transform_block(&pixels, &basis().forward);
            for k in 0..64 {
                block[k] = (coeffs[k] / quant[k])
                    .round()
                    .clamp(i16::MIN as f32, i16::MAX as f32) as i16;
            }
        }
    }
}

/// A coefficient filter: called with one row of blocks (64 coefficients each, natural order)
/// of a component, the component's index and the row's index in blocks.
type Filter<'a> = dyn FnMut(&mut [i16], usize, u32) + 'a;

unsafe extern "C" fn trampoline(
    coeffs: *mut libc::c_short,
    array_region: raw::tjregion,
    _plane_region: raw::tjregion,
    component: libc::c_int,
    _transform_id: libc::c_int,
    transform: *mut raw::tjtransform,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut Filter` that `transform` passed, alive for the whole call,
    // and `coeffs` holds one row of blocks: `array_region.w` coefficients wide, 8 high.
    let filter = unsafe { &mut *((*transform).data as *mut &mut Filter) };
    let blocks =
        unsafe { std::slice::from_raw_parts_mut(coeffs, array_region.w.max(0) as usize * 8) };
    let row = (array_region.y / 8).max(0) as u32;
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        filter(blocks, component.max(0) as usize, row)
    }));
    if ran.is_err() {
        return -1;
    }
    0
}

/// Processes `input` in the DCT domain when the pipeline only paints marks that cover a small
/// part of it; `Ok(None)` otherwise (the caller takes another path).
pub(crate) fn process_dct(
    input: &[u8],
    info: &JpegInfo,
    pipeline: &PreparedPipeline,
    check: &dyn Fn() -> Result<(), ProcessError>,
) -> Result<Option<Output>, ProcessError> {
    let header = &info.header;
    if !info.plain() || header.is_arithmetic || info.orientation != Orientation::NoTransforms {
        return Ok(None);
    }
    let (w, h) = (header.width as u32, header.height as u32);
    let Some(overlays) = pipeline.overlays(w, h)? else {
        return Ok(None);
    };
    let Some(components) = components(input) else {
        return Ok(None);
    };
    let (hmax, vmax) = max_sampling(&components);
    let bounds = overlays
        .iter()
        .filter_map(|o| o.bounds())
        .reduce(|a, b| Rect {
            x0: a.x0.min(b.x0),
            y0: a.y0.min(b.y0),
            x1: a.x1.max(b.x1),
            y1: a.y1.max(b.y1),
        });
    let Some(bounds) = bounds else {
        return Ok(None); // nothing to paint: the other paths say so just as well
    };
    let rect = mcu_rect(bounds, (8 * hmax, 8 * vmax), (w, h));
    let share = ((rect.x1 - rect.x0) as f64 * (rect.y1 - rect.y0) as f64) / (w as f64 * h as f64);
    if share > MAX_SHARE {
        return Ok(None);
    }
    let job = Job::new(components, &overlays, rect);
    check()?;
    // Only the band of MCU rows under the marks is decoded and encoded again, when the image
    // allows it (one baseline scan, no restart intervals, Huffman tables with every code the
    // band needs); otherwise libjpeg transcodes every block.
    let mcu_height = 8 * vmax;
    let spliced = crate::jpeg_scan::Scan::parse(input).and_then(|scan| {
        scan.splice(
            input,
            rect.y0 / mcu_height,
            rect.y1.div_ceil(mcu_height),
            |blocks, ci, row| job.filter_row(blocks, ci, row),
        )
    });
    let (bytes, path) = match spliced {
        Some(bytes) => (bytes, "dct-rows"),
        None => (
            transform(input, &mut |blocks, ci, row| {
                job.filter_row(blocks, ci, row)
            })?,
            "dct",
        ),
    };
    check()?;
    Ok(Some(Output {
        bytes,
        format: Format::Jpeg,
        width: w,
        height: h,
        path,
    }))
}

/// `bounds` grown to whole MCUs of `mcu` pixels, within the image of `size`.
fn mcu_rect(bounds: Rect, mcu: (u32, u32), size: (u32, u32)) -> Rect {
    Rect {
        x0: bounds.x0 / mcu.0 * mcu.0,
        y0: bounds.y0 / mcu.1 * mcu.1,
        x1: (bounds.x1.div_ceil(mcu.0) * mcu.0).min(size.0.div_ceil(mcu.0) * mcu.0),
        y1: (bounds.y1.div_ceil(mcu.1) * mcu.1).min(size.1.div_ceil(mcu.1) * mcu.1),
    }
}

/// The lossless transform (no operation, no markers kept), with `filter` on the coefficients.
fn transform(input: &[u8], mut filter: &mut Filter) -> Result<Vec<u8>, ProcessError> {
    struct Handle(raw::tjhandle);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: made by tj3Init, destroyed once.
            unsafe { raw::tj3Destroy(self.0) }
        }
    }
    thread_local! {
        // One transformer per thread, kept between images, and made again after an error (a
        // TurboJPEG handle that failed on a broken file goes on failing on good ones).
        static HANDLE: std::cell::RefCell<Option<Handle>> = const { std::cell::RefCell::new(None) };
    }
    let fail = |handle: raw::tjhandle| {
        // SAFETY: the handle is valid; the message is a C string owned by TurboJPEG.
        let message = unsafe { std::ffi::CStr::from_ptr(raw::tj3GetErrorStr(handle)) };
        ProcessError::Corrupt(message.to_string_lossy().into_owned())
    };
    HANDLE.with(|cell| {
        let mut slot = cell.borrow_mut();
        // SAFETY: tj3Init has no preconditions; the handle is destroyed once, by `Handle`.
        let handle = slot.get_or_insert_with(|| {
            Handle(unsafe { raw::tj3Init(raw::TJINIT_TJINIT_TRANSFORM as libc::c_int) })
        });
        // SAFETY: plain FFI on buffers that outlive the calls.
        let result = unsafe {
            if handle.0.is_null() {
                return Err(ProcessError::Encode(
                    "cannot start the JPEG transformer".into(),
                ));
            }
            let spec = raw::tjtransform {
                r: raw::tjregion {
                    x: 0,
                    y: 0,
                    w: 0,
                    h: 0,
                },
                op: raw::TJXOP_TJXOP_NONE as libc::c_int,
                options: raw::TJXOPT_COPYNONE as libc::c_int,
                data: &mut filter as *mut &mut Filter as *mut libc::c_void,
                customFilter: Some(trampoline),
            };
            let mut out: *mut libc::c_uchar = std::ptr::null_mut();
            let mut out_len: raw::size_t = 0;
            let result = raw::tj3Transform(
                handle.0,
                input.as_ptr(),
                input.len() as raw::size_t,
                1,
                &mut out,
                &mut out_len,
                &spec,
            );
            if result != 0 || out.is_null() {
                if !out.is_null() {
                    raw::tj3Free(out as *mut libc::c_void);
                }
                return Err(fail(handle.0));
            }
            let bytes = std::slice::from_raw_parts(out, out_len as usize).to_vec();
            raw::tj3Free(out as *mut libc::c_void);
            Ok(bytes)
        };
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{floats, prepared, psnr, reference, rgb, LIMITS};
    use image::RgbImage;
    use turbojpeg::Subsamp;

    fn info(input: &[u8]) -> JpegInfo {
        JpegInfo::read(input, &LIMITS).expect("a JPEG")
    }
    use serde_json::json;

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let wave = ((x as f32 / 7.0).sin() * (y as f32 / 11.0).cos() * 30.0) as i32;
            let c = |v: i32| (v + wave).clamp(0, 255) as u8;
            image::Rgb([
                c((x * 200 / w) as i32 + 20),
                c(220 - (y * 180 / h) as i32),
                c(100),
            ])
        })
    }

    /// Every component's coefficients, as rows of blocks.
    fn coefficients(jpeg: &[u8]) -> Vec<Vec<(u32, Vec<i16>)>> {
        let mut out: Vec<Vec<(u32, Vec<i16>)>> = Vec::new();
        transform(jpeg, &mut |blocks, ci, row| {
            if out.len() <= ci {
                out.resize(ci + 1, Vec::new());
            }
            out[ci].push((row, blocks.to_vec()));
        })
        .expect("transforms");
        out
    }

    #[test]
    fn our_entropy_decoder_reads_the_same_coefficients_as_libjpeg() {
        use crate::jpeg_scan::Scan;
        use std::collections::HashMap;
        for (w, h) in [(640, 480), (637, 479), (33, 17)] {
            for subsamp in [
                Subsamp::Sub2x2,
                Subsamp::Sub2x1,
                Subsamp::Sub1x2,
                Subsamp::None,
                Subsamp::Gray,
            ] {
                let input = turbojpeg::compress_image(&photo(w, h), 90, subsamp)
                    .expect("encodes")
                    .to_vec();
                let scan = Scan::parse(&input).expect("a baseline JPEG");
                assert!(scan.data_start < scan.data_end);
                let mut ours: HashMap<(usize, u32), Vec<i16>> = HashMap::new();
                let rows = scan
                    .decode(|ci, row, col, coeffs| {
                        let blocks = ours.entry((ci, row)).or_default();
                        assert_eq!(blocks.len(), col as usize * 64, "blocks in order");
                        blocks.extend_from_slice(coeffs);
                    })
                    .expect("decodes");
                assert_eq!(rows.len(), scan.mcus_y as usize);
                assert_eq!(rows[0].bit, 0);
                assert!(rows.windows(2).all(|r| r[0].bit < r[1].bit));
                assert_eq!(&input[scan.data_end..], [0xff, 0xd9], "ends at EOI");
                // libjpeg keeps each component's own blocks, and some of the dummy blocks that
                // fill the MCUs at the right and bottom edges: compare all it keeps.
                let theirs = coefficients(&input);
                for (ci, component) in theirs.iter().enumerate() {
                    let (across, down) = scan.components[ci].blocks;
                    let mut rows_compared = 0;
                    for (row, blocks) in component {
                        let mine = &ours.get(&(ci, *row)).unwrap_or_else(|| {
                            panic!("{w}x{h} {subsamp:?}: no row {row} of component {ci}")
                        });
                        assert!(blocks.len() >= across as usize * 64);
                        assert_eq!(
                            &mine[..blocks.len()],
                            &blocks[..],
                            "{w}x{h} {subsamp:?}: component {ci} row {row}"
                        );
                        rows_compared += (*row < down) as u32;
                    }
                    assert_eq!(
                        rows_compared, down,
                        "{w}x{h} {subsamp:?}: every row compared"
                    );
                }
            }
        }
    }

    /// Runs the DCT path on `input` with a mark at `position` and checks its output against
    /// libjpeg transcoding every block with the same filter: the same coefficients everywhere
    /// and the same pixels. Returns the path taken.
    fn check_against_transcode(input: &[u8], w: u32, h: u32, position: &str) -> &'static str {
        use crate::jpeg_scan::Scan;
        let pipeline = prepared(json!({
            "task": "watermark", "position": position, "opacity": 0.8,
            "scale": 0.25, "margin": 0
        }));
        let out = process_dct(input, &info(input), &pipeline, &|| Ok(()))
            .expect("processes")
            .unwrap_or_else(|| panic!("{w}x{h} {position}: no DCT path"));
        let overlays = pipeline.overlays(w, h).expect("ok").expect("marks");
        let components = components(input).expect("components");
        let (hmax, vmax) = max_sampling(&components);
        let rect = mcu_rect(
            overlays[0].bounds().expect("paints"),
            (8 * hmax, 8 * vmax),
            (w, h),
        );
        let job = Job::new(components, &overlays, rect);
        let full =
            transform(input, &mut |b, ci, row| job.filter_row(b, ci, row)).expect("transcodes");
        let case = format!("{w}x{h} {position} ({} path)", out.path);
        assert_eq!(coefficients(&out.bytes), coefficients(&full), "{case}");
        assert_ne!(
            coefficients(&out.bytes),
            coefficients(input),
            "{case}: marked"
        );
        assert_eq!(rgb(&out.bytes), rgb(&full), "{case}");
        if out.path == "dct-rows" {
            // Everything before the entropy-coded data is the input's, byte for byte, but an
            // EXIF block right after SOI.
            let scan = Scan::parse(input).expect("baseline");
            let exif = if input[2..4] == [0xff, 0xe1] {
                2 + u16::from_be_bytes([input[4], input[5]]) as usize
            } else {
                0
            };
            let kept = [&input[..2], &input[2 + exif..scan.data_start]].concat();
            assert_eq!(out.bytes[..kept.len()], kept[..], "{case}");
        }
        out.path
    }

    /// The splice (only the band under the marks encoded again) gives what libjpeg's transcode
    /// of every block gives, for every subsampling, odd sizes, and marks at every edge.
    #[test]
    fn copying_untouched_rows_gives_what_transcoding_every_block_gives() {
        for (w, h) in [(640, 480), (637, 479), (333, 251)] {
            for subsamp in [
                Subsamp::Sub2x2,
                Subsamp::Sub2x1,
                Subsamp::None,
                Subsamp::Gray,
            ] {
                let input = turbojpeg::compress_image(&photo(w, h), 90, subsamp)
                    .expect("encodes")
                    .to_vec();
                for position in ["top-left", "center", "bottom-right", "bottom-left"] {
                    let path = check_against_transcode(&input, w, h, position);
                    assert_eq!(path, "dct-rows", "{w}x{h} {subsamp:?} {position}");
                }
            }
        }
    }

    /// Damaged entropy-coded data (noise, runs of one byte, truncation) does not panic the
    /// splice: it either splices or says no. (The DC sums wrap rather than overflow, which
    /// only an image of more than a million blocks of the largest differences could reach.)
    #[test]
    fn the_splice_survives_damaged_data() {
        use crate::jpeg_scan::Scan;
        let (w, h) = (640, 480);
        let input = turbojpeg::compress_image(&photo(w, h), 90, Subsamp::Sub2x2)
            .expect("encodes")
            .to_vec();
        let start = Scan::parse(&input).expect("baseline").data_start;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut damaged = Vec::new();
        for fill in [None, Some(0x00u8), Some(0xfe), Some(0x7f)] {
            let mut bytes = input.clone();
            for b in &mut bytes[start + 100..input.len() - 2] {
                *b = fill.unwrap_or_else(|| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed as u8).min(0xfe)
                });
            }
            damaged.push(bytes);
        }
        damaged.push(input[..input.len() / 2].to_vec());
        damaged.push([&input[..start], &[0xfe; 4096][..], &[0xff, 0xd9]].concat());
        for bytes in &damaged {
            if let Some(scan) = Scan::parse(bytes) {
                let _ = scan.splice(bytes, 20, 30, |blocks, _, _| blocks.fill(1));
                let _ = scan.decode(|_, _, _, _| {});
            }
        }
    }

    /// Progressive JPEGs, and optimised Huffman tables that may lack a code the band needs,
    /// fall back to the transcode of every block, with the same result.
    #[test]
    fn jpegs_the_splice_cannot_take_fall_back_to_the_transcode() {
        let (w, h) = (640, 480);
        let encode = |progressive: bool, optimize: bool| {
            let mut c = turbojpeg::Compressor::new().expect("compressor");
            c.set_quality(90).expect("quality");
            c.set_subsamp(Subsamp::Sub2x2).expect("subsampling");
            c.set_progressive(progressive).expect("progressive");
            c.set_optimize(optimize).expect("optimize");
            c.compress_to_vec(turbojpeg::Image {
                pixels: photo(w, h).as_raw().as_slice(),
                width: w as usize,
                pitch: 3 * w as usize,
                height: h as usize,
                format: turbojpeg::PixelFormat::RGB,
            })
            .expect("encodes")
        };
        let progressive = encode(true, false);
        for position in ["top-left", "bottom-right"] {
            assert_eq!(check_against_transcode(&progressive, w, h, position), "dct");
        }
        // EXIF goes (its thumbnail would show the image unmarked); an ICC profile stays.
        let plain = encode(false, false);
        let icc = [&b"\xff\xe2\x00\x14ICC_PROFILE\x00\x01\x01"[..], b"abcd"].concat();
        let tagged =
            crate::testing::with_orientation(&[&plain[..2], &icc[..], &plain[2..]].concat(), 1);
        assert_eq!(
            check_against_transcode(&tagged, w, h, "bottom-right"),
            "dct-rows"
        );
        let pipeline =
            prepared(json!({"task": "watermark", "position": "bottom-right", "scale": 0.25}));
        let out = process_dct(&tagged, &info(&tagged), &pipeline, &|| Ok(()))
            .expect("processes")
            .expect("a DCT path");
        let has = |bytes: &[u8], what: &[u8]| bytes.windows(what.len()).any(|w| w == what);
        assert!(has(&tagged, b"Exif\0\0") && !has(&out.bytes, b"Exif\0\0"));
        assert!(has(&out.bytes, &icc));
        // Optimised tables: either path, the same result.
        let optimised = encode(false, true);
        let paths: Vec<_> = ["top-left", "center", "bottom-right"]
            .iter()
            .map(|p| check_against_transcode(&optimised, w, h, p))
            .collect();
        assert!(
            paths.iter().all(|p| *p == "dct" || *p == "dct-rows"),
            "{paths:?}"
        );
    }

    #[test]
    fn coefficients_outside_the_marks_mcus_stay_bit_identical() {
        let (w, h) = (640, 480);
        for subsamp in [
            Subsamp::Sub2x2,
            Subsamp::Sub2x1,
            Subsamp::None,
            Subsamp::Gray,
        ] {
            let input = turbojpeg::compress_image(&photo(w, h), 90, subsamp)
                .expect("encodes")
                .to_vec();
            let pipeline = prepared(
                json!({"task": "watermark", "position": "bottom-right", "opacity": 0.8, "scale": 0.25}),
            );
            let out = process_dct(&input, &info(&input), &pipeline, &|| Ok(()))
                .expect("processes")
                .expect("takes the DCT path");
            // The rectangle of whole MCUs under the mark, in pixels.
            let overlay = &pipeline.overlays(w, h).expect("ok").expect("marks")[0];
            let (mw, mh) = (subsamp.mcu_width() as u32, subsamp.mcu_height() as u32);
            let rect = mcu_rect(overlay.bounds().expect("paints"), (mw, mh), (w, h));
            let (before, after) = (coefficients(&input), coefficients(&out.bytes));
            assert_eq!(before.len(), after.len());
            let (mut inside_changed, mut outside) = (0, 0);
            for (ci, (rows_before, rows_after)) in before.iter().zip(&after).enumerate() {
                let (sx, sy) = if ci == 0 || subsamp == Subsamp::Gray {
                    (1, 1)
                } else {
                    (subsamp.width() as u32, subsamp.height() as u32)
                };
                for ((row, a), (_, b)) in rows_before.iter().zip(rows_after) {
                    for (col, (x, y)) in a.chunks(64).zip(b.chunks(64)).enumerate() {
                        // The block's pixels in the image.
                        let (px, py) = (col as u32 * 8 * sx, row * 8 * sy);
                        let inside = px >= rect.x0 && px < rect.x1 && py >= rect.y0 && py < rect.y1;
                        if inside {
                            inside_changed += (x != y) as usize;
                        } else {
                            outside += 1;
                            assert_eq!(
                                x, y,
                                "{subsamp:?}: component {ci} block ({col}, {row}) changed"
                            );
                        }
                    }
                }
            }
            assert!(
                outside > 1000,
                "{subsamp:?}: only {outside} blocks outside the mark"
            );
            assert!(
                inside_changed > 20,
                "{subsamp:?}: the mark changed {inside_changed} blocks"
            );
        }
    }

    #[test]
    fn marks_blended_in_the_dct_domain_match_a_full_precision_render() {
        let input = turbojpeg::compress_image(&photo(800, 600), 90, Subsamp::Sub2x2)
            .expect("encodes")
            .to_vec();
        for step in [
            json!({"task": "watermark", "position": "bottom-right", "scale": 0.25}),
            json!({"task": "watermark", "position": "top-left", "text": "© Test", "color": "#20ff20", "scale": 0.25}),
        ] {
            let pipeline = prepared(step.clone());
            let dct = process_dct(&input, &info(&input), &pipeline, &|| Ok(()))
                .expect("processes")
                .expect("takes the DCT path");
            let planar =
                crate::jpeg::process_planar(&input, &info(&input), &pipeline, &LIMITS, &|| Ok(()))
                    .expect("processes")
                    .expect("takes the planar path");
            let want = reference(&input, &pipeline);
            let (dct_db, planar_db) = (
                psnr(&floats(&rgb(&dct.bytes)), &want),
                psnr(&floats(&rgb(&planar.bytes)), &want),
            );
            eprintln!("{step}: DCT path {dct_db:.1} dB, planar path {planar_db:.1} dB");
            // Only the blocks under the mark are quantised again: never worse than re-encoding
            // every block (equal on this smooth picture, which re-encodes almost losslessly).
            assert!(
                dct_db >= 40.0 && dct_db >= planar_db - 0.2,
                "{step}: DCT {dct_db:.1} dB, planar {planar_db:.1} dB"
            );
        }
        // A tiled mark covers everything, and the default anchored logo (40 % of the width) an
        // eighth of this picture: the planar path is cheaper, so this one declines both.
        for step in [
            json!({"task": "watermark"}),
            json!({"task": "watermark", "position": "bottom-right"}),
        ] {
            assert!(
                process_dct(&input, &info(&input), &prepared(step.clone()), &|| Ok(()))
                    .expect("ok")
                    .is_none(),
                "{step} took the DCT path"
            );
        }
    }
}
