//! What every fault test asserts once the dust settles: each batch is done, its zip holds every
//! image exactly once with the right content, the counters in Postgres equal the truth, no job
//! is stuck in Redis, and no object is orphaned in S3.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use image::{DynamicImage, GenericImageView, Rgb, RgbImage};

use crate::images::encode;
use crate::System;

/// One image a test sends, and what must come back for it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub name: String,
    pub color: [u8; 3],
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

/// `n` small PNGs of distinct flat colours named `{tag}-{i}.png` (lossless, so each comes back
/// with exactly its own colour outside the watermark). With `slow`, each carries the
/// `wm-fault:slow` marker, so that a worker started with `WORKER_FAULT_INJECTION=1` takes half
/// a second longer on it: work stays in flight long enough for a fault to land in the middle.
pub fn batch(tag: &str, n: usize, slow: bool) -> Vec<Sent> {
    (0..n)
        .map(|i| {
            let color = [
                20 + (i % 10) as u8 * 22,
                20 + (i / 10 % 10) as u8 * 22,
                200 - (i / 100 % 10) as u8 * 22,
            ];
            let (width, height) = (96, 64);
            let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(width, height, Rgb(color)));
            let mut bytes = encode(&img, image::ImageFormat::Png);
            if slow {
                bytes = with_marker(&bytes, b"wm-fault:slow");
            }
            Sent {
                name: format!("{tag}-{i:03}.png"),
                color,
                width,
                height,
                bytes,
            }
        })
        .collect()
}

/// `image` with `text` after its end (decoders ignore what follows the last chunk), where the
/// worker's fault injection looks for its markers.
pub fn with_marker(image: &[u8], text: &[u8]) -> Vec<u8> {
    [image, text].concat()
}

/// The steps fault tests ask for: the watermark in the bottom-right corner, so that the
/// top-left corner keeps each image's own colour ([`verify_batch`] looks there).
pub fn pipeline() -> serde_json::Value {
    serde_json::json!([{"task": "watermark", "position": "bottom-right", "scale": 0.25}])
}

/// The files of `sent`, as `System::submit` takes them.
pub fn files(sent: &[Sent]) -> Vec<(&str, Vec<u8>)> {
    sent.iter()
        .map(|s| (s.name.as_str(), s.bytes.clone()))
        .collect()
}

/// The batch is done and its zip holds every sent image exactly once, each with its own size
/// and colour (the top-left corner is far from the watermark) and nothing else.
pub async fn verify_batch(sys: &System, id: &str, sent: &[Sent]) -> anyhow::Result<()> {
    let (code, status) = sys.status(id).await?;
    ensure!(code == 200, "status of {id}: {code}");
    ensure!(
        status["status"] == "done",
        "batch {id} is not done: {status}"
    );
    ensure!(status["total"] == sent.len(), "total of {id}: {status}");
    ensure!(status["done"] == sent.len(), "done count of {id}: {status}");
    ensure!(status["failed"] == 0, "failed count of {id}: {status}");
    let (code, zip) = sys.download(id).await?;
    ensure!(code == 200, "download of {id}: {code}");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip)).context("a zip")?;
    let expected: HashMap<&str, &Sent> = sent.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut seen = BTreeSet::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name().context("UTF-8 entry name")?.to_string();
        let sent = expected
            .get(name.as_str())
            .with_context(|| format!("unexpected entry {name:?} in the zip of {id}"))?;
        ensure!(
            seen.insert(name.clone()),
            "{name} is twice in the zip of {id}"
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        let img = image::load_from_memory(&data).with_context(|| format!("decode {name}"))?;
        ensure!(
            img.dimensions() == (sent.width, sent.height),
            "{name}: {:?}",
            img.dimensions()
        );
        let px = img.to_rgb8().get_pixel(2, 2).0;
        ensure!(
            px == sent.color,
            "{name} has colour {px:?}, sent {:?}: not its own content",
            sent.color
        );
    }
    ensure!(
        seen.len() == sent.len(),
        "the zip of {id} holds {} of {} images",
        seen.len(),
        sent.len()
    );
    Ok(())
}

/// Every batch's counters equal the states of its images.
pub async fn verify_counters(sys: &System) -> anyhow::Result<()> {
    let wrong: Vec<String> = sqlx::query_scalar(
        "SELECT b.id::text FROM batches b
         WHERE b.status NOT IN ('uploading')
           AND (b.total <> (SELECT count(*) FROM images i WHERE i.batch_id = b.id)
             OR b.done_count <> (SELECT count(*) FROM images i
                                 WHERE i.batch_id = b.id AND i.status = 'done')
             OR b.failed_count <> (SELECT count(*) FROM images i
                                   WHERE i.batch_id = b.id AND i.status = 'failed'))",
    )
    .fetch_all(&sys.db)
    .await?;
    ensure!(
        wrong.is_empty(),
        "counters differ from the images: {wrong:?}"
    );
    Ok(())
}

/// Jobs of this system still waiting, scheduled or running in Redis.
pub async fn jobs_in_redis(sys: &System) -> anyhow::Result<i64> {
    let mut conn = sys.redis_connection().await?;
    let prefix = sys.queue_prefix().to_owned();
    let mut total = 0i64;
    {
        let q = format!("{prefix}:process-image");
        let active: i64 = redis::cmd("LLEN")
            .arg(format!("{q}:active"))
            .query_async(&mut conn)
            .await?;
        let scheduled: i64 = redis::cmd("ZCARD")
            .arg(format!("{q}:scheduled"))
            .query_async(&mut conn)
            .await?;
        let inflight_keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{q}:inflight:*"))
            .query_async(&mut conn)
            .await?;
        let mut inflight = 0i64;
        for key in inflight_keys {
            let n: i64 = redis::cmd("SCARD").arg(key).query_async(&mut conn).await?;
            inflight += n;
        }
        total += active + scheduled + inflight;
    }
    Ok(total)
}

/// No job of this system stays in Redis (duplicates handed out during a fault may take a few
/// seconds to run and end as no-ops).
pub async fn verify_redis_drained(sys: &System, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let left = jobs_in_redis(sys).await?;
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{left} jobs still in Redis after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every object in the bucket belongs to a batch that is not over: an original of a recorded
/// image, the output of a done image, or a batch's logo; no zip is stored (the download
/// assembles it from the results).
pub async fn verify_no_orphans(sys: &System) -> anyhow::Result<()> {
    // batch, its status, image, its status, its output format
    type Row = (String, String, Option<String>, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT b.id::text, b.status, i.id::text, coalesce(i.status, ''), i.output_format
         FROM batches b LEFT JOIN images i ON i.batch_id = b.id",
    )
    .fetch_all(&sys.db)
    .await?;
    let mut allowed = BTreeSet::new();
    for (batch, batch_status, image, image_status, format) in rows {
        if batch_status == "expired" {
            continue;
        }
        allowed.insert(format!("batches/{batch}/logo"));
        if let Some(image) = image {
            allowed.insert(format!("batches/{batch}/in/{image}"));
            if image_status == "done" {
                let ext = format
                    .as_deref()
                    .and_then(jobs::pipeline::Format::parse)
                    .map_or("", |f| f.ext());
                allowed.insert(format!("batches/{batch}/out/{image}.{ext}"));
            }
        }
    }
    let objects: BTreeSet<String> = sys.objects().await?.into_iter().collect();
    let orphans: Vec<&String> = objects.iter().filter(|o| !allowed.contains(*o)).collect();
    ensure!(orphans.is_empty(), "orphaned objects: {orphans:?}");
    let uploads = sys.storage.abort_uploads("").await?;
    ensure!(
        uploads == 0,
        "{uploads} unfinished multipart uploads were left"
    );
    Ok(())
}

/// All of the above for `batches` (id and what was sent), once they are final (within `limit`).
pub async fn verify_all(
    sys: &System,
    batches: &[(String, Vec<Sent>)],
    limit: Duration,
) -> anyhow::Result<()> {
    for (id, sent) in batches {
        sys.wait_final(id, limit).await?;
        verify_batch(sys, id, sent).await?;
    }
    verify_counters(sys).await?;
    verify_redis_drained(sys, Duration::from_secs(30)).await?;
    verify_no_orphans(sys).await?;
    Ok(())
}
