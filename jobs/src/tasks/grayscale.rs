//! Turns an image grey (keeping its transparency). A second built-in task: it proves that a new
//! task needs one file and one registration line, and nothing in `web/` or `worker/`.

use image::DynamicImage;

use super::{per_image, Assets, ImageTask, ParamSpec, Params, Prepared, TaskError};

pub struct Grayscale;

impl ImageTask for Grayscale {
    fn name(&self) -> &'static str {
        "grayscale"
    }

    fn label(&self) -> &'static str {
        "Grayscale"
    }

    fn description(&self) -> &'static str {
        "Removes the colour, keeping transparency."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }

    fn prepare(&self, _params: &Params, _assets: &Assets) -> Result<Box<dyn Prepared>, TaskError> {
        Ok(per_image(|image: DynamicImage| {
            Ok(if image.color().has_alpha() {
                DynamicImage::ImageLumaA8(image.to_luma_alpha8())
            } else {
                DynamicImage::ImageLuma8(image.to_luma8())
            })
        }))
    }
}
