//! Hostile and unusual input, through the JSON API and through the browser form, against the
//! real binaries: every file gets a status and a reason of its own, the valid files of the same
//! batch still come out right, file names come out safe in the zip and escaped on the page,
//! limits and bad parameters get clear answers and leave nothing behind.
//!
//! The corpus is made by the tests (see `system_tests::images`); there are no fixture files.

use std::io::{Cursor, Read};
use std::time::{Duration, Instant};

use image::{AnimationDecoder, ColorType, DynamicImage, GenericImageView, ImageFormat};
use serde_json::{json, Value};
use system_tests::images::{
    animated_gif, cornered_jpeg, encode, flat_jpeg, flat_png, gif_declaring, gray_png,
    half_transparent_png, jpeg_declaring, palette_png, photo_jpeg, png16, png_declaring,
    png_of_len, png_with_bad_crc, png_with_garbage_idat, random_bytes, with_exif_orientation,
};
use system_tests::{proc_kib, Options, System};

const WAIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The entries of a zip, in order; fails when an entry's name would leave the folder it is
/// extracted into.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip");
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).expect("entry");
            let name = f.name().expect("a UTF-8 name").to_string();
            assert!(
                f.enclosed_name().is_some(),
                "the entry {name:?} escapes the extraction folder"
            );
            let mut data = Vec::new();
            f.read_to_end(&mut data).expect("read");
            (name, data)
        })
        .collect()
}

/// Characters that reorder or hide text (bidirectional controls, zero-width marks).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// Every property a zip entry name must have to be extracted safely anywhere.
fn assert_safe_entry_names(names: &[&str]) {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        assert!(!name.is_empty(), "an empty entry name in {names:?}");
        assert!(!name.contains(".."), "{name:?} contains ..");
        assert!(!name.starts_with('/'), "{name:?} is absolute");
        assert!(!name.starts_with('.'), "{name:?} is hidden");
        assert!(!name.contains('/'), "{name:?} has a folder");
        assert!(!name.contains('\\'), "{name:?} has a backslash");
        assert!(!name.contains(':'), "{name:?} has a drive letter or stream");
        assert!(
            !name.chars().any(|c| c.is_control() || is_invisible(c)),
            "{name:?} has control or invisible characters"
        );
        assert!(
            name.chars().count() <= 120,
            "{name:?} is {} characters long",
            name.chars().count()
        );
        // Most file systems allow 255 bytes per name (NAME_MAX).
        assert!(
            name.len() <= 255,
            "{name:?} is {} bytes long: too long for a file name on most file systems",
            name.len()
        );
        assert_eq!(
            name.trim(),
            *name,
            "{name:?} has leading or trailing spaces"
        );
        assert!(
            seen.insert(name.to_lowercase()),
            "{name:?} is not unique (case-insensitively) in {names:?}"
        );
    }
}

/// Undoes HTML escaping (askama writes `&#60;`, others `&lt;`), to compare a page with plain text.
fn unescape(html: &str) -> String {
    html.replace("&#60;", "<")
        .replace("&lt;", "<")
        .replace("&#62;", ">")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// Checks that an HTML page shows nothing of a hostile name as markup.
fn assert_no_injected_markup(page: &str) {
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the page's own <script src=\"/static/app.js\"> may appear: {page}"
    );
    for raw in ["<script>alert", "<img src=x", "</script>.png"] {
        assert!(!page.contains(raw), "the page contains raw {raw:?}: {page}");
    }
    assert!(
        !page
            .chars()
            .any(|c| (c.is_control() && !matches!(c, '\n' | '\r' | '\t')) || is_invisible(c)),
        "the page contains control or invisible characters"
    );
}

async fn page(sys: &System, path: &str) -> (u16, String) {
    let res = sys.http.get(sys.url(path)).send().await.expect("GET");
    let code = res.status().as_u16();
    (code, res.text().await.expect("a body"))
}

fn assert_alive(pid: u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("the worker {pid} is gone: {e}"));
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    assert!(
        !matches!(state, Some("Z" | "X")),
        "the worker {pid} died: {stat}"
    );
}

/// Watches the children of a worker (when it processes images in child processes) and keeps
/// the largest peak RSS seen. Children live for milliseconds: this is a sample, for the record.
struct ChildSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, u64)>,
}

impl ChildSampler {
    fn start(parent: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut largest = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Some(pid) = entry
                        .file_name()
                        .to_str()
                        .and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                        continue;
                    };
                    let field = |name: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .and_then(|v| {
                                v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                            })
                    };
                    if field("PPid:") == Some(parent as u64) {
                        seen.insert(pid);
                        largest = largest.max(field("VmHWM:").unwrap_or(0));
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (seen.len(), largest)
        });
        Self { stop, thread }
    }

    /// How many children were seen, and the largest peak RSS among them (KiB).
    fn stop(self) -> (usize, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the sampler")
    }
}

/// A multipart body built by hand the way browsers build it: file names go as raw UTF-8, with
/// only `"`, CR and LF escaped (as `%22`, `%0D`, `%0A`), as the HTML standard says.
struct Browser {
    boundary: String,
    body: Vec<u8>,
}

impl Browser {
    fn new() -> Self {
        Self {
            boundary: format!("----WebKitFormBoundary{}", uuid::Uuid::new_v4().simple()),
            body: Vec::new(),
        }
    }

    fn text(mut self, name: &str, value: &str) -> Self {
        self.body.extend(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self
    }

    fn file(self, file_name: &str, bytes: &[u8]) -> Self {
        let escaped = file_name
            .replace('"', "%22")
            .replace('\r', "%0D")
            .replace('\n', "%0A");
        self.raw_file(escaped.as_bytes(), bytes)
    }

    /// A file part whose `filename` is sent exactly as given.
    fn raw_file(mut self, file_name: &[u8], bytes: &[u8]) -> Self {
        self.body.extend(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"",
                self.boundary
            )
            .as_bytes(),
        );
        self.body.extend(file_name);
        self.body
            .extend(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        self.body.extend(bytes);
        self.body.extend(b"\r\n");
        self
    }

    async fn post(mut self, sys: &System, path: &str) -> reqwest::Response {
        self.body
            .extend(format!("--{}--\r\n", self.boundary).as_bytes());
        sys.http
            .post(sys.url(path))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={}", self.boundary),
            )
            .body(self.body)
            .send()
            .await
            .expect("POST")
    }
}

/// The batch id a form submission was redirected to (303 to `/batches/{id}`).
fn redirected_id(res: &reqwest::Response) -> String {
    assert_eq!(res.status().as_u16(), 303, "the form did not redirect");
    let location = res.headers()["location"].to_str().unwrap();
    let id = location
        .strip_prefix("/batches/")
        .unwrap_or_else(|| panic!("redirected to {location}"));
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{location}");
    id.to_owned()
}

/// A CMYK JPEG (plain CMYK, or YCCK as Photoshop writes it) of one colour, with the Adobe
/// marker libjpeg adds. `ink` is the amount of each ink (0 = none, 255 = full); the file holds
/// it inverted, as Adobe's CMYK JPEGs do.
fn cmyk_jpeg(w: usize, h: usize, ink: [u8; 4], colorspace: turbojpeg::Colorspace) -> Vec<u8> {
    let stored = ink.map(|v| 255 - v);
    let pixels: Vec<u8> = (0..w * h).flat_map(|_| stored).collect();
    let mut c = turbojpeg::Compressor::new().expect("a compressor");
    c.set_quality(95).unwrap();
    c.set_subsamp(turbojpeg::Subsamp::None).unwrap();
    c.set_colorspace(colorspace).unwrap();
    let jpeg = c
        .compress_to_vec(turbojpeg::Image {
            pixels: &pixels[..],
            width: w,
            pitch: w * 4,
            height: h,
            format: turbojpeg::PixelFormat::CMYK,
        })
        .expect("compresses CMYK");
    let header = turbojpeg::read_header(&jpeg).expect("a header");
    assert_eq!(
        header.colorspace, colorspace,
        "the test image is not {colorspace:?}"
    );
    jpeg
}

fn near(px: &[u8], want: &[u8], tolerance: u8) -> bool {
    px.len() == want.len()
        && px
            .iter()
            .zip(want)
            .all(|(a, b)| a.abs_diff(*b) <= tolerance)
}

// ---------------------------------------------------------------------------------------------
// The corpus

enum Outcome {
    /// Fails alone; its reason contains every one of these.
    Fails(&'static [&'static str]),
    /// Comes out as `entry` in the zip, in `format`, `w` × `h`.
    Done {
        entry: &'static str,
        format: ImageFormat,
        size: (u32, u32),
    },
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    outcome: Outcome,
}

impl Case {
    fn fails(name: &'static str, bytes: Vec<u8>, reason: &'static [&'static str]) -> Self {
        Self {
            name,
            bytes,
            outcome: Outcome::Fails(reason),
        }
    }

    fn done(
        name: &'static str,
        bytes: Vec<u8>,
        entry: &'static str,
        format: ImageFormat,
        size: (u32, u32),
    ) -> Self {
        Self {
            name,
            bytes,
            outcome: Outcome::Done {
                entry,
                format,
                size,
            },
        }
    }
}

const RED_INK: [u8; 4] = [0, 255, 255, 0];
const DEEP: [u16; 3] = [0x1234, 0x8000, 0xfedc];
const PALETTE: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 0]];
const FRAMES: [[u8; 3]; 3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];
const GREY: [u8; 3] = [128, 128, 128];
const MARK: [u8; 3] = [230, 20, 20];
const BOMB_REASON: &[&str] = &["50000 × 50000", "more than the limit"];

fn not_an_image(len: usize, seed: u32) -> Vec<u8> {
    let bytes = random_bytes(len, seed);
    assert!(
        image::guess_format(&bytes).is_err(),
        "the random bytes happen to look like an image"
    );
    bytes
}

/// Broken and unusual files, mixed, in one batch.
fn corpus() -> Vec<Case> {
    use ImageFormat::*;
    let photo = photo_jpeg(400, 300, 5);
    let rgb = |w, h, c: [u8; 3]| {
        DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb(c)))
    };
    vec![
        Case::fails("empty.jpg", Vec::new(), &["the file is empty"]),
        Case::done(
            "one-pixel.png",
            flat_png(1, 1, [200, 10, 10, 255]),
            "one-pixel.png",
            Png,
            (1, 1),
        ),
        Case::fails("random.jpg", not_an_image(5000, 11), &["not an image"]),
        Case::done(
            "wide.jpg",
            flat_jpeg(20_000, 10, [90, 140, 190]),
            "wide.jpg",
            Jpeg,
            (20_000, 10),
        ),
        Case::fails(
            "truncated.jpg",
            photo[..photo.len() / 2].to_vec(),
            &["damaged or truncated"],
        ),
        Case::done(
            "cmyk.jpg",
            cmyk_jpeg(64, 48, RED_INK, turbojpeg::Colorspace::CMYK),
            "cmyk.jpg",
            Jpeg,
            (64, 48),
        ),
        Case::done(
            "ycck.jpg",
            cmyk_jpeg(64, 48, RED_INK, turbojpeg::Colorspace::YCCK),
            "ycck.jpg",
            Jpeg,
            (64, 48),
        ),
        Case::fails("bad-crc.png", png_with_bad_crc(32, 32), &["damaged"]),
        Case::done("deep.png", png16(60, 40, DEEP), "deep.png", Png, (60, 40)),
        Case::done("gray.png", gray_png(50, 30, 77), "gray.png", Png, (50, 30)),
        Case::fails(
            "garbage-idat.png",
            png_with_garbage_idat(32, 32),
            &["damaged"],
        ),
        Case::done(
            "palette.png",
            palette_png(40, 40, PALETTE),
            "palette.png",
            Png,
            (40, 40),
        ),
        Case::done(
            "alpha.png",
            half_transparent_png(64, 32, [0, 0, 255]),
            "alpha.png",
            Png,
            (64, 32),
        ),
        Case::fails("bomb.png", png_declaring(50_000, 50_000), BOMB_REASON),
        Case::done(
            "rotated.jpg",
            with_exif_orientation(&cornered_jpeg(320, 200, GREY, MARK, 48), 6),
            "rotated.jpg",
            Jpeg,
            (200, 320),
        ),
        Case::done(
            "animated.gif",
            animated_gif(48, 32, &FRAMES),
            "animated.gif",
            Gif,
            (48, 32),
        ),
        Case::fails(
            "<img src=x onerror=alert(1)>.jpg",
            not_an_image(300, 5),
            &["not an image"],
        ),
        Case::done(
            "photo.txt",
            flat_png(30, 20, [1, 2, 3, 255]),
            "photo.txt.png",
            Png,
            (30, 20),
        ),
        Case::done(
            "IMG.JPG",
            flat_jpeg(64, 48, [30, 60, 90]),
            "IMG.JPG",
            Jpeg,
            (64, 48),
        ),
        Case::done(
            "scan.tif",
            encode(&rgb(40, 30, [10, 100, 200]), Tiff),
            "scan.tif",
            Tiff,
            (40, 30),
        ),
        Case::done(
            "icon.bmp",
            encode(&rgb(24, 16, [200, 100, 10]), Bmp),
            "icon.bmp",
            Bmp,
            (24, 16),
        ),
        Case::done(
            "web.webp",
            encode(&rgb(36, 20, [5, 150, 75]), WebP),
            "web.webp",
            WebP,
            (36, 20),
        ),
    ]
}

fn frames_of_gif(data: &[u8]) -> usize {
    image::codecs::gif::GifDecoder::new(Cursor::new(data))
        .expect("a GIF")
        .into_frames()
        .count()
}

/// Checks a finished corpus batch: a status and reason per file, the report, the page, and the
/// zip's entries (names, formats, sizes); returns the decoded images by entry name.
async fn check_corpus_batch(
    sys: &System,
    id: &str,
    cases: &[Case],
) -> Vec<(&'static str, Vec<u8>, DynamicImage)> {
    let status = sys.wait_final(id, WAIT).await.expect("finishes");
    let failed: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fails(_)))
        .collect();
    assert_eq!(status["status"], "done", "{status:#}");
    assert_eq!(status["total"], cases.len(), "{status:#}");
    assert_eq!(status["failed"], failed.len(), "{status:#}");
    assert_eq!(status["done"], cases.len() - failed.len(), "{status:#}");

    // Every file has its own row, in the order sent, with its status and reason.
    let images = status["images"].as_array().expect("images");
    assert_eq!(images.len(), cases.len());
    for (case, row) in cases.iter().zip(images) {
        assert_eq!(row["name"], case.name, "{row}");
        match case.outcome {
            Outcome::Fails(reason) => {
                assert_eq!(row["status"], "failed", "{}: {row}", case.name);
                let error = row["error"].as_str().unwrap_or_default();
                for part in reason {
                    assert!(
                        error.contains(part),
                        "{}: the reason {error:?} does not say {part:?}",
                        case.name
                    );
                }
            }
            Outcome::Done { .. } => {
                assert_eq!(row["status"], "done", "{}: {row}", case.name);
                assert_eq!(row["error"], Value::Null, "{}: {row}", case.name);
            }
        }
    }

    // The page shows every file with its status and reason, and escapes the hostile name.
    let (code, html) = page(sys, &format!("/batches/{id}")).await;
    assert_eq!(code, 200);
    assert_no_injected_markup(&html);
    let text = unescape(&html);
    for (case, row) in cases.iter().zip(images) {
        assert!(text.contains(case.name), "the page lacks {:?}", case.name);
        if let Some(error) = row["error"].as_str() {
            assert!(text.contains(error), "the page lacks the reason {error:?}");
        }
    }

    // The zip: the valid files under their names, in order, then the report of failures.
    let (code, zip) = sys.download(id).await.expect("download");
    assert_eq!(code, 200);
    let entries = unzip(&zip);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected: Vec<&str> = cases
        .iter()
        .filter_map(|c| match c.outcome {
            Outcome::Done { entry, .. } => Some(entry),
            Outcome::Fails(_) => None,
        })
        .collect();
    expected.push("FAILED-FILES.txt");
    assert_eq!(names, expected);
    assert_safe_entry_names(&names);

    let report = String::from_utf8(entries.last().unwrap().1.clone()).expect("a text report");
    for (case, row) in cases.iter().zip(images) {
        if let Some(error) = row["error"].as_str() {
            let line = format!("- {}: {error}", case.name);
            assert!(
                report.contains(&line),
                "the report lacks {line:?}: {report}"
            );
        }
    }

    let mut out = Vec::new();
    for (case, (entry, data)) in cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Done { .. }))
        .zip(&entries)
    {
        let Outcome::Done { format, size, .. } = case.outcome else {
            unreachable!()
        };
        assert_eq!(
            image::guess_format(data).ok(),
            Some(format),
            "{entry} is not {format:?}"
        );
        let img = image::load_from_memory_with_format(data, format)
            .unwrap_or_else(|e| panic!("{entry} does not decode: {e}"));
        assert_eq!(img.dimensions(), size, "{entry}");
        out.push((case.name, data.clone(), img));
    }
    out
}

fn output<'a>(
    outputs: &'a [(&str, Vec<u8>, DynamicImage)],
    name: &str,
) -> &'a (&'a str, Vec<u8>, DynamicImage) {
    outputs
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no output for {name}"))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_corpus_through_the_api_fails_file_by_file_and_the_rest_comes_out_right() {
    let sys = System::start("hostile-api", Options::default())
        .await
        .expect("system starts");
    let cases = corpus();
    let files: Vec<(&str, Vec<u8>)> = cases.iter().map(|c| (c.name, c.bytes.clone())).collect();
    let started = Instant::now();
    // The default pipeline: the tiled watermark.
    let id = sys.submit_ok(&files, None).await.expect("accepted");
    let outputs = check_corpus_batch(&sys, &id, &cases).await;
    eprintln!(
        "{} files through the API in {:?}; worker peak RSS {} MiB",
        cases.len(),
        started.elapsed(),
        proc_kib(sys.worker_pids()[0], "VmHWM") / 1024
    );

    // What the watermark does to the unusual kinds of image.
    let (_, _, gray) = output(&outputs, "gray.png");
    assert_eq!(gray.color(), ColorType::L8, "grey stays grey");
    let (_, _, alpha) = output(&outputs, "alpha.png");
    assert!(alpha.color().has_alpha(), "transparency is kept");
    assert_eq!(
        alpha.to_rgba8().get_pixel(0, 31).0[3],
        0,
        "a transparent corner stays transparent"
    );
    let (_, _, deep) = output(&outputs, "deep.png");
    assert_eq!(
        deep.color(),
        ColorType::Rgb8,
        "16-bit comes out 8-bit once drawn on"
    );
    let (_, _, palette) = output(&outputs, "palette.png");
    assert!(palette.color().has_color());
    // An animated GIF: the first frame is processed; the result is a still GIF.
    let (_, gif, _) = output(&outputs, "animated.gif");
    assert_eq!(frames_of_gif(gif), 1, "the result has one frame");
    // The watermark was drawn (it covers part of every image).
    for (name, color) in [("IMG.JPG", [30, 60, 90]), ("wide.jpg", [90, 140, 190])] {
        let (_, _, img) = output(&outputs, name);
        assert!(
            img.to_rgb8().pixels().any(|p| !near(&p.0, &color, 16)),
            "no watermark on {name}"
        );
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_corpus_through_the_browser_form_keeps_every_valid_pixel() {
    let sys = System::start("hostile-form", Options::default())
        .await
        .expect("system starts");
    let cases = corpus();
    // A resize to a box no image reaches: the pixels must come out as they went in.
    let mut form = Browser::new()
        .text("form", "1")
        .text("task", "resize")
        .text("resize.max_width", "20000")
        .text("resize.max_height", "20000");
    for case in &cases {
        form = form.file(case.name, &case.bytes);
    }
    let res = form.post(&sys, "/batches").await;
    let id = redirected_id(&res);
    let outputs = check_corpus_batch(&sys, &id, &cases).await;

    let px = |name: &str, x: u32, y: u32| output(&outputs, name).2.to_rgba8().get_pixel(x, y).0;
    assert_eq!(px("one-pixel.png", 0, 0), [200, 10, 10, 255]);
    assert_eq!(px("photo.txt", 15, 10), [1, 2, 3, 255]);
    assert!(near(&px("wide.jpg", 19_990, 5)[..3], &[90, 140, 190], 8));
    assert!(near(&px("IMG.JPG", 32, 24)[..3], &[30, 60, 90], 8));
    assert_eq!(px("scan.tif", 20, 15), [10, 100, 200, 255]);
    assert_eq!(px("icon.bmp", 12, 8), [200, 100, 10, 255]);
    assert_eq!(px("web.webp", 18, 10), [5, 150, 75, 255]);

    // CMYK and YCCK (Adobe, inverted) JPEGs: red ink comes out red, as a JPEG in RGB.
    for name in ["cmyk.jpg", "ycck.jpg"] {
        let p = px(name, 32, 24);
        assert!(
            p[0] > 200 && p[1] < 60 && p[2] < 60,
            "{name}: red ink came out as {p:?}"
        );
    }

    // 16-bit stays 16-bit, exactly, when nothing draws on it.
    let (_, _, deep) = output(&outputs, "deep.png");
    assert_eq!(deep.color(), ColorType::Rgb16);
    assert_eq!(deep.to_rgb16().get_pixel(30, 20).0, DEEP);
    let (_, _, gray) = output(&outputs, "gray.png");
    assert_eq!(gray.color(), ColorType::L8);
    assert_eq!(gray.to_luma8().get_pixel(25, 15).0, [77]);

    // Palette: every quadrant keeps its colour.
    for (i, (x, y)) in [(10, 10), (30, 10), (10, 30), (30, 30)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(&px("palette.png", x, y)[..3], &PALETTE[i], "quadrant {i}");
    }
    // Transparency: the left half stays fully transparent, the right half opaque blue.
    assert_eq!(px("alpha.png", 5, 5)[3], 0);
    assert_eq!(px("alpha.png", 60, 5), [0, 0, 255, 255]);

    // EXIF orientation 6 ("rotate 90° clockwise"): the block in the stored top-left corner is
    // now at the top right of a 200 × 320 image.
    let rotated = |x, y| px("rotated.jpg", x, y);
    assert!(
        near(&rotated(200 - 20, 20)[..3], &MARK, 30),
        "{:?}",
        rotated(180, 20)
    );
    for (x, y) in [(20, 20), (20, 300), (180, 300)] {
        assert!(
            near(&rotated(x, y)[..3], &GREY, 20),
            "({x},{y}) = {:?}",
            rotated(x, y)
        );
    }

    // Animated GIF: the first frame (red), as a still image.
    let (_, gif, _) = output(&outputs, "animated.gif");
    assert_eq!(frames_of_gif(gif), 1);
    assert!(
        near(&px("animated.gif", 24, 16)[..3], &FRAMES[0], 8),
        "{:?}",
        px("animated.gif", 24, 16)
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn decompression_bombs_are_refused_from_their_header_and_the_image_children_stay_small() {
    // Workers that decode in child processes cap each child's address space: at 512 MiB, a
    // child that allocated the declared pixels (7 to 17 GiB) would die, and the image would fail
    // with another reason than the one checked below.
    let sys = System::start(
        "bombs",
        Options::default().env("IMAGE_MEMORY_LIMIT_MB", 512),
    )
    .await
    .expect("system starts");
    let pid = sys.worker_pids()[0];
    // A first, ordinary batch: the worker is up and has processed an image before measuring.
    let warm_up = sys
        .submit_ok(&[("warm-up.png", flat_png(8, 8, [1, 1, 1, 255]))], None)
        .await
        .expect("accepted");
    sys.wait_final(&warm_up, WAIT).await.expect("finishes");
    let rss_before = proc_kib(pid, "VmHWM");
    let children = ChildSampler::start(pid);
    let files = vec![
        ("bomb.png", png_declaring(50_000, 50_000)),
        ("bomb.jpg", jpeg_declaring(65_000, 65_000)),
        ("bomb.gif", gif_declaring(65_535, 65_535)),
        ("fine.png", flat_png(1, 1, [1, 1, 1, 255])),
    ];
    for (name, bytes) in &files {
        assert!(bytes.len() < 20_000, "{name} is {} bytes", bytes.len());
    }
    let id = sys.submit_ok(&files, None).await.expect("accepted");
    let status = sys.wait_final(&id, WAIT).await.expect("finishes");
    assert_eq!(status["status"], "done", "{status:#}");
    let reasons = ["50000 × 50000", "65000 × 65000", "65535 × 65535"];
    for (row, dims) in status["images"].as_array().unwrap().iter().zip(reasons) {
        assert_eq!(row["status"], "failed", "{row}");
        let error = row["error"].as_str().unwrap();
        assert!(
            error.contains(dims) && error.contains("more than the limit of 50000000 pixels"),
            "{}: {error}",
            row["name"]
        );
    }
    assert_eq!(status["images"][3]["status"], "done");

    assert_alive(pid);
    let (seen, child_rss) = children.stop();
    eprintln!(
        "{seen} image child process(es) sampled, largest peak RSS {} MiB (before the bombs the \
         worker itself peaked at {} MiB)",
        child_rss / 1024,
        rss_before / 1024,
    );
    // The decoding happens in the image children: they are what a bomb would swell. Each bomb
    // was refused from its header, so no child came near the pixels it declared (a 50,000 ×
    // 50,000 RGBA image is 9.3 GiB).
    assert!(seen >= 1, "no image child process was seen");
    assert!(
        child_rss < 128 * 1024,
        "an image child's peak RSS reached {} MiB",
        child_rss / 1024
    );
    sys.shutdown().await;
}

/// Names as a person, a browser, or an attacker might send them, and the entry each must get.
const NAMES: &[(&str, &str)] = &[
    ("../../etc/passwd.jpg", "passwd.jpg"),
    ("/etc/shadow.png", "shadow.png"),
    ("dir/sub/name.png", "name.png"),
    ("C:\\Users\\me\\win.png", "win.png"),
    ("fïlé-名前-😀.png", "fïlé-名前-😀.png"),
    ("photo\u{202E}gnp.exe", "photognp.exe.png"),
    ("tab\there\u{85}nel\u{9b}csi.png", "tabherenelcsi.png"),
    ("<script>alert(1)</script>.png", "script_.png"),
    ("same.png", "same.png"),
    ("same.png", "same (2).png"),
    ("SAME.png", "SAME (3).png"),
    ("FAILED-FILES.txt", "FAILED-FILES.txt.png"),
    ("..", "unnamed.png"),
    ("\u{202E}\u{200B}", "unnamed (2).png"),
    ("  .hidden.png", "hidden.png"),
    ("a:b*c?\"d\".png", ""), // the quote travels differently by client; only safety is checked
    ("trailing dots...  ", "trailing dots.png"),
];

fn long_names() -> Vec<String> {
    vec!["x".repeat(300) + ".png", "名".repeat(300) + ".png"]
}

/// Checks a finished batch of [`NAMES`] and [`long_names`]: safe unique entries, an escaped page.
async fn check_names_batch(sys: &System, id: &str) {
    let status = sys.wait_final(id, WAIT).await.expect("finishes");
    assert_eq!(status["status"], "done", "{status:#}");
    let total = NAMES.len() + long_names().len();
    assert_eq!(status["done"], total, "{status:#}");
    for row in status["images"].as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        assert!(
            !name.chars().any(|c| c.is_control() || is_invisible(c)),
            "the API shows {name:?}"
        );
        assert!(
            name.chars().count() <= 255,
            "a display name of {} characters",
            name.chars().count()
        );
    }

    let (code, html) = page(sys, &format!("/batches/{id}")).await;
    assert_eq!(code, 200);
    assert_no_injected_markup(&html);
    assert!(
        unescape(&html).contains("<script>alert(1)</script>.png"),
        "the name is shown, escaped"
    );

    let (code, zip) = sys.download(id).await.expect("download");
    assert_eq!(code, 200);
    let entries = unzip(&zip);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), total, "{names:?}");
    assert_safe_entry_names(&names);
    for ((sent, want), got) in NAMES.iter().zip(&names) {
        if !want.is_empty() {
            assert_eq!(got, want, "sent as {sent:?}");
        }
    }
    let long = &names[NAMES.len()..];
    assert!(
        long[0].starts_with("xxxxxxxx") && long[0].ends_with(".png"),
        "{}",
        long[0]
    );
    assert!(
        long[1].starts_with("名名名") && long[1].ends_with(".png"),
        "{}",
        long[1]
    );
    for (_, data) in &entries {
        image::load_from_memory(data).expect("every entry is an image");
    }
}

fn name_files() -> Vec<(String, Vec<u8>)> {
    NAMES
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(long_names())
        .enumerate()
        .map(|(i, name)| {
            let bytes = if name.ends_with(".jpg") {
                flat_jpeg(8 + i as u32, 8, [9, 9, 9])
            } else {
                flat_png(8 + i as u32, 8, [9, 9, 9, 255])
            };
            (name, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_file_names_become_safe_unique_zip_entries_and_escaped_text() {
    let sys = System::start("names", Options::default())
        .await
        .expect("system starts");
    let files = name_files();

    // Through the API, as reqwest (like curl) sends names.
    let api: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let id = sys.submit_ok(&api, None).await.expect("accepted");
    check_names_batch(&sys, &id).await;

    // Through the form, as a browser sends them (raw UTF-8; `"`, CR and LF percent-encoded).
    let mut form = Browser::new().text("form", "1").text("task", "grayscale");
    for (name, bytes) in &files {
        form = form.file(name, bytes);
    }
    let id = redirected_id(&form.post(&sys, "/batches").await);
    check_names_batch(&sys, &id).await;

    // A name with CR and LF (sent as %0D%0A by browsers) stays on one line in the report.
    let id = redirected_id(
        &Browser::new()
            .text("form", "1")
            .text("task", "grayscale")
            .file("line\r\nbreak.jpg", &not_an_image(100, 3))
            .file("ok.png", &flat_png(4, 4, [0, 0, 0, 255]))
            .post(&sys, "/batches")
            .await,
    );
    let status = sys.wait_final(&id, WAIT).await.unwrap();
    assert_eq!(status["images"][0]["status"], "failed");
    let (_, zip) = sys.download(&id).await.unwrap();
    let entries = unzip(&zip);
    let report = String::from_utf8(entries[1].1.clone()).unwrap();
    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(lines.len(), 1, "{report:?}");
    assert!(lines[0].contains("break.jpg: not an image"), "{report:?}");

    // A raw control character in a part header is not valid multipart: the upload is refused
    // as a whole, clearly, and the file received before it is not kept.
    let before = sys.count("SELECT count(*) FROM batches").await;
    let res = Browser::new()
        .raw_file(b"first.png", &flat_png(4, 4, [0, 0, 0, 255]))
        .raw_file(b"bell\x07.png", &flat_png(4, 4, [0, 0, 0, 255]))
        .post(&sys, "/api/batches")
        .await;
    let code = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{body}"
    );
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, before);
    let objects = sys.objects().await.unwrap();
    let batches: std::collections::HashSet<&str> =
        objects.iter().filter_map(|k| k.split('/').nth(1)).collect();
    assert_eq!(
        batches.len() as i64,
        before,
        "a refused upload left files: {objects:?}"
    );
    sys.shutdown().await;
}

/// A body of endless form fields, as an attacker would send it (4,000 fields of 60 KB: 240 MB
/// in one POST), is refused as soon as the fields' budget is spent, not at its end; so are
/// endless small fields and endless parts of no known name; nothing is left.
#[tokio::test(flavor = "multi_thread")]
async fn endless_form_fields_are_refused_at_once_and_leave_nothing() {
    let sys = System::start("hostile-fields", Options::default())
        .await
        .expect("system starts");
    let big = "v".repeat(60_000);
    for (name, value, says) in [
        ("watermark.text", big.as_str(), "besides the files"),
        ("watermark.opacity", "0.5", "too many fields"),
        ("something-else", big.as_str(), "besides the files"),
    ] {
        let upload = sys.raw_upload("/api/batches").await.expect("connects");
        let (code, body, sent) = upload
            .flood(name, value, 4_000, Duration::ZERO)
            .await
            .expect("an answer");
        assert_eq!(code, 413, "{name}: {body}");
        assert!(body.contains(says), "{name}: {body}");
        // The budget is 512 KiB and 256 fields; what was sent beyond it sat in buffers.
        assert!(
            sent < 32 * 1024 * 1024,
            "{name}: the answer came only after {sent} bytes"
        );
        println!("{name}: refused after {} KiB of fields", sent / 1024);
    }
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 0);
    assert_eq!(sys.objects().await.unwrap(), Vec::<String>::new());
    sys.shutdown().await;
}

/// Beyond `MAX_CONCURRENT_UPLOADS` uploads at once, a submission is answered 503 with
/// `Retry-After`, through the API and the form alike; the slot is free again once the upload
/// in progress ends.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_beyond_the_limit_get_503_with_retry_after() {
    let sys = System::start(
        "hostile-busy",
        Options::default().env("MAX_CONCURRENT_UPLOADS", 1),
    )
    .await
    .expect("system starts");
    let file = png_of_len(8, 8, 2_000);
    // One upload in progress: its first file is in, the rest has not come.
    let mut holding = sys.raw_upload("/api/batches").await.expect("connects");
    holding.file("files", "a.png", &file).await.expect("sends");
    let started = Instant::now();
    while sys.count("SELECT count(*) FROM batches").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the upload never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = reqwest::Client::new();
    for path in ["/api/batches", "/batches"] {
        let form = reqwest::multipart::Form::new().part(
            "files",
            reqwest::multipart::Part::bytes(file.clone()).file_name("b.png"),
        );
        let res = client
            .post(sys.url(path))
            .multipart(form)
            .send()
            .await
            .expect("answers");
        assert_eq!(res.status().as_u16(), 503, "{path}");
        assert_eq!(
            res.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("5"),
            "{path}"
        );
        let body = res.text().await.unwrap_or_default();
        assert!(
            body.contains("uploads are arriving already"),
            "{path}: {body}"
        );
    }
    let (code, body) = holding.finish().await.expect("an answer");
    assert_eq!(code, 202, "{body}");
    // The slot is free again.
    let (code, body) = sys.submit(&[("c.png", file.clone())], None).await.unwrap();
    assert_eq!(code, 202, "{body}");
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 2);
    sys.shutdown().await;
}

/// A body that trickles, or goes quiet, is refused with 408 once a window passes below the
/// pace (here 10 KB/s over 1 s), leaving nothing; a client at an ordinary speed is not bothered.
#[tokio::test(flavor = "multi_thread")]
async fn trickling_or_silent_bodies_are_cut_off_after_one_window() {
    let sys = System::start(
        "hostile-slow",
        Options::default()
            .env("UPLOAD_WINDOW_SECONDS", 1)
            .env("UPLOAD_MIN_BYTES_PER_SECOND", 10_000),
    )
    .await
    .expect("system starts");
    for (what, count, pause) in [
        (
            "a trickle of a field every 100 ms",
            600,
            Duration::from_millis(100),
        ),
        ("a body that never comes", 0, Duration::ZERO),
    ] {
        let started = Instant::now();
        let upload = sys.raw_upload("/api/batches").await.expect("connects");
        let (code, body, _) = upload
            .flood("watermark.opacity", "0.5", count, pause)
            .await
            .expect("an answer");
        assert_eq!(code, 408, "{what}: {body}");
        assert!(body.contains("too slowly"), "{what}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: cut off only after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 0);
    let (code, body) = sys
        .submit(&[("fine.png", png_of_len(8, 8, 50_000))], None)
        .await
        .unwrap();
    assert_eq!(code, 202, "{body}");
    sys.shutdown().await;
}

/// A client that trickles its request headers is disconnected once `HEADER_READ_TIMEOUT_SECONDS`
/// (here 1) has passed, and does not keep `web` from answering others.
#[tokio::test(flavor = "multi_thread")]
async fn trickled_headers_are_disconnected_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sys = System::start(
        "hostile-headers",
        Options::default().env("HEADER_READ_TIMEOUT_SECONDS", 1),
    )
    .await
    .expect("system starts");
    let addr = sys.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connects");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        // Returns when web closes the connection (end of stream, or a reset).
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        started.elapsed()
    });
    writer
        .write_all(format!("POST /api/batches HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await
        .expect("writes");
    // A header byte every 100 ms, for at most 20 s.
    for _ in 0..200 {
        if closed.is_finished() || writer.write_all(b"X").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the trickling client is still connected after 25 s")
        .expect("reader");
    assert!(
        after < Duration::from_secs(10),
        "the trickling client was kept for {after:?}"
    );
    let res = sys
        .http
        .get(sys.url("/healthz"))
        .send()
        .await
        .expect("answers");
    assert_eq!(res.status().as_u16(), 200);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_answer_413_or_fail_the_file_and_leave_nothing_of_the_refused_parts() {
    let sys = System::start(
        "hostile-limits",
        Options::default()
            .env("MAX_FILE_BYTES", 20_000)
            .env("MAX_FILES_PER_BATCH", 5)
            .env("MAX_BATCH_BYTES", 60_000),
    )
    .await
    .expect("system starts");
    let small = |i: u32| png_of_len(4 + i, 4, 1_000);
    let medium = |i: u32| png_of_len(4 + i, 4, 19_000);
    let nothing_left = || async {
        assert_eq!(sys.count("SELECT count(*) FROM batches").await, 0);
        assert_eq!(sys.count("SELECT count(*) FROM images").await, 0);
        assert_eq!(sys.objects().await.unwrap(), Vec::<String>::new());
    };

    // Too many files: the first five are stored before the sixth is seen; all go.
    let six: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("f{i}.png"), small(i))).collect();
    let six_ref: Vec<(&str, Vec<u8>)> = six.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (code, body) = sys.submit(&six_ref, None).await.unwrap();
    assert_eq!(code, 413, "{body}");
    let error = body["error"]["message"].as_str().unwrap();
    assert!(
        error.contains("at most 5") && error.contains("MAX_FILES_PER_BATCH"),
        "{error}"
    );
    nothing_left().await;

    let mut form = Browser::new().text("form", "1").text("task", "grayscale");
    for (name, bytes) in &six {
        form = form.file(name, bytes);
    }
    let res = form.post(&sys, "/batches").await;
    assert_eq!(res.status().as_u16(), 413);
    let html = unescape(&res.text().await.unwrap());
    assert!(
        html.contains("MAX_FILES_PER_BATCH") && html.contains("id=\"upload\""),
        "{html}"
    );
    nothing_left().await;

    // Too many bytes: three files of 19,000 bytes are stored before the fourth passes 60,000.
    let four: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("m{i}.png"), medium(i))).collect();
    let four_ref: Vec<(&str, Vec<u8>)> =
        four.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (code, body) = sys.submit(&four_ref, None).await.unwrap();
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MAX_BATCH_BYTES"),
        "{body}"
    );
    nothing_left().await;

    let mut form = Browser::new().text("form", "1").text("task", "grayscale");
    for (name, bytes) in &four {
        form = form.file(name, bytes);
    }
    let res = form.post(&sys, "/batches").await;
    assert_eq!(res.status().as_u16(), 413);
    assert!(res.text().await.unwrap().contains("MAX_BATCH_BYTES"));
    nothing_left().await;

    // One file larger than the whole batch may be.
    let (code, body) = sys
        .submit(&[("huge.png", png_of_len(8, 8, 200_000))], None)
        .await
        .unwrap();
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MAX_BATCH_BYTES"),
        "{body}"
    );
    nothing_left().await;

    // One file over MAX_FILE_BYTES (through the form) fails alone, and is not stored.
    let res = Browser::new()
        .text("form", "1")
        .text("task", "grayscale")
        .file("ok.png", &small(1))
        .file("big.png", &png_of_len(8, 8, 25_000))
        .file("ok2.png", &medium(2))
        .post(&sys, "/batches")
        .await;
    let id = redirected_id(&res);
    let status = sys.wait_final(&id, WAIT).await.unwrap();
    assert_eq!(status["status"], "done", "{status:#}");
    let rows = status["images"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["done", "failed", "done"]
    );
    let error = rows[1]["error"].as_str().unwrap();
    assert!(
        error.contains("larger than the limit of 19.5 KiB (MAX_FILE_BYTES)"),
        "{error}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT input_bytes FROM images WHERE name = 'big.png'")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(stored, 25_000, "the size of the refused file is recorded");
    let objects = sys.objects().await.unwrap();
    assert_eq!(
        objects.iter().filter(|k| k.contains("/in/")).count(),
        2,
        "only the two accepted originals are stored: {objects:?}"
    );
    assert_eq!(
        objects.len(),
        4,
        "two originals and two results (no zip is stored): {objects:?}"
    );
    let (_, zip) = sys.download(&id).await.unwrap();
    let names: Vec<String> = unzip(&zip).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["ok.png", "ok2.png", "FAILED-FILES.txt"]);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_off_in_the_middle_of_a_multipart_upload_leaves_no_parts_behind() {
    // Files over 8 MiB go to storage as a multipart upload; cut one off past the batch limit.
    let sys = System::start(
        "hostile-multipart",
        Options::default()
            .workers(&[])
            .env("MAX_FILE_BYTES", 64 << 20)
            .env("MAX_BATCH_BYTES", 9 << 20),
    )
    .await
    .expect("system starts");
    let big = png_of_len(16, 16, (9 << 20) + 300_000);
    let (code, body) = sys.submit(&[("big.png", big)], None).await.unwrap();
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("9 MiB per batch (MAX_BATCH_BYTES)"),
        "{body}"
    );
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 0);
    assert_eq!(sys.objects().await.unwrap(), Vec::<String>::new());
    let unfinished = sys.storage.abort_uploads("").await.unwrap();
    assert_eq!(
        unfinished, 0,
        "the refused upload left an unfinished multipart upload"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_parameters_get_400_naming_the_problem_and_create_nothing() {
    let sys = System::start("hostile-params", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let file = || vec![("a.png", flat_png(4, 4, [0, 0, 0, 255]))];

    let cases: Vec<(Value, &str)> = vec![
        (
            json!([{"task": "sharpen"}]),
            "step 1: unknown task \"sharpen\" (known: watermark, resize, grayscale)",
        ),
        (
            json!([{"task": "watermark", "opacity": 1.5}]),
            "step 1: watermark.opacity: must be between 0 and 1, got 1.5",
        ),
        (
            json!([{"task": "watermark", "opacity": -0.1}]),
            "watermark.opacity: must be between 0 and 1",
        ),
        (
            json!([{"task": "watermark", "opacity": "half"}]),
            "watermark.opacity: must be a number",
        ),
        (
            json!([{"task": "resize", "max_width": 1_000_000_000}]),
            "resize.max_width: must be between 1 and 20000, got 1000000000",
        ),
        (
            json!([{"task": "resize", "max_height": 0}]),
            "resize.max_height: must be between 1 and 20000",
        ),
        (
            json!([{"task": "resize", "max_width": 12.5}]),
            "resize.max_width: must be a whole number",
        ),
        (
            json!([{"task": "resize", "max_width": 1e300}]),
            "resize.max_width: must be a whole number",
        ),
        (
            json!([{"task": "watermark", "scale": 1000}]),
            "watermark.scale: must be between 0.02 and 1, got 1000",
        ),
        (
            json!([{"task": "watermark", "rotation": 1e308}]),
            "watermark.rotation: must be between -180 and 180",
        ),
        (
            json!([{"task": "watermark", "margin": 5}]),
            "watermark.margin: must be between 0 and 0.45",
        ),
        (
            json!([{"task": "watermark", "position": "everywhere"}]),
            "watermark.position: must be one of tiled, top-left",
        ),
        (
            json!([{"task": "watermark", "color": "red"}]),
            "watermark.color: must be a colour like #ff8800",
        ),
        (
            json!([{"task": "watermark", "text": "x".repeat(101)}]),
            "watermark.text: must be at most 100 characters",
        ),
        (
            json!([{"task": "watermark", "text": "a\u{7}b"}]),
            "watermark.text: must not contain control characters",
        ),
        (
            json!([{"task": "watermark", "size": 3}]),
            "watermark: unknown parameter \"size\"",
        ),
        (
            json!([{"task": "grayscale", "amount": 3}]),
            "grayscale: takes no parameters, got \"amount\"",
        ),
        (
            json!([{"task": "resize", "enlarge": "yes"}]),
            "resize.enlarge: must be true or false",
        ),
        (
            json!([{"task": "grayscale"}, {"task": "resize", "max_width": -1}]),
            "step 2: resize.max_width",
        ),
        (json!([]), "at least one step"),
        (
            json!(vec![json!({"task": "grayscale"}); 9]),
            "at most 8 steps",
        ),
        (json!({"task": "watermark"}), "must be a JSON list of steps"),
        (json!([42]), "step 1: must be an object"),
        (
            json!([{"name": "watermark"}]),
            "step 1: \"task\" must name a task",
        ),
    ];
    for (pipeline, needle) in &cases {
        let (code, body) = sys.submit(&file(), Some(pipeline)).await.unwrap();
        assert_eq!(code, 400, "{pipeline} answered {body}");
        let error = body["error"]["message"].as_str().unwrap();
        assert!(error.starts_with("invalid pipeline: "), "{error}");
        assert!(
            error.contains(needle),
            "{pipeline}: {error:?} does not say {needle:?}"
        );
    }

    // Text that is not JSON, or JSON numbers out of any range.
    for (raw, needle) in [
        ("watermark please", "not valid JSON"),
        (
            "[{\"task\": \"watermark\", \"opacity\": 1e999}]",
            "not valid JSON",
        ),
    ] {
        let res = Browser::new()
            .text("pipeline", raw)
            .file("a.png", &flat_png(4, 4, [0, 0, 0, 255]))
            .post(&sys, "/api/batches")
            .await;
        assert_eq!(res.status().as_u16(), 400);
        let body: Value = res.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{raw}: {body}"
        );
    }
    // A pipeline field larger than any pipeline.
    let res = Browser::new()
        .text("pipeline", &" ".repeat(70_000))
        .file("a.png", &flat_png(4, 4, [0, 0, 0, 255]))
        .post(&sys, "/api/batches")
        .await;
    assert_eq!(res.status().as_u16(), 413);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"pipeline\" is too long"),
        "{body}"
    );

    // The form: the same problems come back as the form with the message (escaped).
    let form_cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("task", "sharpen")], "unknown task \"sharpen\""),
        (
            vec![("task", "watermark"), ("watermark.opacity", "1.5")],
            "watermark.opacity: must be between 0 and 1, got 1.5",
        ),
        (
            vec![("task", "watermark"), ("watermark.opacity", "abc")],
            "watermark.opacity: must be a number",
        ),
        (
            vec![("task", "watermark"), ("watermark.opacity", "NaN")],
            "watermark.opacity: must be a number",
        ),
        (
            vec![("task", "watermark"), ("watermark.scale", "1000")],
            "watermark.scale: must be between 0.02 and 1, got 1000",
        ),
        (
            vec![("task", "resize"), ("resize.max_width", "1000000000")],
            "resize.max_width: must be between 1 and 20000, got 1000000000",
        ),
        (
            vec![("task", "resize"), ("resize.max_height", "1e9")],
            "resize.max_height: must be between 1 and 20000",
        ),
        (
            vec![("task", "<script>alert(1)</script>")],
            "unknown task \"<script>alert(1)</script>\"",
        ),
        (vec![], "choose at least one kind of processing"),
    ];
    for (fields, needle) in &form_cases {
        let mut form = Browser::new().text("form", "1");
        for (k, v) in fields {
            form = form.text(k, v);
        }
        let res = form
            .file("a.png", &flat_png(4, 4, [0, 0, 0, 255]))
            .post(&sys, "/batches")
            .await;
        assert_eq!(res.status().as_u16(), 400, "{fields:?}");
        let html = res.text().await.unwrap();
        assert_no_injected_markup(&html);
        assert!(html.contains("id=\"upload\""), "the form comes back");
        assert!(
            unescape(&html).contains(needle),
            "{fields:?}: the page does not say {needle:?}"
        );
    }

    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 0);
    assert_eq!(sys.count("SELECT count(*) FROM images").await, 0);
    assert_eq!(sys.objects().await.unwrap(), Vec::<String>::new());
    sys.shutdown().await;
}

/// One of the hostile bodies of [`four_hostile_bodies_at_once_leave_web_flat_and_others_served`].
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Form fields of 60 KB, one after another, up to 500 MB (chunked).
    Fields,
    /// Files one byte over `MAX_FILE_BYTES`, each an image by its first bytes, up to 520 MiB
    /// (chunked): each is refused alone, until the batch's limit is crossed.
    OversizedFiles,
    /// Says it is 500 MB, then trickles one file at 1 KB/s.
    Trickle,
    /// Says it is 500 MB, sends its choices and one ordinary image, then nothing, ever.
    Endless,
}

const HOSTILE_BOUNDARY: &str = "wmhostileboundary";
/// What each hostile body says (or means to be) long.
const HOSTILE_BYTES: u64 = 500_000_000;

/// The body of a request in flight: each `send` is framed as a chunk when the body is chunked,
/// and fails once the server has answered or stopped reading for 5 s.
struct HostileBody {
    writer: tokio::net::tcp::OwnedWriteHalf,
    chunked: bool,
    sent: u64,
    answer: tokio::task::JoinHandle<Vec<u8>>,
}

impl HostileBody {
    async fn send(&mut self, data: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        if self.answer.is_finished() {
            return false;
        }
        let framed;
        let bytes = if self.chunked {
            framed = [
                format!("{:x}\r\n", data.len()).as_bytes(),
                data,
                b"\r\n".as_slice(),
            ]
            .concat();
            &framed
        } else {
            data
        };
        match tokio::time::timeout(Duration::from_secs(5), self.writer.write_all(bytes)).await {
            Ok(Ok(())) => {
                self.sent += data.len() as u64;
                true
            }
            _ => false,
        }
    }
}

fn part_head(disposition: &str) -> Vec<u8> {
    format!("Content-Disposition: form-data; {disposition}\r\n\r\n").into_bytes()
}

fn part_end() -> Vec<u8> {
    format!("\r\n--{HOSTILE_BOUNDARY}\r\n").into_bytes()
}

/// Sends one hostile body to `POST /api/batches` (every loop bounded in count and time) while
/// reading the answer: its status, its body, the bytes sent and how long it took.
async fn send_hostile(
    addr: String,
    kind: Hostile,
    max_file_bytes: u64,
    image: Vec<u8>,
) -> (u16, String, u64, Duration) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connects");
    let (mut reader, writer) = stream.into_split();
    let answer = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(120), reader.read_to_end(&mut answer)).await;
        answer
    });
    let chunked = matches!(kind, Hostile::Fields | Hostile::OversizedFiles);
    let mut body = HostileBody {
        writer,
        chunked: false,
        sent: 0,
        answer,
    };
    let length = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {HOSTILE_BYTES}")
    };
    let head = format!(
        "POST /api/batches HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={HOSTILE_BOUNDARY}\r\n{length}\r\n\r\n"
    );
    assert!(body.send(head.as_bytes()).await, "{kind:?}: the head");
    body.sent = 0;
    body.chunked = chunked;
    body.send(format!("--{HOSTILE_BOUNDARY}\r\n").as_bytes())
        .await;
    let png_head = flat_png(64, 64, [200, 30, 30, 255]);
    match kind {
        Hostile::Fields => {
            let field = [
                part_head("name=\"watermark.text\""),
                vec![b'v'; 60_000],
                part_end(),
            ]
            .concat();
            while body.sent < HOSTILE_BYTES && body.send(&field).await {}
        }
        Hostile::OversizedFiles => {
            let zeros = vec![0u8; 1 << 20];
            'files: for i in 0..10 {
                let disposition = format!("name=\"files\"; filename=\"big-{i}.png\"");
                if !body.send(&part_head(&disposition)).await || !body.send(&png_head).await {
                    break;
                }
                let mut left = max_file_bytes + 1 - png_head.len() as u64;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    if !body.send(&zeros[..n]).await {
                        break 'files;
                    }
                    left -= n as u64;
                }
                if !body.send(&part_end()).await {
                    break;
                }
            }
        }
        Hostile::Trickle => {
            body.send(&part_head("name=\"files\"; filename=\"slow.png\""))
                .await;
            body.send(&png_head).await;
            for _ in 0..600 {
                if !body.send(&[0u8; 100]).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Hostile::Endless => {
            let pipeline = json!([{"task": "watermark", "text": "held"}]).to_string();
            body.send(
                &[
                    part_head("name=\"pipeline\""),
                    pipeline.into_bytes(),
                    part_end(),
                ]
                .concat(),
            )
            .await;
            body.send(
                &[
                    part_head("name=\"files\"; filename=\"first.jpg\""),
                    image,
                    part_end(),
                ]
                .concat(),
            )
            .await;
            // Then nothing: wait (at most 60 s) for web to give up.
            let waited = Instant::now();
            while !body.answer.is_finished() && waited.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let sent = body.sent;
    let HostileBody { writer, answer, .. } = body;
    drop(writer);
    let answer = answer.await.expect("the reader");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{kind:?}: not an HTTP answer after {sent} bytes: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body, sent, started.elapsed())
}

/// Four hostile bodies of 500 MB at once (endless fields, oversized files, a trickle, and a
/// body that never ends) are each refused, while `web` stays within 64 MiB of its idle memory,
/// ordinary uploads made meanwhile are served, and nothing of the hostile ones is left in
/// Postgres or S3. A body that says it is beyond the limit is refused before it is sent.
#[tokio::test(flavor = "multi_thread")]
async fn four_hostile_bodies_at_once_leave_web_flat_and_others_served() {
    let max_file_bytes: u64 = 50 << 20;
    let sys = System::start(
        "hostile-four",
        Options::default()
            .env("MAX_FILE_BYTES", max_file_bytes)
            .env("MAX_BATCH_BYTES", 500 << 20)
            .env("UPLOAD_WINDOW_SECONDS", 3)
            .env("UPLOAD_MIN_BYTES_PER_SECOND", 10_000),
    )
    .await
    .expect("system starts");
    let web = sys.web_pid();
    let idle = proc_kib(web, "VmRSS");
    let addr = sys.base.trim_start_matches("http://").to_owned();

    // Declared beyond the limit: refused from its headers, before a byte of it is sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /api/batches HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 600000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answered without the body")
            .expect("reads");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(answer.contains("MAX_BATCH_BYTES"), "{answer}");
    }

    let image = photo_jpeg(320, 240, 7);
    let hostile: Vec<_> = [
        Hostile::Fields,
        Hostile::OversizedFiles,
        Hostile::Trickle,
        Hostile::Endless,
    ]
    .into_iter()
    .map(|kind| {
        let (addr, image) = (addr.clone(), image.clone());
        (
            kind,
            tokio::spawn(send_hostile(addr, kind, max_file_bytes, image)),
        )
    })
    .collect();

    // Ordinary uploads, one every 300 ms while the hostile bodies are in flight (at most 60).
    let mut ordinary = Vec::new();
    for i in 0..60 {
        if hostile.iter().all(|(_, task)| task.is_finished()) && ordinary.len() >= 3 {
            break;
        }
        let (code, body) = sys
            .submit(
                &[
                    (&format!("a{i}.jpg"), image.clone()),
                    (&format!("b{i}.jpg"), photo_jpeg(200, 150, i)),
                ],
                None,
            )
            .await
            .expect("answers");
        assert_eq!(code, 202, "an ordinary upload next to hostile ones: {body}");
        ordinary.push(body["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    for (kind, task) in hostile {
        let (code, body, sent, took) = task.await.expect("the hostile client");
        println!(
            "{kind:?}: {code} after {:.1} MiB in {took:.1?}: {body}",
            sent as f64 / (1 << 20) as f64
        );
        let (want, says) = match kind {
            Hostile::Fields => (413, "besides the files"),
            Hostile::OversizedFiles => (413, "MAX_BATCH_BYTES"),
            Hostile::Trickle | Hostile::Endless => (408, "too slowly"),
        };
        assert_eq!(code, want, "{kind:?}: {body}");
        assert!(body.contains(says), "{kind:?}: {body}");
        if let Hostile::OversizedFiles = kind {
            assert!(
                sent > 500 << 20,
                "{kind:?}: refused after {sent} bytes, before the batch's limit"
            );
        }
    }

    for id in &ordinary {
        let batch = sys
            .wait_final(id, Duration::from_secs(120))
            .await
            .expect("finishes");
        assert_eq!(batch["status"], "done", "{batch}");
        let (code, zip) = sys.download(id).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(unzip(&zip).len(), 2, "batch {id}");
    }

    let peak = proc_kib(web, "VmHWM");
    println!(
        "web: idle {} MiB, peak {} MiB, {} ordinary batches served meanwhile",
        idle / 1024,
        peak / 1024,
        ordinary.len()
    );
    assert!(
        peak < idle + 64 * 1024,
        "web grew from {idle} KiB idle to a peak of {peak} KiB"
    );

    // Nothing of the hostile bodies is left: only the ordinary batches, their images and files.
    assert_eq!(
        sys.count("SELECT count(*) FROM batches").await,
        ordinary.len() as i64
    );
    assert_eq!(
        sys.count("SELECT count(*) FROM images").await,
        2 * ordinary.len() as i64
    );
    let prefixes: Vec<String> = ordinary
        .iter()
        .map(|id| jobs::domain::keys::batch_prefix(id.parse().expect("a batch id")))
        .collect();
    for key in sys.objects().await.unwrap() {
        assert!(
            prefixes.iter().any(|p| key.starts_with(p.as_str())),
            "left behind: {key}"
        );
    }
    assert_eq!(
        sys.storage.abort_uploads("").await.unwrap(),
        0,
        "an unfinished multipart upload was left behind"
    );
    sys.shutdown().await;
}
