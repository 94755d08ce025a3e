//! `POST /api/preview`: the chosen processing applied to one small image, in this process, so
//! that the form can show the watermark before anything is uploaded.
//!
//! It takes the choices as a batch does (the form's fields or a `pipeline` field, and an optional
//! `logo`, read by the same parser: [`Choices`]) and an optional `image`: a small copy of the
//! user's first file (the form sends one downscaled to 640 px); without it, a sample photo made at
//! start. The image goes through the workers' own pipeline ([`process_until`]), with strict
//! limits: [`MAX_IMAGE_BYTES`], [`MAX_PIXELS`] (checked from the header, before decoding), a time
//! limit, and [`AT_ONCE`] previews drawn at a time (more wait up to [`TURN_WAIT`] for a turn,
//! then are answered `503` with `Retry-After`). Every step's output size is checked against the
//! pixel limit before it is built, and the logo's size from its header before it is decoded
//! ([`jobs::pipeline::MAX_LOGO_PIXELS`]). The answer is the image, in the format the pipeline
//! gives, never cached.
//!
//! Memory: at most [`RECEIVING`] bodies of [`MAX_BODY_BYTES`] are held, and [`AT_ONCE`]
//! renders, each at most [`MAX_PIXELS`] × 16 bytes for the image and its step's output, and
//! the logo decoded (see docs/operations.md, "Memory").

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::multipart::{Field, Multipart};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use image::{DynamicImage, Rgb, RgbImage};
use tokio::sync::Semaphore;

use jobs::pipeline::{
    process_until, Format, JpegPath, Limits, Output, PreparedPipeline, ProcessError,
};
use jobs::recent::Recent;
use jobs::tasks::{Assets, Pipeline};

use crate::api::ApiError;
use crate::choices::Choices;
use crate::error::AppError;
use crate::format::human_bytes;
use crate::state::AppState;

/// Largest `image` part.
pub const MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest image, in pixels (checked from its header, before it is decoded).
pub const MAX_PIXELS: u64 = 4_000_000;
/// Largest body of a preview request: the image, a logo, the fields and their parts' headers.
pub const MAX_BODY_BYTES: usize =
    MAX_IMAGE_BYTES + jobs::pipeline::MAX_LOGO_BYTES + MAX_FIELDS_BYTES + 64 * 1024;
/// Previews rendered at once; more wait [`TURN_WAIT`] for a turn, then are refused with `503`
/// and `Retry-After`.
pub const AT_ONCE: usize = 2;
/// Longest a received preview waits for a turn.
pub const TURN_WAIT: Duration = Duration::from_secs(2);
/// Previews being received at once (their bodies are read before they wait for a turn).
pub const RECEIVING: usize = 8;
/// Longest a preview may take.
const TIME_LIMIT: Duration = Duration::from_secs(2);
/// Largest text field, and most bytes of all of them together.
const MAX_FIELD_BYTES: usize = 64 * 1024;
const MAX_FIELDS_BYTES: usize = 256 * 1024;
/// Most parts of one request.
const MAX_PARTS: usize = 64;
/// Prepared pipelines kept (those drawn on the sample, without a logo of their own).
const PREPARED_KEPT: usize = 8;
/// The sample's size: a 3:2 photo as the form shows it.
pub const SAMPLE_SIZE: (u32, u32) = (640, 427);

/// What previews share: the sample, the turns, the pipelines prepared lately.
pub struct Previews {
    sample: Bytes,
    running: Arc<Semaphore>,
    receiving: Arc<Semaphore>,
    prepared: Mutex<Recent<String, Arc<PreparedPipeline>>>,
    limits: Limits,
}

impl Previews {
    /// Makes the sample photo (a few milliseconds of work; call it off the async threads).
    pub fn new(settings: &jobs::Settings) -> Self {
        Self {
            sample: Bytes::from(sample_jpeg()),
            running: Arc::new(Semaphore::new(AT_ONCE)),
            receiving: Arc::new(Semaphore::new(RECEIVING)),
            prepared: Mutex::new(Recent::new(PREPARED_KEPT)),
            limits: Limits {
                max_pixels: MAX_PIXELS.min(settings.max_image_pixels),
                jpeg_quality: settings.jpeg_quality,
                jpeg_path: JpegPath::Auto,
            },
        }
    }

    /// The sample photo previews are drawn on when no image is sent (a JPEG).
    pub fn sample(&self) -> &Bytes {
        &self.sample
    }

    /// The pipeline made ready. Those drawn on the sample (one size, no logo of their own) are
    /// kept, with the marks they sized: [`PREPARED_KEPT`] × one sample-sized mark at most. One
    /// drawn on an image sent with the request, or with its own logo, is made for it alone, so
    /// that no request leaves marks of its own sizes behind.
    fn prepare(
        &self,
        pipeline: &Pipeline,
        logo: Option<&[u8]>,
        keep: bool,
    ) -> Result<Arc<PreparedPipeline>, AppError> {
        let key = pipeline.to_json().to_string();
        let keep = keep && logo.is_none();
        if keep {
            let kept = self
                .prepared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key);
            if let Some(prepared) = kept {
                return Ok(prepared);
            }
        }
        let mut assets = Assets::default();
        if let Some(logo) = logo {
            // Its size from its header first (MAX_LOGO_PIXELS), then decoded.
            let img = jobs::pipeline::decode_logo(logo).map_err(AppError::BadRequest)?;
            assets.logo = Some(Arc::new(img));
        }
        let prepared = Arc::new(
            PreparedPipeline::new(pipeline, &assets)
                .map_err(|e| AppError::BadRequest(e.to_string()))?,
        );
        if keep {
            self.prepared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(key, prepared.clone());
        }
        Ok(prepared)
    }

    /// Applies `pipeline` to `image` (or the sample), as a worker would.
    fn render(
        &self,
        pipeline: &Pipeline,
        logo: Option<&[u8]>,
        image: Option<&[u8]>,
    ) -> Result<Output, AppError> {
        let deadline = Instant::now() + TIME_LIMIT;
        let input = image.unwrap_or(&self.sample);
        if Format::sniff(input).is_none() {
            return Err(AppError::BadRequest(format!(
                "the preview image is not an image we can read (expected {})",
                jobs::pipeline::ACCEPTED
            )));
        }
        let prepared = self.prepare(pipeline, logo, image.is_none())?;
        process_until(input, &prepared, &self.limits, Some(deadline)).map_err(|e| match e {
            ProcessError::TooManyPixels { .. } => AppError::TooLarge(format!(
                "the preview image is too large: {e} (send a copy of at most {} pixels)",
                self.limits.max_pixels
            )),
            ProcessError::TimedOut => {
                AppError::Unavailable("the preview took too long; please try again".into())
            }
            ProcessError::Encode(_) => AppError::Internal(e.into()),
            other => AppError::BadRequest(format!("no preview: {other}")),
        })
    }
}

/// What a preview request carries.
#[derive(Default)]
struct Request {
    choices: Choices,
    logo: Option<Vec<u8>>,
    image: Option<Vec<u8>>,
}

/// `POST /api/preview`: multipart with the choices (as `POST /api/batches` takes them: `form=1`,
/// `task`, `<task>.<param>`, or `pipeline`; and an optional `logo`) and an optional `image` (at
/// most [`MAX_IMAGE_BYTES`] and [`MAX_PIXELS`]; the sample photo otherwise). Answers the image.
#[utoipa::path(
    post,
    path = "/api/preview",
    tag = "preview",
    summary = "Draw the chosen processing on one small image",
    description = "Multipart with the same choices as a batch (`pipeline`, or `form=1`, `task` and `<task>.<param>`; optional `logo`) and an optional `image` (4 MiB and 4 MP at most, checked before decoding; without one, a 640 × 427 sample photo). Answers the image in the format the pipeline gives, with `Cache-Control: no-store` and `Server-Timing`.",
    request_body(content = crate::openapi::PreviewForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The image drawn", content(
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "image/png"),
        )),
        (status = 400, description = "Bad choices, logo or image (`bad_request`)", body = crate::api::ErrorBody),
        (status = 408, description = "The request came too slowly (`too_slow`)", body = crate::api::ErrorBody),
        (status = 413, description = "The image or logo is over a limit (`too_large`)", body = crate::api::ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = crate::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = crate::api::ErrorBody),
    )
)]
pub async fn preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let largest = MAX_BODY_BYTES;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > largest) {
        return Err(AppError::TooLarge(format!(
            "a preview request may carry an image of {} and a logo of {} at most",
            human_bytes(MAX_IMAGE_BYTES as u64),
            human_bytes(jobs::pipeline::MAX_LOGO_BYTES as u64)
        ))
        .into());
    }
    let previews = state.previews.clone();
    let Ok(_receiving) = previews.receiving.clone().try_acquire_owned() else {
        return Ok(busy());
    };
    let request = read(multipart).await?;
    let pipeline = request.choices.resolve()?;
    let turn = previews.running.clone().acquire_owned();
    let Ok(Ok(_turn)) = tokio::time::timeout(TURN_WAIT, turn).await else {
        return Ok(busy());
    };
    let render = previews.clone();
    let out = tokio::task::spawn_blocking(move || {
        render.render(&pipeline, request.logo.as_deref(), request.image.as_deref())
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))??;
    let mut response = out.bytes.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(out.format.mime()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // How long it took here (a browser's developer tools show it), and what was drawn.
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("preview;dur={ms:.1}")) {
        h.insert(header::HeaderName::from_static("server-timing"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{}x{}", out.width, out.height)) {
        h.insert(header::HeaderName::from_static("x-preview-size"), v);
    }
    Ok(response)
}

/// `503` with `Retry-After: 1`: every turn is taken.
fn busy() -> Response {
    let mut response = ApiError(AppError::Busy(format!(
        "{AT_ONCE} previews are being drawn already; please try again in a moment"
    )))
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1));
    response
}

async fn read(mut multipart: Multipart) -> Result<Request, AppError> {
    let mut request = Request::default();
    let mut parts = 0;
    let mut field_bytes = 0;
    while let Some(field) = multipart.next_field().await.map_err(bad_body)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(AppError::TooLarge(format!(
                "too many fields: a preview takes at most {MAX_PARTS}"
            )));
        }
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" => {
                let bytes = bytes(field, MAX_IMAGE_BYTES, "the preview image").await?;
                request.image = (!bytes.is_empty()).then_some(bytes);
            }
            "logo" => {
                let bytes = bytes(field, jobs::pipeline::MAX_LOGO_BYTES, "the logo").await?;
                request.logo = (!bytes.is_empty()).then_some(bytes);
            }
            text if Choices::is_text(text) => {
                let value = bytes(field, MAX_FIELD_BYTES, &format!("the field {name:?}")).await?;
                field_bytes += value.len();
                if field_bytes > MAX_FIELDS_BYTES {
                    return Err(AppError::TooLarge(format!(
                        "the fields are larger than {} together",
                        human_bytes(MAX_FIELDS_BYTES as u64)
                    )));
                }
                let value = String::from_utf8(value).map_err(|_| {
                    AppError::BadRequest(format!("the field {name:?} is not valid UTF-8"))
                })?;
                request.choices.set(&name, value);
            }
            // Anything else (the files of a form sent whole, say) is read and dropped.
            _ => {
                bytes(field, MAX_IMAGE_BYTES, &format!("the part {name:?}")).await?;
            }
        }
    }
    request.choices.logo = request.logo.is_some();
    Ok(request)
}

/// A part's bytes, at most `limit`.
async fn bytes(mut field: Field<'_>, limit: usize, what: &str) -> Result<Vec<u8>, AppError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_body)? {
        if buf.len() + chunk.len() > limit {
            return Err(AppError::TooLarge(format!(
                "{what} is larger than the limit of {} for a preview",
                human_bytes(limit as u64)
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn bad_body(e: axum::extract::multipart::MultipartError) -> AppError {
    if crate::pace::too_slow(&e) {
        return AppError::Timeout("the preview request arrived too slowly".into());
    }
    AppError::BadRequest(format!("the request could not be read: {}", e.body_text()))
}

/// The sample photo: a landscape at dusk (sky, sun, two ranges of hills, a lake and a meadow),
/// drawn here so that the repository holds no photo; JPEG, [`SAMPLE_SIZE`].
pub fn sample_jpeg() -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(sample_photo());
    jobs::pipeline::encode(&image, Format::Jpeg, 88).expect("a JPEG of a sample encodes")
}

fn sample_photo() -> RgbImage {
    let (w, h) = SAMPLE_SIZE;
    let mix = |a: [f32; 3], b: [f32; 3], t: f32| -> [f32; 3] {
        let t = t.clamp(0.0, 1.0);
        [
            a[0] + (b[0] - a[0]) * t,
            a[1] + (b[1] - a[1]) * t,
            a[2] + (b[2] - a[2]) * t,
        ]
    };
    let sun = (0.68f32, 0.47f32);
    let far = |u: f32| {
        0.50 - 0.07 * (u * 7.0 + 1.3).sin()
            - 0.03 * (u * 19.0 + 0.4).sin()
            - 0.012 * (u * 53.0).sin()
    };
    let near = |u: f32| {
        0.60 - 0.05 * (u * 4.0 + 2.1).sin()
            - 0.02 * (u * 13.0 + 0.9).sin()
            - 0.006 * (u * 41.0 + 2.0).sin()
    };
    let shore = |u: f32| 0.70 + 0.015 * (u * 9.0 + 0.5).sin();
    let meadow = |u: f32| 0.86 - 0.04 * (u * 3.0 + 0.2).sin();
    let mut seed = 0x9e37_79b9u32;
    RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let grain = (seed % 9) as f32 - 4.0;
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        let (du, dv) = ((u - sun.0) * 1.5, v - sun.1);
        let d2 = du * du + dv * dv;
        let glow = (-d2 / 0.012).exp();
        let sky = |v: f32| {
            let c = mix(
                [38.0, 72.0, 140.0],
                [236.0, 170.0, 120.0],
                (v / 0.55).powf(1.6),
            );
            let c = mix(c, [255.0, 236.0, 190.0], glow * 0.9);
            if d2 < 0.0016 {
                [255.0, 246.0, 214.0]
            } else {
                c
            }
        };
        let c = if v < far(u) {
            sky(v)
        } else if v < near(u) {
            // Far hills: hazy blue, lighter toward the sun.
            let c = mix([92.0, 104.0, 140.0], [150.0, 132.0, 140.0], glow * 1.5);
            mix(c, [70.0, 80.0, 112.0], (v - far(u)) * 4.0)
        } else if v < shore(u) {
            // Near hills: dark green, with some texture.
            let t = ((u * 90.0).sin() * (v * 140.0).cos()) * 6.0;
            let c = mix([46.0, 78.0, 52.0], [24.0, 44.0, 34.0], (v - near(u)) * 6.0);
            [c[0] + t, c[1] + t, c[2] + t * 0.5]
        } else if v < meadow(u) {
            // The lake mirrors the sky, darker, with ripples.
            let mirrored = sky((2.0 * shore(u) - v).max(0.0) * 0.9);
            let ripple = ((v * 260.0 + (u * 20.0).sin() * 3.0).sin() * 0.5 + 0.5) * 0.18;
            mix(mirrored, [30.0, 50.0, 80.0], 0.35 + ripple)
        } else {
            // The meadow, warm where the sun reaches it.
            let t = ((u * 300.0 + v * 40.0).sin() * (v * 220.0).sin()) * 10.0;
            let c = mix(
                [98.0, 130.0, 54.0],
                [58.0, 84.0, 36.0],
                (v - meadow(u)) * 5.0,
            );
            let c = mix(c, [150.0, 140.0, 70.0], glow * 2.0);
            [c[0] + t, c[1] + t, c[2] + t * 0.4]
        };
        let px = |c: f32| (c + grain).round().clamp(0.0, 255.0) as u8;
        Rgb([px(c[0]), px(c[1]), px(c[2])])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_a_photo_sized_jpeg_that_is_not_flat() {
        let jpeg = sample_jpeg();
        assert_eq!(Format::sniff(&jpeg), Some(Format::Jpeg));
        assert!(jpeg.len() < 200 * 1024, "{} bytes", jpeg.len());
        let img = image::load_from_memory(&jpeg).expect("decodes").to_rgb8();
        assert_eq!(img.dimensions(), SAMPLE_SIZE);
        let (top, bottom) = (img.get_pixel(10, 5), img.get_pixel(10, SAMPLE_SIZE.1 - 5));
        assert!(
            top[2] > top[1] && bottom[1] > bottom[2],
            "sky above, grass below"
        );
    }
}
