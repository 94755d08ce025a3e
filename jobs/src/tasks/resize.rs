//! Fits an image into a box, keeping its proportions; never enlarges unless asked.

use image::imageops::FilterType;
use image::DynamicImage;

use super::{per_image, Assets, ImageTask, ParamKind, ParamSpec, Params, Prepared, TaskError};

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
        let enlarge = params.bool("enlarge");
        Ok(per_image(move |image: DynamicImage| {
            let (w, h) = (image.width() as f64, image.height() as f64);
            let mut ratio = (bw / w).min(bh / h);
            if !enlarge {
                ratio = ratio.min(1.0);
            }
            if (ratio - 1.0).abs() < f64::EPSILON {
                return Ok(image);
            }
            let nw = ((w * ratio).round() as u32).max(1);
            let nh = ((h * ratio).round() as u32).max(1);
            Ok(image.resize_exact(nw, nh, FilterType::CatmullRom))
        }))
    }
}
