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

pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

/// The input decoded and the marks blended in floating point: what a perfect codec would give.
pub fn reference(input: &[u8], pipeline: &PreparedPipeline) -> Vec<f32> {
    let img = rgb(input);
    let (w, h) = img.dimensions();
    let mut out = floats(&img);
    for overlay in pipeline.overlays(w, h).expect("ok").expect("marks only") {
        let mark = overlay.mark();
        for &(x0, y0) in overlay.positions() {
            for (mx, my, p) in mark.enumerate_pixels() {
                let (x, y) = (x0 + mx as i64, y0 + my as i64);
                if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                    continue;
                }
                let a = p.0[3] as f32 / 255.0;
                let at = (y as usize * w as usize + x as usize) * 3;
                for c in 0..3 {
                    out[at + c] = p.0[c] as f32 * a + out[at + c] * (1.0 - a);
                }
            }
        }
    }
    out
}
