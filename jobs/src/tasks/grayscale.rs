//! Turns an image grey (keeping its transparency). A second built-in task: it proves that a new
//! task needs one file and one registration line, and nothing in `web/` or `worker/`.

use image::DynamicImage;

use super::{ImageTask, ParamSpec, Params, TaskError};

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

    fn apply(&self, image: DynamicImage, _params: &Params) -> Result<DynamicImage, TaskError> {
        Ok(if image.color().has_alpha() {
            DynamicImage::ImageLumaA8(image.to_luma_alpha8())
        } else {
            DynamicImage::ImageLuma8(image.to_luma8())
        })
    }
}
