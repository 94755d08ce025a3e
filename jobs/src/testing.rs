//! Helpers shared by the image path's unit tests.

use image::RgbImage;
use serde_json::json;

use crate::pipeline::{JpegPath, Limits, PreparedPipeline};
use crate::tasks::{Assets, Pipeline};

pub const LIMITS: Limits = Limits {
    max_pixels: 50_000_000,
    jpeg_quality: 90,
    jpeg_path: JpegPath::Auto,
};

/// One step, parsed and prepared with no assets.
pub fn prepared(step: serde_json::Value) -> PreparedPipeline {
    let p = Pipeline::parse(&json!([step])).expect("valid");
    PreparedPipeline::new(&p, &Assets::default()).expect("prepares")
}

pub fn rgb(jpeg: &[u8]) -> RgbImage {
    turbojpeg::decompress_image::<image::Rgb<u8>>(jpeg).expect("decodes")
}

pub fn floats(img: &RgbImage) -> Vec<f32> {
    img.as_raw().iter().map(|&v| v as f32).collect()
}

pub use crate::overlay::psnr;

/// The input decoded and the marks blended in floating point: what a perfect codec would give.
pub fn reference(input: &[u8], pipeline: &PreparedPipeline) -> Vec<f32> {
    let img = rgb(input);
    let (w, h) = img.dimensions();
    let mut out = floats(&img);
    let overlays = pipeline.overlays(w, h).expect("ok").expect("marks only");
    crate::overlay::blend_exact(&mut out, w, h, &overlays);
    out
}

/// `jpeg` with an EXIF block (APP1) right after its SOI marker, holding one tag: `orientation`
/// (6 is "rotate 90° clockwise to view").
pub fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let tiff: Vec<u8> = [
        &b"Exif\0\0MM\0\x2a\0\0\0\x08"[..],
        &[0, 1],                         // one entry
        &[0x01, 0x12, 0, 3, 0, 0, 0, 1], // Orientation, SHORT, count 1
        &orientation.to_be_bytes(),      // its value
        &[0, 0],                         // padding of the value field
        &[0, 0, 0, 0],                   // no next IFD
    ]
    .concat();
    let mut tagged = jpeg[..2].to_vec(); // SOI
    tagged.extend([0xff, 0xe1]);
    tagged.extend(((tiff.len() + 2) as u16).to_be_bytes());
    tagged.extend(&tiff);
    tagged.extend(&jpeg[2..]);
    tagged
}
