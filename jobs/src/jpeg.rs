//! The JPEG fast path for pipelines that only paint marks (see `Prepared::overlay`): the image
//! is decoded to its own YCbCr planes (no colour conversion, no chroma upsampling), each mark is
//! blended into each plane at that plane's resolution, and the planes are encoded again with the
//! input's subsampling. EXIF orientation is applied to the planes, exactly, when the image's size
//! is a whole number of chroma cells; otherwise, and for every other input (CMYK, lossless,
//! unusual subsampling) or pipeline, the general path runs instead.

use std::cell::RefCell;
use std::sync::Arc;

use image::metadata::Orientation;
use turbojpeg::{Colorspace, Compressor, Decompressor, Subsamp, YuvImage};

use crate::overlay::Overlay;
use crate::pipeline::{check_size, exif_orientation, Limits, Output, PreparedPipeline};
use crate::pipeline::{Format, ProcessError};

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    static COMPRESSOR: RefCell<Option<Compressor>> = const { RefCell::new(None) };
}

fn corrupt(e: turbojpeg::Error) -> ProcessError {
    ProcessError::Corrupt(e.to_string())
}

/// Runs `f` with this thread's decompressor (made once per thread, and made again after an
/// error: a TurboJPEG handle that failed on a broken file goes on failing on good ones).
fn with_decompressor<T>(
    f: impl FnOnce(&mut Decompressor) -> Result<T, ProcessError>,
) -> Result<T, ProcessError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new().map_err(corrupt)?);
        }
        let result = f(slot.as_mut().expect("just made"));
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// Runs `f` with this thread's compressor (made again after an error, like the decompressor).
fn with_compressor<T>(
    f: impl FnOnce(&mut Compressor) -> Result<T, ProcessError>,
) -> Result<T, ProcessError> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Compressor::new().map_err(|e| ProcessError::Encode(e.to_string()))?);
        }
        let result = f(slot.as_mut().expect("just made"));
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// What the fast paths need to know of a JPEG before they choose: its header (its size already
/// checked against the limits) and its EXIF orientation. Read once per image.
pub(crate) struct JpegInfo {
    pub header: turbojpeg::DecompressHeader,
    pub orientation: Orientation,
}

impl JpegInfo {
    pub(crate) fn read(input: &[u8], limits: &Limits) -> Result<Self, ProcessError> {
        let header = with_decompressor(|d| d.read_header(input).map_err(corrupt))?;
        check_size(header.width as u64, header.height as u64, limits)?;
        Ok(Self {
            header,
            orientation: exif_orientation(input).unwrap_or(Orientation::NoTransforms),
        })
    }

    /// Whether the fast paths can take it at all: YCbCr or grey, a subsampling TurboJPEG knows,
    /// not lossless.
    pub(crate) fn plain(&self) -> bool {
        matches!(self.header.colorspace, Colorspace::YCbCr | Colorspace::Gray)
            && self.header.subsamp != Subsamp::Unknown
            && !self.header.is_lossless
    }
}

/// Processes `input` in YCbCr when the pipeline and the file allow it; `Ok(None)` when they do
/// not (the caller then takes the general path). `check` is the deadline check.
pub(crate) fn process_planar(
    input: &[u8],
    info: &JpegInfo,
    pipeline: &PreparedPipeline,
    limits: &Limits,
    check: &dyn Fn() -> Result<(), ProcessError>,
) -> Result<Option<Output>, ProcessError> {
    let (header, orientation) = (&info.header, info.orientation);
    if !info.plain() {
        return Ok(None);
    }
    let (sx, sy) = factors(header.subsamp);
    if orientation != Orientation::NoTransforms
        && (header.width % sx != 0 || header.height % sy != 0)
    {
        return Ok(None); // the chroma cells would not line up after turning: see the module doc
    }
    let (w, h) = if transposes(orientation) {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    let Some(overlays) = pipeline.overlays(w as u32, h as u32)? else {
        return Ok(None);
    };

    let mut yuv = YuvImage {
        pixels: vec![
            0u8;
            turbojpeg::yuv_pixels_len(header.width, 1, header.height, header.subsamp)
                .map_err(corrupt)?
        ],
        width: header.width,
        align: 1,
        height: header.height,
        subsamp: header.subsamp,
    };
    with_decompressor(|d| {
        d.decompress_to_yuv(input, yuv.as_deref_mut())
            .map_err(corrupt)
    })?;
    check()?;
    if orientation != Orientation::NoTransforms {
        yuv = orient(&yuv, orientation);
    }
    blend(&mut yuv, &overlays);
    check()?;
    let quality = limits.jpeg_quality.clamp(1, 100) as i32;
    let bytes = with_compressor(|c| {
        c.set_quality(quality)
            .and_then(|_| c.compress_yuv_to_owned(yuv.as_deref()))
            .map_err(|e| ProcessError::Encode(e.to_string()))
    })?;
    Ok(Some(Output {
        bytes: bytes.to_vec(),
        format: Format::Jpeg,
        width: w as u32,
        height: h as u32,
        path: "planar",
    }))
}

/// Horizontal and vertical chroma subsampling factors.
fn factors(subsamp: Subsamp) -> (usize, usize) {
    match subsamp {
        Subsamp::Gray => (1, 1),
        other => other.size(),
    }
}

/// The planes of a YUV image with `align` 1: offset, row length and row count of each.
fn planes(yuv: &YuvImage<Vec<u8>>) -> Vec<(usize, usize, usize)> {
    let (yw, yh) = yuv.y_size();
    let mut out = vec![(0, yw, yh)];
    if yuv.subsamp != Subsamp::Gray {
        let (cw, ch) = yuv.uv_size();
        out.push((yw * yh, cw, ch));
        out.push((yw * yh + cw * ch, cw, ch));
    }
    out
}

fn blend(yuv: &mut YuvImage<Vec<u8>>, overlays: &[Arc<Overlay>]) {
    let (sx, sy) = factors(yuv.subsamp);
    for (component, (offset, stride, rows)) in planes(yuv).into_iter().enumerate() {
        let plane = &mut yuv.pixels[offset..offset + stride * rows];
        let f = if component == 0 {
            (1, 1)
        } else {
            (sx as u8, sy as u8)
        };
        for overlay in overlays {
            overlay.blend_plane(plane, stride, rows, component, f);
        }
    }
}

fn transposes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The subsampling of the image turned by a quarter: its factors swap.
fn transposed(subsamp: Subsamp) -> Subsamp {
    match subsamp {
        Subsamp::Sub2x1 => Subsamp::Sub1x2,
        Subsamp::Sub1x2 => Subsamp::Sub2x1,
        Subsamp::Sub4x1 => Subsamp::Sub1x4,
        Subsamp::Sub1x4 => Subsamp::Sub4x1,
        other => other,
    }
}

/// Turns the planes upright; the image's size must be a whole number of chroma cells.
fn orient(yuv: &YuvImage<Vec<u8>>, o: Orientation) -> YuvImage<Vec<u8>> {
    let (width, height, subsamp) = if transposes(o) {
        (yuv.height, yuv.width, transposed(yuv.subsamp))
    } else {
        (yuv.width, yuv.height, yuv.subsamp)
    };
    let len = turbojpeg::yuv_pixels_len(width, 1, height, subsamp).expect("same size as the input");
    let mut out = YuvImage {
        pixels: vec![0u8; len],
        width,
        align: 1,
        height,
        subsamp,
    };
    let dst_planes = planes(&out);
    for ((src_off, sw, sh), (dst_off, dw, _)) in planes(yuv).into_iter().zip(dst_planes) {
        let src = &yuv.pixels[src_off..src_off + sw * sh];
        let dst = &mut out.pixels[dst_off..];
        orient_plane(src, sw, sh, dst, dw, o);
    }
    out
}

/// Writes `src` (`sw` × `sh`) turned by `o` into `dst`, whose rows are `dw` long.
fn orient_plane(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, o: Orientation) {
    let (ow, oh) = if transposes(o) { (sh, sw) } else { (sw, sh) };
    for y in 0..oh {
        let row = &mut dst[y * dw..y * dw + ow];
        for (x, px) in row.iter_mut().enumerate() {
            let (u, v) = match o {
                Orientation::NoTransforms => (x, y),
                Orientation::FlipHorizontal => (sw - 1 - x, y),
                Orientation::FlipVertical => (x, sh - 1 - y),
                Orientation::Rotate180 => (sw - 1 - x, sh - 1 - y),
                Orientation::Rotate90 => (y, sh - 1 - x),
                Orientation::Rotate270 => (sw - 1 - y, x),
                Orientation::Rotate90FlipH => (y, x),
                Orientation::Rotate270FlipH => (sw - 1 - y, sh - 1 - x),
            };
            *px = src[v * sw + u];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::process_pixels;
    use crate::testing::{floats, prepared, psnr, reference, rgb, with_orientation, LIMITS};
    use image::RgbImage;

    fn info(input: &[u8]) -> JpegInfo {
        JpegInfo::read(input, &LIMITS).expect("a JPEG")
    }
    use serde_json::json;

    /// A photo-like picture: smooth gradients, some texture and a little noise.
    fn photo(w: u32, h: u32) -> RgbImage {
        let mut state = 0x1234_5678u32;
        RgbImage::from_fn(w, h, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 7) as f32 - 3.0;
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let wave = ((x as f32 / 9.0).sin() * (y as f32 / 13.0).cos()) * 20.0;
            let c = |v: f32| (v + noise + wave).clamp(0.0, 255.0) as u8;
            image::Rgb([
                c(40.0 + 180.0 * fx),
                c(200.0 - 150.0 * fy),
                c(90.0 + 80.0 * fx * fy),
            ])
        })
    }

    fn jpeg(img: &RgbImage, subsamp: Subsamp) -> Vec<u8> {
        turbojpeg::compress_image(img, 90, subsamp)
            .expect("encodes")
            .to_vec()
    }

    #[test]
    fn marks_blended_in_ycbcr_match_a_full_precision_render() {
        let steps = [
            json!({"task": "watermark"}),
            json!({"task": "watermark", "position": "bottom-right", "opacity": 0.8}),
            json!({"task": "watermark", "text": "© Test 2026", "position": "center", "color": "#ff2000"}),
        ];
        let subsamps = [Subsamp::Sub2x2, Subsamp::Sub2x1, Subsamp::None];
        for (w, h) in [(640, 480), (333, 251)] {
            let img = photo(w, h);
            for subsamp in subsamps {
                let input = jpeg(&img, subsamp);
                for step in &steps {
                    let pipeline = prepared(step.clone());
                    let fast =
                        process_planar(&input, &info(&input), &pipeline, &LIMITS, &|| Ok(()))
                            .expect("processes")
                            .expect("takes the planar path");
                    let slow = process_pixels(&input, Format::Jpeg, &pipeline, &LIMITS, &|| Ok(()))
                        .expect("processes");
                    assert_eq!((fast.width, fast.height), (w, h));
                    let want = reference(&input, &pipeline);
                    let (fast_db, slow_db) = (
                        psnr(&floats(&rgb(&fast.bytes)), &want),
                        psnr(&floats(&rgb(&slow.bytes)), &want),
                    );
                    let case = format!("{w}x{h} {subsamp:?} {step}");
                    eprintln!("{case}: planar {fast_db:.1} dB, pixels {slow_db:.1} dB");
                    // Never worse than decoding to RGB (which re-subsamples the chroma too).
                    assert!(
                        fast_db >= slow_db - 0.3,
                        "{case}: planar {fast_db:.1} dB, pixels {slow_db:.1} dB"
                    );
                    // The re-encoding at q90 costs this photo-like texture about 41 dB at
                    // 640 × 480; the smaller image has more of it per pixel.
                    if w == 640 {
                        assert!(fast_db >= 40.0, "{case}: planar {fast_db:.1} dB");
                    }
                    let header = turbojpeg::read_header(&fast.bytes).expect("a JPEG");
                    assert_eq!(header.subsamp, subsamp, "keeps the input's subsampling");
                }
            }
        }
    }

    #[test]
    fn exif_orientation_is_applied_on_the_planar_path() {
        let pipeline =
            prepared(json!({"task": "watermark", "position": "top-left", "opacity": 1.0}));
        for subsamp in [Subsamp::Sub2x2, Subsamp::Sub2x1] {
            let plain = jpeg(&photo(320, 240), subsamp);
            for orientation in 1..=8u16 {
                let input = with_orientation(&plain, orientation);
                let fast = process_planar(&input, &info(&input), &pipeline, &LIMITS, &|| Ok(()))
                    .expect("processes")
                    .expect("takes the planar path");
                let slow = process_pixels(&input, Format::Jpeg, &pipeline, &LIMITS, &|| Ok(()))
                    .expect("processes");
                assert_eq!(
                    (fast.width, fast.height),
                    (slow.width, slow.height),
                    "{orientation}"
                );
                let db = psnr(&floats(&rgb(&fast.bytes)), &floats(&rgb(&slow.bytes)));
                assert!(
                    db >= 38.0,
                    "{subsamp:?} orientation {orientation}: {db:.1} dB apart"
                );
            }
        }
        // An odd size cannot be turned without moving chroma: the general path takes it.
        let odd = with_orientation(&jpeg(&photo(321, 240), Subsamp::Sub2x2), 6);
        assert!(
            process_planar(&odd, &info(&odd), &pipeline, &LIMITS, &|| Ok(()))
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn planes_turn_as_the_image_crate_turns_pixels() {
        let img = image::GrayImage::from_fn(6, 4, |x, y| image::Luma([(y * 6 + x) as u8]));
        for o in [
            Orientation::NoTransforms,
            Orientation::FlipHorizontal,
            Orientation::FlipVertical,
            Orientation::Rotate180,
            Orientation::Rotate90,
            Orientation::Rotate270,
            Orientation::Rotate90FlipH,
            Orientation::Rotate270FlipH,
        ] {
            let mut want = image::DynamicImage::ImageLuma8(img.clone());
            want.apply_orientation(o);
            let want = want.to_luma8();
            let mut got = vec![0u8; 24];
            orient_plane(img.as_raw(), 6, 4, &mut got, want.width() as usize, o);
            assert_eq!(&got, want.as_raw(), "{o:?}");
        }
    }
}
