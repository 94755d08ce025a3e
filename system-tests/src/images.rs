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

/// A 16-bit RGB PNG of one colour.
pub fn png16(w: u32, h: u32, color: [u16; 3]) -> Vec<u8> {
    encode(
        &DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(w, h, Rgb(color))),
        ImageFormat::Png,
    )
}

/// An 8-bit grayscale PNG of one level.
pub fn gray_png(w: u32, h: u32, level: u8) -> Vec<u8> {
    encode(
        &DynamicImage::ImageLuma8(image::GrayImage::from_pixel(w, h, image::Luma([level]))),
        ImageFormat::Png,
    )
}

/// An RGBA PNG whose left half is fully transparent and right half opaque `color`.
pub fn half_transparent_png(w: u32, h: u32, color: [u8; 3]) -> Vec<u8> {
    let img = RgbaImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([color[0], color[1], color[2], 255])
        }
    });
    encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png)
}

/// CRC-32 as PNG chunks use it.
pub fn crc32(data: &[u8]) -> u32 {
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

/// A zlib stream of `data` in stored (uncompressed) deflate blocks.
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend([1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + byte as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

/// One PNG chunk: length, type, data, CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut body = kind.to_vec();
    body.extend(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
    out
}

/// A PNG assembled chunk by chunk: `IHDR` with the given fields, `extra` chunks (PLTE, tRNS...),
/// one `IDAT` holding `idat` as it is, `IEND`.
pub fn png_from_parts(
    w: u32,
    h: u32,
    bit_depth: u8,
    color_type: u8,
    extra: &[(&[u8; 4], Vec<u8>)],
    idat: &[u8],
) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([bit_depth, color_type, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    for (kind, data) in extra {
        png.extend(png_chunk(kind, data));
    }
    png.extend(png_chunk(b"IDAT", idat));
    png.extend(png_chunk(b"IEND", b""));
    png
}

/// An 8-bit palette PNG: its four quadrants take the four colours of `palette`, in reading order.
pub fn palette_png(w: u32, h: u32, palette: [[u8; 3]; 4]) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            raw.push(u8::from(x >= w / 2) + 2 * u8::from(y >= h / 2));
        }
    }
    png_from_parts(
        w,
        h,
        8,
        3,
        &[(b"PLTE", palette.concat())],
        &zlib_stored(&raw),
    )
}

/// A valid, tiny PNG whose header declares `w` × `h` RGB pixels (a decompression bomb: a decoder
/// that trusts the header allocates `w × h × 3` bytes before it finds the data short).
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    // One row of black pixels; the rest is missing.
    let row = vec![0u8; 1 + 3 * (w as usize).min(4096)];
    png_from_parts(w, h, 8, 2, &[], &zlib_stored(&row))
}

/// A well-formed PNG whose `IDAT` CRC is wrong (the data itself is intact).
pub fn png_with_bad_crc(w: u32, h: u32) -> Vec<u8> {
    let mut png = flat_png(w, h, [10, 200, 30, 255]);
    let at = png
        .windows(4)
        .position(|c| c == b"IDAT")
        .expect("an IDAT chunk");
    let len = u32::from_be_bytes(png[at - 4..at].try_into().unwrap()) as usize;
    let crc = at + 4 + len;
    png[crc] ^= 0xff;
    png
}

/// A PNG whose `IDAT` holds garbage where the compressed pixels belong (its CRC is right).
pub fn png_with_garbage_idat(w: u32, h: u32) -> Vec<u8> {
    let mut garbage = vec![0x78, 0x9c];
    garbage.extend(random_bytes(200, 7));
    png_from_parts(w, h, 8, 2, &[], &garbage)
}

/// Bytes from a fixed-seed xorshift generator.
pub fn random_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// A small JPEG whose frame header (SOF) claims `w` × `h` pixels.
pub fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut jpeg = flat_jpeg(16, 16, [50, 60, 70]);
    let mut i = 2;
    while i + 9 < jpeg.len() {
        assert_eq!(jpeg[i], 0xff, "a marker at {i}");
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if (0xc0..=0xc2).contains(&marker) {
            jpeg[i + 5..i + 7].copy_from_slice(&h.to_be_bytes());
            jpeg[i + 7..i + 9].copy_from_slice(&w.to_be_bytes());
            return jpeg;
        }
        i += 2 + len;
    }
    panic!("no SOF marker")
}

/// A GIF of `frames` flat-coloured frames, each `w` × `h`, 100 ms apart.
pub fn animated_gif(w: u32, h: u32, frames: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .expect("repeat");
        for c in frames {
            let img = RgbaImage::from_pixel(w, h, Rgba([c[0], c[1], c[2], 255]));
            enc.encode_frame(image::Frame::from_parts(
                img,
                0,
                0,
                image::Delay::from_numer_denom_ms(100, 1),
            ))
            .expect("encodes a frame");
        }
    }
    out
}

/// A small GIF whose screen and frame headers claim `w` × `h` pixels.
pub fn gif_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut gif = animated_gif(8, 8, &[[1, 2, 3]]);
    gif[6..8].copy_from_slice(&w.to_le_bytes());
    gif[8..10].copy_from_slice(&h.to_le_bytes());
    let mut i = 13;
    if gif[10] & 0x80 != 0 {
        i += 3 << ((gif[10] & 7) + 1);
    }
    loop {
        match gif[i] {
            0x21 => {
                // Extension: label, then sub-blocks up to an empty one.
                i += 2;
                while gif[i] != 0 {
                    i += 1 + gif[i] as usize;
                }
                i += 1;
            }
            0x2c => {
                gif[i + 5..i + 7].copy_from_slice(&w.to_le_bytes());
                gif[i + 7..i + 9].copy_from_slice(&h.to_le_bytes());
                return gif;
            }
            other => panic!("unexpected GIF block {other:#x} at {i}"),
        }
    }
}

/// A `w` × `h` JPEG of `background` with a `size` × `size` block of `corner` in its stored
/// top-left corner (to see where a rotation takes it).
pub fn cornered_jpeg(w: u32, h: u32, background: [u8; 3], corner: [u8; 3], size: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        if x < size && y < size {
            Rgb(corner)
        } else {
            Rgb(background)
        }
    });
    encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)
}

/// `jpeg` with an EXIF block (APP1) right after its SOI marker, holding one tag: `orientation`.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let tiff: Vec<u8> = [
        &b"Exif\0\0MM\0\x2a\0\0\0\x08"[..],
        &[0, 1],
        &[0x01, 0x12, 0, 3, 0, 0, 0, 1],
        &orientation.to_be_bytes(),
        &[0, 0],
        &[0, 0, 0, 0],
    ]
    .concat();
    let mut tagged = jpeg[..2].to_vec();
    tagged.extend([0xff, 0xe1]);
    tagged.extend(((tiff.len() + 2) as u16).to_be_bytes());
    tagged.extend(&tiff);
    tagged.extend(&jpeg[2..]);
    tagged
}

/// A valid PNG of `w` × `h` pixels padded with a private ancillary chunk (which decoders skip)
/// to exactly `len` bytes.
pub fn png_of_len(w: u32, h: u32, len: usize) -> Vec<u8> {
    let plain = flat_png(w, h, [40, 80, 120, 255]);
    let overhead = plain.len() + 12;
    assert!(
        len >= overhead,
        "{len} bytes is too small for a {w} × {h} PNG"
    );
    let filler = random_bytes(len - overhead, len as u32);
    let iend = plain.len() - 12;
    let mut png = plain[..iend].to_vec();
    png.extend(png_chunk(b"prVt", &filler));
    png.extend(&plain[iend..]);
    assert_eq!(png.len(), len);
    png
}
