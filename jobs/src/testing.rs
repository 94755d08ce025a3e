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
