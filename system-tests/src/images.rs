//! Test images made on the fly (no binary fixtures): flat colours, photo-like noise, alpha, EXIF.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

/// A flat-coloured JPEG: after re-encoding, untouched pixels keep their colour within a few levels.
pub fn flat_jpeg(w: u32, h: u32, color: [u8; 3]) -> Vec<u8> {
    encode(
        &DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb(color))),
        ImageFormat::Jpeg,
    )
}

pub fn flat_png(w: u32, h: u32, color: [u8; 4]) -> Vec<u8> {
    encode(
        &DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, Rgba(color))),
        ImageFormat::Png,
    )
}

/// A photo-like JPEG (gradients and noise, so it compresses like a photograph does).
pub fn photo_jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let img = RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 24) as i32 - 12;
        let c = |base: i32| (base + noise).clamp(0, 255) as u8;
        Rgb([
            c((x * 255 / w.max(1)) as i32),
            c((y * 255 / h.max(1)) as i32),
            c(((x + y + seed * 37) % 256) as i32),
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 88)
        .encode_image(&img)
        .expect("encodes");
    out
}

/// A JPEG of `w` × `h` stored pixels tagged EXIF orientation 6 ("rotate 90° clockwise to view").
pub fn exif_rotated_jpeg(w: u32, h: u32, color: [u8; 3]) -> Vec<u8> {
    let plain = flat_jpeg(w, h, color);
    let tiff: Vec<u8> = [
        &b"Exif\0\0MM\0\x2a\0\0\0\x08"[..],
        &[0, 1],
        &[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0],
        &[0, 0, 0, 0],
    ]
    .concat();
    let mut tagged = plain[..2].to_vec();
    tagged.extend([0xff, 0xe1]);
    tagged.extend(((tiff.len() + 2) as u16).to_be_bytes());
    tagged.extend(&tiff);
    tagged.extend(&plain[2..]);
    tagged
}
