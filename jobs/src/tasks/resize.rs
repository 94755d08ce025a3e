//! Fits an image into a box, keeping its proportions; never enlarges unless asked.

use image::imageops::FilterType;
use image::DynamicImage;

use super::{Assets, ImageTask, ParamKind, ParamSpec, Params, Prepared, TaskError};

static PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "max_width",
        label: "Largest width",
        help: "In pixels.",
        kind: ParamKind::Int {
            min: 1,
            max: 20_000,
            default: 1920,
        },
    },
    ParamSpec {
        name: "max_height",
        label: "Largest height",
        help: "In pixels.",
        kind: ParamKind::Int {
            min: 1,
            max: 20_000,
            default: 1920,
        },
    },
    ParamSpec {
        name: "enlarge",
        label: "Enlarge smaller images",
        help: "Scale images up to the box too.",
        kind: ParamKind::Bool { default: false },
    },
];

pub struct Resize;

impl ImageTask for Resize {
    fn name(&self) -> &'static str {
        "resize"
    }

    fn label(&self) -> &'static str {
        "Resize"
    }

    fn description(&self) -> &'static str {
        "Fits the image into a box, keeping its proportions."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn prepare(&self, params: &Params, _assets: &Assets) -> Result<Box<dyn Prepared>, TaskError> {
        let (bw, bh) = (
            params.int("max_width") as f64,
            params.int("max_height") as f64,
        );
        Ok(Box::new(Fit {
            width: bw,
            height: bh,
            enlarge: params.bool("enlarge"),
        }))
    }
}

/// The box one batch fits its images into.
struct Fit {
    width: f64,
    height: f64,
    enlarge: bool,
}

impl Fit {
    /// The size an image of `w × h` gets; `None` when it keeps its own.
    fn target(&self, w: u32, h: u32) -> Option<(u32, u32)> {
        let (w, h) = (w as f64, h as f64);
        let mut ratio = (self.width / w).min(self.height / h);
        if !self.enlarge {
            ratio = ratio.min(1.0);
        }
        if (ratio - 1.0).abs() < f64::EPSILON {
            return None;
        }
        let nw = ((w * ratio).round() as u32).max(1);
        let nh = ((h * ratio).round() as u32).max(1);
        Some((nw, nh))
    }
}

impl Prepared for Fit {
    fn apply(&self, image: DynamicImage) -> Result<DynamicImage, TaskError> {
        Ok(match self.target(image.width(), image.height()) {
            None => image,
            Some((w, h)) => resize_exact(&image, w, h),
        })
    }

    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        self.target(width, height).unwrap_or((width, height))
    }
}

/// Catmull-Rom resampling with SIMD (`fast_image_resize`, alpha premultiplied), or `image`'s
/// own resize for the few pixel types that crate does not take.
fn resize_exact(image: &DynamicImage, width: u32, height: u32) -> DynamicImage {
    use fast_image_resize::{FilterType as Filter, ResizeAlg, ResizeOptions, Resizer};
    let mut out = DynamicImage::new(width, height, image.color());
    let options =
        ResizeOptions::new().resize_alg(ResizeAlg::Convolution(Filter::CatmullRom));
    match Resizer::new().resize(image, &mut out, &options) {
        Ok(()) => out,
        Err(_) => image.resize_exact(width, height, FilterType::CatmullRom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    fn largest_difference(a: &DynamicImage, b: &DynamicImage) -> u8 {
        let (a, b) = (a.to_rgba8(), b.to_rgba8());
        assert_eq!(a.dimensions(), b.dimensions());
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_fast_resize_matches_the_reference_resize() {
        let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(401, 299, |x, y| {
            Rgb([(x * 255 / 400) as u8, (y * 255 / 298) as u8, ((x + y) % 256) as u8])
        }));
        // Opaque pixels, so that premultiplying the alpha changes nothing.
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(120, 90, |x, y| {
            Rgba([(x * 2) as u8, (y * 2) as u8, 77, 255])
        }));
        for (img, (w, h)) in [(rgb, (200, 149)), (rgba, (61, 45))] {
            let ours = resize_exact(&img, w, h);
            assert_eq!(ours.color(), img.color(), "keeps the kind of image");
            let reference = img.resize_exact(w, h, FilterType::CatmullRom);
            let diff = largest_difference(&ours, &reference);
            assert!(diff <= 6, "{:?}: {diff} levels apart", img.color());
        }
    }
}
