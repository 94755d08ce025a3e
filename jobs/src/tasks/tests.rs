//! The registry's own tests, and the conformance test every registered task must pass.

use image::{DynamicImage, GenericImageView, ImageFormat};
use serde_json::json;

use super::*;
use crate::pipeline::{process, Limits};

fn samples() -> Vec<(&'static str, DynamicImage)> {
    let rgb = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
    });
    let rgba = RgbaImage::from_fn(40, 40, |x, y| {
        image::Rgba([200, (x * 6) as u8, (y * 6) as u8, (x * 6) as u8])
    });
    let grey = image::GrayImage::from_fn(33, 21, |x, y| image::Luma([(x * 7 + y) as u8]));
    vec![
        ("rgb", DynamicImage::ImageRgb8(rgb)),
        ("rgba", DynamicImage::ImageRgba8(rgba)),
        ("grey", DynamicImage::ImageLuma8(grey)),
        (
            "1x1",
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]))),
        ),
        (
            "very wide",
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                2500,
                3,
                image::Rgb([9, 99, 199]),
            )),
        ),
    ]
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let img = match format {
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(img.to_rgb8()),
        _ => img.clone(),
    };
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

#[test]
fn every_registered_task_conforms() {
    let limits = Limits {
        max_pixels: 50_000_000,
        jpeg_quality: 90,
        jpeg_path: crate::pipeline::JpegPath::Auto,
    };
    for task in REGISTRY {
        let pipeline = Pipeline::parse(&json!([{"task": task.name()}]))
            .unwrap_or_else(|e| panic!("{}: its defaults must validate: {e}", task.name()));
        for (label, img) in samples() {
            for format in [ImageFormat::Png, ImageFormat::Jpeg] {
                let input = encode(&img, format);
                let first = process(&input, &pipeline, &limits)
                    .unwrap_or_else(|e| panic!("{} on {label} {format:?}: {e}", task.name()));
                let again = process(&input, &pipeline, &limits).expect("second run");
                assert_eq!(
                    first.bytes,
                    again.bytes,
                    "{} on {label} {format:?} is not deterministic",
                    task.name()
                );
                assert_eq!(
                    first.format,
                    crate::pipeline::Format::from_image_format(format).unwrap()
                );
                let decoded = image::load_from_memory(&first.bytes).expect("the output decodes");
                assert_eq!(
                    image::guess_format(&first.bytes).expect("known type"),
                    format,
                    "{} on {label}: output type",
                    task.name()
                );
                let (w, h) = decoded.dimensions();
                assert!(w >= 1 && h >= 1, "{} on {label}: empty output", task.name());
                assert!(
                    w <= img.width() && h <= img.height(),
                    "{} on {label}: {w}x{h} grew beyond {}x{}",
                    task.name(),
                    img.width(),
                    img.height()
                );
                assert_eq!((first.width, first.height), (w, h));
            }
        }
    }
}

#[test]
fn task_names_are_unique_and_stable_identifiers() {
    let mut names: Vec<_> = REGISTRY.iter().map(|t| t.name()).collect();
    for n in &names {
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{n}"
        );
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), REGISTRY.len());
}

#[test]
fn the_default_pipeline_is_the_watermark_with_its_defaults() {
    let p = default_pipeline();
    assert_eq!(p.0.len(), 1);
    assert_eq!(p.0[0].task.name(), "watermark");
    assert_eq!(p.0[0].params.float("opacity"), 0.5);
    assert_eq!(p.0[0].params.text("position"), "tiled");
}

#[test]
fn bad_pipelines_are_refused_with_a_reason() {
    let cases = [
        (json!({"task": "watermark"}), "must be a JSON list"),
        (json!([]), "at least one step"),
        (json!([{"task": "nope"}]), "unknown task \"nope\""),
        (
            json!([{"task": "watermark", "opacity": 3}]),
            "watermark.opacity: must be between 0 and 1",
        ),
        (
            json!([{"task": "watermark", "opacity": "high"}]),
            "watermark.opacity: must be a number",
        ),
        (
            json!([{"task": "watermark", "position": "middle"}]),
            "must be one of tiled",
        ),
        (
            json!([{"task": "watermark", "colour": "#fff"}]),
            "unknown parameter \"colour\"",
        ),
        (
            json!([{"task": "watermark", "color": "red"}]),
            "must be a colour",
        ),
        (
            json!([{"task": "resize", "max_width": 0}]),
            "resize.max_width: must be between 1 and 20000",
        ),
        (
            json!([{"task": "resize", "max_width": 1.5}]),
            "must be a whole number",
        ),
        (
            json!([{"task": "grayscale", "x": 1}]),
            "takes no parameters",
        ),
        (json!([{"opacity": 1}]), "\"task\" must name a task"),
    ];
    for (value, expected) in cases {
        let err = Pipeline::parse(&value).expect_err(&value.to_string());
        assert!(
            err.contains(expected),
            "{value}: {err:?} lacks {expected:?}"
        );
    }
}

#[test]
fn a_stored_pipeline_parses_back_to_the_same_steps() {
    let p = Pipeline::parse(&json!([
        {"task": "resize", "max_width": 800},
        {"task": "watermark", "text": "© me", "position": "bottom-right"}
    ]))
    .expect("valid");
    let stored = p.to_json();
    let again = Pipeline::parse(&stored).expect("stored form is valid");
    assert_eq!(again.to_json(), stored);
    assert_eq!(stored[0]["max_width"], json!(800));
    assert_eq!(stored[0]["max_height"], json!(1920));
    assert_eq!(p.describe(), "Resize, then Watermark");
}

#[test]
fn form_text_becomes_typed_values() {
    let spec = REGISTRY[0]
        .params()
        .iter()
        .find(|s| s.name == "opacity")
        .expect("opacity");
    assert_eq!(form_value(spec, "0.25"), json!(0.25));
    assert_eq!(form_value(spec, ""), Value::Null);
    assert_eq!(form_value(spec, "lots"), json!("lots"));
}
