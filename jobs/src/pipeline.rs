//! The image pipeline of one image: sniff the type from its bytes, check its size before
//! decoding, decode (JPEG through libjpeg-turbo, the rest through `image`), apply the EXIF
//! orientation, run the batch's steps, and encode in the image's own format.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader};

use crate::tasks::{Assets, Overlay, Pipeline, Prepared, TaskError};

/// Limits and settings of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted width × height.
    pub max_pixels: u64,
    /// Quality of JPEG output (1–100).
    pub jpeg_quality: u8,
    /// Which path JPEGs take (benchmarks and tests compare them; the system uses `Auto`).
    pub jpeg_path: JpegPath,
}

/// The paths a JPEG can take through the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JpegPath {
    /// The fastest that applies: the DCT domain for small marks, the YCbCr planes for other
    /// marks, pixels for everything else.
    #[default]
    Auto,
    /// The YCbCr planes when the steps are marks, else pixels.
    Planar,
    /// Always pixels.
    Pixels,
}

/// The image types we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
    Gif,
    Bmp,
    Tiff,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Self::Jpeg,
        Self::Png,
        Self::WebP,
        Self::Gif,
        Self::Bmp,
        Self::Tiff,
    ];

    /// The type of a file from its first bytes (magic numbers), never from its name.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        image::guess_format(head)
            .ok()
            .and_then(Self::from_image_format)
    }

    pub fn from_image_format(f: ImageFormat) -> Option<Self> {
        Some(match f {
            ImageFormat::Jpeg => Self::Jpeg,
            ImageFormat::Png => Self::Png,
            ImageFormat::WebP => Self::WebP,
            ImageFormat::Gif => Self::Gif,
            ImageFormat::Bmp => Self::Bmp,
            ImageFormat::Tiff => Self::Tiff,
            _ => return None,
        })
    }

    pub fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::WebP => ImageFormat::WebP,
            Self::Gif => ImageFormat::Gif,
            Self::Bmp => ImageFormat::Bmp,
            Self::Tiff => ImageFormat::Tiff,
        }
    }

    /// Stable lower-case name, stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::WebP => "webp",
            Self::Gif => "gif",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The file extension results get.
    pub fn ext(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Tiff => "tif",
            other => other.as_str(),
        }
    }

    /// Every extension a file of this type may carry in its name already.
    pub fn known_exts(self) -> &'static [&'static str] {
        match self {
            Self::Jpeg => &["jpg", "jpeg", "jpe", "jfif"],
            Self::Png => &["png"],
            Self::WebP => &["webp"],
            Self::Gif => &["gif"],
            Self::Bmp => &["bmp"],
            Self::Tiff => &["tif", "tiff"],
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::WebP => "image/webp",
            Self::Gif => "image/gif",
            Self::Bmp => "image/bmp",
            Self::Tiff => "image/tiff",
        }
    }
}

/// Human list of what we accept, for error messages.
pub const ACCEPTED: &str = "JPEG, PNG, WebP, GIF, BMP or TIFF";

/// Largest uploaded logo, in bytes and in pixels (2048 × 2048: decoded, 16 MiB at 4 bytes a
/// pixel; a mark is rarely drawn larger than a tenth of that).
pub const MAX_LOGO_BYTES: usize = 2 * 1024 * 1024;
pub const MAX_LOGO_PIXELS: u64 = 2048 * 2048;

/// Checks an uploaded logo from its header alone (its type, and its dimensions against
/// [`MAX_LOGO_PIXELS`]) without decoding a pixel of it: what `web` does with a logo, leaving the
/// decoding to the image process. Answers its type and size, or says why not.
pub fn check_logo(bytes: &[u8]) -> Result<(Format, u32, u32), String> {
    let format = Format::sniff(bytes)
        .ok_or_else(|| format!("the logo is not an image we can read (expected {ACCEPTED})"))?;
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format.image_format())
        .into_dimensions()
        .map_err(|e| {
            format!(
                "the logo cannot be used: the image is damaged or truncated: {}",
                readable(&e.to_string())
            )
        })?;
    let limits = Limits {
        max_pixels: MAX_LOGO_PIXELS,
        jpeg_quality: 90,
        jpeg_path: JpegPath::Auto,
    };
    check_size(width as u64, height as u64, &limits)
        .map_err(|e| format!("the logo cannot be used: {e}"))?;
    Ok((format, width, height))
}

/// Decodes an uploaded logo (any format we read, at most [`MAX_LOGO_PIXELS`], checked from its
/// header first; the decoded logo takes 4 bytes a pixel), or says why not.
pub fn decode_logo(bytes: &[u8]) -> Result<image::RgbaImage, String> {
    let (format, _, _) = check_logo(bytes)?;
    let limits = Limits {
        max_pixels: MAX_LOGO_PIXELS,
        jpeg_quality: 90,
        jpeg_path: JpegPath::Auto,
    };
    decode(bytes, format, &limits)
        .map(|img| img.into_rgba8())
        .map_err(|e| format!("the logo cannot be used: {e}"))
}

/// Why one image could not be processed; the text is shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("not an image we can read (expected {ACCEPTED})")]
    Unsupported,
    #[error("the image is {width} × {height} pixels, more than the limit of {limit} pixels")]
    TooManyPixels { width: u64, height: u64, limit: u64 },
    #[error("the image is damaged or truncated: {0}")]
    Corrupt(String),
    #[error("{task} failed: {message}")]
    Task { task: &'static str, message: String },
    #[error("could not encode the result: {0}")]
    Encode(String),
    #[error("processing took longer than the time limit")]
    TimedOut,
}

impl ProcessError {
    /// Step `task` could not be prepared or applied.
    fn task(task: &'static str, e: TaskError) -> Self {
        Self::Task { task, message: e.0 }
    }
}

/// A processed image.
#[derive(Debug, Clone)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// The path that made it (for logs and the benchmark): `"dct-rows"` (DCT domain, only the
    /// MCU rows under the marks encoded again), `"dct"` (DCT domain, every block transcoded),
    /// `"planar"` or `"pixels"`.
    pub path: &'static str,
}

/// A pipeline made ready for one batch (each step prepared with the batch's assets), applied to
/// image after image.
pub struct PreparedPipeline {
    steps: Vec<(&'static str, Box<dyn Prepared>)>,
}

impl std::fmt::Debug for PreparedPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.steps.iter().map(|(name, _)| name))
            .finish()
    }
}

impl PreparedPipeline {
    /// Prepares every step; a step that cannot be prepared (a logo it needs is missing, say)
    /// is the reason every image of the batch fails.
    pub fn new(pipeline: &Pipeline, assets: &Assets) -> Result<Self, ProcessError> {
        let steps = pipeline
            .0
            .iter()
            .map(|step| {
                let name = step.task.name();
                step.task
                    .prepare(&step.params, assets)
                    .map(|prepared| (name, prepared))
                    .map_err(|e| ProcessError::task(name, e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { steps })
    }

    /// The size of the result for an image of `width × height`, each step's output checked
    /// against the pixel limit from the sizes alone (nothing is built).
    pub fn output_size(
        &self,
        width: u32,
        height: u32,
        limits: &Limits,
    ) -> Result<(u32, u32), ProcessError> {
        let mut size = (width, height);
        for (name, step) in &self.steps {
            size = step.output_size(size.0, size.1);
            check_step(name, size, limits)?;
        }
        Ok(size)
    }

    /// The marks of an image of `width × height`, when every step only paints one; `None` when
    /// some step does anything else.
    pub fn overlays(
        &self,
        width: u32,
        height: u32,
    ) -> Result<Option<Vec<Arc<Overlay>>>, ProcessError> {
        let mut out = Vec::with_capacity(self.steps.len());
        for (name, step) in &self.steps {
            match step.overlay(width, height) {
                None => return Ok(None),
                Some(Ok(overlay)) => out.push(overlay),
                Some(Err(e)) => return Err(ProcessError::task(name, e)),
            }
        }
        Ok(Some(out))
    }
}

/// A step's output of `width × height` pixels, checked against the limit before it is built.
fn check_step(
    name: &'static str,
    (width, height): (u32, u32),
    limits: &Limits,
) -> Result<(), ProcessError> {
    let (w, h) = (width as u64, height as u64);
    if w * h > limits.max_pixels {
        return Err(ProcessError::Task {
            task: name,
            message: format!(
                "the result would be {w} × {h} pixels, more than the limit of {} pixels",
                limits.max_pixels
            ),
        });
    }
    Ok(())
}

/// Processes one image with a pipeline prepared for it alone (tests and one-off use; the worker
/// prepares once per batch).
pub fn process(input: &[u8], pipeline: &Pipeline, limits: &Limits) -> Result<Output, ProcessError> {
    let prepared = PreparedPipeline::new(pipeline, &Assets::default())?;
    process_until(input, &prepared, limits, None)
}

/// Processes one image, giving up with [`ProcessError::TimedOut`] once `deadline` has passed
/// (checked after decoding and after every step). JPEGs whose pipeline only paints marks take a
/// fast path: in the DCT domain when the marks cover a small part of the image (`dct` module),
/// else in the YCbCr planes (`jpeg` module); everything else is decoded to pixels.
pub fn process_until(
    input: &[u8],
    pipeline: &PreparedPipeline,
    limits: &Limits,
    deadline: Option<Instant>,
) -> Result<Output, ProcessError> {
    let check = || match deadline {
        Some(d) if Instant::now() > d => Err(ProcessError::TimedOut),
        _ => Ok(()),
    };
    let format = Format::sniff(input).ok_or(ProcessError::Unsupported)?;
    if format == Format::Jpeg && limits.jpeg_path != JpegPath::Pixels {
        let info = crate::jpeg::JpegInfo::read(input, limits)?;
        if limits.jpeg_path == JpegPath::Auto {
            if let Some(out) = crate::dct::process_dct(input, &info, pipeline, &check)? {
                return Ok(out);
            }
        }
        if let Some(out) = crate::jpeg::process_planar(input, &info, pipeline, limits, &check)? {
            return Ok(out);
        }
    }
    process_pixels(input, format, pipeline, limits, &check)
}

/// The general path: decode to pixels, apply every step, encode.
pub fn process_pixels(
    input: &[u8],
    format: Format,
    pipeline: &PreparedPipeline,
    limits: &Limits,
    check: &dyn Fn() -> Result<(), ProcessError>,
) -> Result<Output, ProcessError> {
    let mut image = decode(input, format, limits)?;
    check()?;
    // Every step's output size, checked before anything of it is built.
    pipeline.output_size(image.width(), image.height(), limits)?;
    for (name, step) in &pipeline.steps {
        let expected = step.output_size(image.width(), image.height());
        check_step(name, expected, limits)?;
        image = step.apply(image).map_err(|e| ProcessError::task(name, e))?;
        if (image.width(), image.height()) != expected {
            return Err(ProcessError::Task {
                task: name,
                message: format!(
                    "made {} × {} pixels where it said {} × {}",
                    image.width(),
                    image.height(),
                    expected.0,
                    expected.1
                ),
            });
        }
        check()?;
    }
    let bytes = encode(&image, format, limits.jpeg_quality)?;
    Ok(Output {
        bytes,
        format,
        width: image.width(),
        height: image.height(),
        path: "pixels",
    })
}

/// A decoder's message without the internals some of them append (the PNG decoder adds a
/// Rust debug dump of the chunk: `… while decoding ChunkType { type: IDAT, … } chunk.`).
fn readable(message: &str) -> String {
    match message.find(" while decoding ChunkType") {
        Some(at) => message[..at].trim_end().to_owned(),
        None => message.to_owned(),
    }
}

pub(crate) fn check_size(width: u64, height: u64, limits: &Limits) -> Result<(), ProcessError> {
    if width == 0 || height == 0 {
        return Err(ProcessError::Corrupt("it has no pixels".into()));
    }
    if width.saturating_mul(height) > limits.max_pixels {
        return Err(ProcessError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// Decodes with the size checked from the header first, and the EXIF orientation applied.
pub fn decode(input: &[u8], format: Format, limits: &Limits) -> Result<DynamicImage, ProcessError> {
    if format == Format::Jpeg {
        if let Some(img) = decode_jpeg(input, limits)? {
            return Ok(img);
        }
    }
    decode_generic(input, format, limits)
}

/// libjpeg-turbo for the usual JPEGs; `None` for colour spaces it cannot convert (CMYK), which
/// then go through `image`.
fn decode_jpeg(input: &[u8], limits: &Limits) -> Result<Option<DynamicImage>, ProcessError> {
    let header = turbojpeg::read_header(input).map_err(|e| ProcessError::Corrupt(e.to_string()))?;
    check_size(header.width as u64, header.height as u64, limits)?;
    let img = match header.colorspace {
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK => return Ok(None),
        turbojpeg::Colorspace::Gray => DynamicImage::ImageLuma8(
            turbojpeg::decompress_image::<image::Luma<u8>>(input)
                .map_err(|e| ProcessError::Corrupt(e.to_string()))?,
        ),
        _ => DynamicImage::ImageRgb8(
            turbojpeg::decompress_image::<image::Rgb<u8>>(input)
                .map_err(|e| ProcessError::Corrupt(e.to_string()))?,
        ),
    };
    Ok(Some(apply_exif_orientation(img, input)))
}

fn apply_exif_orientation(mut img: DynamicImage, input: &[u8]) -> DynamicImage {
    if let Some(o) = exif_orientation(input) {
        img.apply_orientation(o);
    }
    img
}

/// The EXIF orientation of a JPEG, when it has one.
pub(crate) fn exif_orientation(input: &[u8]) -> Option<image::metadata::Orientation> {
    exif::Reader::new()
        .read_from_container(&mut Cursor::new(input))
        .ok()
        .and_then(|e| {
            e.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
                .and_then(|f| f.value.get_uint(0))
        })
        .and_then(|v| u8::try_from(v).ok())
        .and_then(image::metadata::Orientation::from_exif)
}

fn decode_generic(
    input: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<DynamicImage, ProcessError> {
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => ProcessError::TooManyPixels {
            width: 0,
            height: 0,
            limit: limits.max_pixels,
        },
        image::ImageError::Unsupported(u) => {
            ProcessError::Corrupt(format!("unsupported variant: {u}"))
        }
        other => ProcessError::Corrupt(readable(&other.to_string())),
    };
    let mut reader = ImageReader::with_format(Cursor::new(input), format.image_format());
    let mut image_limits = image::Limits::default();
    // Decoders may allocate a few buffers of the image's size; 16 bytes a pixel covers 16-bit RGBA.
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    check_size(w as u64, h as u64, limits)?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// Encodes in `format`, converting the pixels to what that format can hold.
pub fn encode(
    image: &DynamicImage,
    format: Format,
    jpeg_quality: u8,
) -> Result<Vec<u8>, ProcessError> {
    let enc = |e: image::ImageError| ProcessError::Encode(e.to_string());
    match format {
        Format::Jpeg => {
            let q = jpeg_quality.clamp(1, 100) as i32;
            let buf = if image.color().has_color() {
                turbojpeg::compress_image(&image.to_rgb8(), q, turbojpeg::Subsamp::Sub2x2)
            } else {
                turbojpeg::compress_image(&image.to_luma8(), q, turbojpeg::Subsamp::Gray)
            }
            .map_err(|e| ProcessError::Encode(e.to_string()))?;
            Ok(buf.to_vec())
        }
        Format::Png => {
            let img = match image {
                DynamicImage::ImageLuma8(_)
                | DynamicImage::ImageLumaA8(_)
                | DynamicImage::ImageRgb8(_)
                | DynamicImage::ImageRgba8(_)
                | DynamicImage::ImageLuma16(_)
                | DynamicImage::ImageLumaA16(_)
                | DynamicImage::ImageRgb16(_)
                | DynamicImage::ImageRgba16(_) => std::borrow::Cow::Borrowed(image),
                other if other.color().has_alpha() => {
                    std::borrow::Cow::Owned(DynamicImage::ImageRgba16(other.to_rgba16()))
                }
                other => std::borrow::Cow::Owned(DynamicImage::ImageRgb16(other.to_rgb16())),
            };
            let mut out = Vec::new();
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, PngFilter::Adaptive)
                .write_image(
                    img.as_bytes(),
                    img.width(),
                    img.height(),
                    img.color().into(),
                )
                .map_err(enc)?;
            Ok(out)
        }
        Format::WebP | Format::Gif | Format::Bmp | Format::Tiff => {
            let img = if image.color().has_alpha() || format == Format::Gif {
                DynamicImage::ImageRgba8(image.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(image.to_rgb8())
            };
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, format.image_format()).map_err(enc)?;
            Ok(out.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::default_pipeline;

    const LIMITS: Limits = Limits {
        max_pixels: 1_000_000,
        jpeg_quality: 90,
        jpeg_path: JpegPath::Auto,
    };

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        encode(&DynamicImage::ImageRgb8(img), Format::Jpeg, 90).expect("encodes")
    }

    #[test]
    fn the_type_comes_from_the_content_not_the_name() {
        assert_eq!(Format::sniff(&jpeg(8, 8)), Some(Format::Jpeg));
        assert_eq!(Format::sniff(b"\x89PNG\r\n\x1a\nrest"), Some(Format::Png));
        assert_eq!(Format::sniff(b"hello, I am text"), None);
        assert_eq!(Format::sniff(b""), None);
    }

    #[test]
    fn jpeg_stays_jpeg_and_keeps_its_size() {
        let out = process(&jpeg(300, 200), &default_pipeline(), &LIMITS).expect("processes");
        assert_eq!(out.format, Format::Jpeg);
        assert_eq!((out.width, out.height), (300, 200));
        assert_eq!(
            image::guess_format(&out.bytes).ok(),
            Some(ImageFormat::Jpeg)
        );
    }

    /// A corrupt JPEG fails alone: the images after it on the same thread (the same image
    /// process) are processed as if it had never come, on every JPEG path.
    #[test]
    fn a_broken_jpeg_does_not_break_the_next_ones() {
        // Made by the `image` crate's encoder (its header differs from TurboJPEG's): the case
        // seen in a worker, where every JPEG after this one failed with its error.
        let image_crate_jpeg = |w, h| {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x % 256) as u8, (y * 3 % 256) as u8, ((x + y) % 256) as u8])
            });
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 88)
                .encode_image(&img)
                .expect("encodes");
            out
        };
        let mut broken = image_crate_jpeg(64, 64);
        broken.truncate(40);
        broken.extend(std::iter::repeat_n(0x55, 400));
        // Tiled (the planes), and a small mark in a corner (the DCT domain).
        let corner = Pipeline::parse(&serde_json::json!([
            {"task": "watermark", "position": "bottom-right", "scale": 0.1}
        ]))
        .expect("valid");
        for pipeline in [default_pipeline(), corner] {
            for path in [JpegPath::Auto, JpegPath::Planar, JpegPath::Pixels] {
                let limits = Limits {
                    jpeg_path: path,
                    ..LIMITS
                };
                for _ in 0..2 {
                    let err = process(&broken, &pipeline, &limits).expect_err("broken");
                    assert!(matches!(err, ProcessError::Corrupt(_)), "{path:?}: {err}");
                    let good = image_crate_jpeg(320, 240);
                    let out = process(&good, &pipeline, &limits).unwrap_or_else(|e| {
                        panic!("{path:?}: a good JPEG after a broken one: {e}")
                    });
                    assert_eq!((out.width, out.height), (320, 240));
                }
            }
        }
    }

    #[test]
    fn too_many_pixels_is_refused_before_decoding() {
        let err =
            process(&jpeg(1100, 1000), &default_pipeline(), &LIMITS).expect_err("over the limit");
        assert!(
            matches!(
                err,
                ProcessError::TooManyPixels {
                    width: 1100,
                    height: 1000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("more than the limit"));
    }

    /// A step that says it makes an image over the limit is refused before it runs: its
    /// `apply` (which would build it) is never called, and nothing after it either.
    #[test]
    fn every_step_s_output_size_is_checked_before_it_is_built() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Spy {
            factor: u32,
            applied: Arc<AtomicUsize>,
        }
        impl Prepared for Spy {
            fn apply(&self, image: DynamicImage) -> Result<DynamicImage, TaskError> {
                self.applied.fetch_add(1, Ordering::SeqCst);
                let (w, h) = self.output_size(image.width(), image.height());
                Ok(DynamicImage::new_rgb8(w, h))
            }
            fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
                (width * self.factor, height * self.factor)
            }
        }
        let applied = Arc::new(AtomicUsize::new(0));
        let spy = |factor| -> Box<dyn Prepared> {
            Box::new(Spy {
                factor,
                applied: applied.clone(),
            })
        };
        // 300 × 200 → 600 × 400 (fits 1 MP) → 6000 × 4000 (does not) → …
        let pipeline = PreparedPipeline {
            steps: vec![("double", spy(2)), ("tenfold", spy(10)), ("double", spy(2))],
        };
        let err = process_until(&jpeg(300, 200), &pipeline, &LIMITS, None).expect_err("too big");
        assert!(
            matches!(&err, ProcessError::Task { task: "tenfold", message } if message.contains("6000 × 4000")),
            "{err}"
        );
        assert_eq!(
            applied.load(Ordering::SeqCst),
            0,
            "refused before any step ran"
        );
        assert_eq!(
            pipeline.output_size(300, 200, &LIMITS).map_err(|e| e.to_string()),
            Err("tenfold failed: the result would be 6000 × 4000 pixels, more than the limit of 1000000 pixels".into())
        );
        // The resize task says its size: enlarging past the limit is refused the same way.
        let enlarge = Pipeline::parse(&serde_json::json!([
            {"task": "resize", "max_width": 20000, "max_height": 20000, "enlarge": true}
        ]))
        .expect("valid");
        let err = process(&jpeg(300, 200), &enlarge, &LIMITS).expect_err("too big");
        assert!(err.to_string().contains("20000 × 13333"), "{err}");
    }

    /// A logo is checked from its header alone: its type and dimensions, never its pixels.
    #[test]
    fn a_logo_is_checked_from_its_header() {
        let small = encode(
            &DynamicImage::ImageRgba8(image::RgbaImage::new(64, 32)),
            Format::Png,
            90,
        )
        .expect("encodes");
        assert_eq!(check_logo(&small), Ok((Format::Png, 64, 32)));
        // A 2048 × 2048 PNG whose data is one tiny zlib block: within the limit, and accepted
        // (only its decoding, in the image child, would find it short).
        assert_eq!(
            check_logo(&png_declaring(2048, 2048)),
            Ok((Format::Png, 2048, 2048))
        );
        let err = check_logo(&png_declaring(4000, 4000)).expect_err("over the limit");
        assert!(err.contains("4000 × 4000"), "{err}");
        assert!(check_logo(b"not an image").is_err());
    }

    #[test]
    fn a_png_header_declaring_a_huge_image_is_refused() {
        // A valid PNG of 50,000 × 50,000 pixels whose data is one tiny zlib block.
        let png = png_declaring(50_000, 50_000);
        let err = process(&png, &default_pipeline(), &LIMITS).expect_err("a bomb");
        assert!(
            matches!(err, ProcessError::TooManyPixels { width: 50_000, .. }),
            "{err}"
        );
    }

    /// A PNG header declaring `w × h` RGB pixels, whose data is one tiny zlib block.
    fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let crc = crc32(&ihdr);
        png.extend(13u32.to_be_bytes());
        png.extend(&ihdr);
        png.extend(crc.to_be_bytes());
        let mut idat = b"IDAT".to_vec();
        idat.extend([
            0x78, 0x01, 0x01, 0x01, 0x00, 0xfe, 0xff, 0x00, 0x00, 0x01, 0x00, 0x01,
        ]);
        png.extend(((idat.len() - 4) as u32).to_be_bytes());
        png.extend(&idat);
        png.extend(crc32(&idat).to_be_bytes());
        png.extend([0, 0, 0, 0]);
        png.extend(b"IEND");
        png.extend(crc32(b"IEND").to_be_bytes());
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn truncated_and_random_files_fail_with_a_reason() {
        let full = jpeg(200, 200);
        let truncated = &full[..full.len() / 2];
        let err = process(truncated, &default_pipeline(), &LIMITS).expect_err("truncated");
        assert!(matches!(err, ProcessError::Corrupt(_)), "{err}");
        let err = process(
            b"random bytes that are not an image",
            &default_pipeline(),
            &LIMITS,
        )
        .expect_err("random");
        assert!(matches!(err, ProcessError::Unsupported));
        // A PNG whose first chunk has a wrong checksum: a reason without the decoder's internals.
        let mut png = Vec::new();
        DynamicImage::new_rgb8(8, 8)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .expect("encodes");
        png[29] ^= 0xff; // a byte of IHDR's CRC
        let err = process(&png, &default_pipeline(), &LIMITS).expect_err("bad CRC");
        let text = err.to_string();
        assert!(
            text.starts_with("the image is damaged") && !text.contains('{'),
            "{text}"
        );
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 40 × 20 JPEG tagged "rotate 90° clockwise" (orientation 6) becomes 20 × 40.
        let tagged = crate::testing::with_orientation(&jpeg(40, 20), 6);
        let img = decode(&tagged, Format::Jpeg, &LIMITS).expect("decodes");
        assert_eq!((img.width(), img.height()), (20, 40));
    }

    #[test]
    fn png_keeps_transparency() {
        let img = image::RgbaImage::from_pixel(10, 10, image::Rgba([0, 0, 0, 0]));
        let png = encode(&DynamicImage::ImageRgba8(img), Format::Png, 90).expect("encodes");
        let out = process(&png, &default_pipeline(), &LIMITS).expect("processes");
        assert_eq!(out.format, Format::Png);
        let back = image::load_from_memory(&out.bytes).expect("decodes");
        assert!(back.color().has_alpha());
    }
}
