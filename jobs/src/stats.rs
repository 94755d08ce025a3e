//! Statistics read from Postgres: over a time range (`GET /api/stats`), and the monitor's view
//! of the last hour. Image times are `finished_at - started_at` of each image's last attempt
//! (fetching the original, processing, storing the result); batch times run from submission to
//! the zip.

use chrono::{DateTime, Duration, DurationRound, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{FromRow, Row};

use crate::db::Db;

/// Longest range `GET /api/stats` answers.
pub const MAX_RANGE_DAYS: i64 = 366;

/// Mean and 95th percentile of some seconds, and how many there were.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Times {
    pub count: i64,
    pub mean_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

impl Times {
    /// The columns `{prefix}_count`, `_mean`, `_p50` and `_p95` of `row`.
    fn read(row: &sqlx::postgres::PgRow, prefix: &str) -> Result<Self, sqlx::Error> {
        let column = |name: &str| format!("{prefix}_{name}");
        Ok(Self {
            count: row.try_get(column("count").as_str())?,
            mean_seconds: row.try_get(column("mean").as_str())?,
            p50_seconds: row.try_get(column("p50").as_str())?,
            p95_seconds: row.try_get(column("p95").as_str())?,
        })
    }
}

/// How many failed for one reason.
#[derive(Debug, Clone, Serialize, FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    pub reason: String,
    pub count: i64,
}

/// One bucket of a time series.
#[derive(Debug, Clone, Serialize, FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub images_done: i64,
    pub images_failed: i64,
    pub batches: i64,
}

/// What happened between `from` and `to`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Batches submitted in the range, and how those ended (or where they are).
    pub batches: BatchCounts,
    /// Images finished in the range.
    pub images: ImageCounts,
    /// Bytes of the files submitted in the range.
    pub bytes_in: i64,
    /// Bytes of the results made in the range, and of the zips built in it.
    pub bytes_out: i64,
    pub archive_bytes: i64,
    pub failures: Vec<Failure>,
    pub image_times: Times,
    /// From submission to the zip, for batches finished in the range.
    pub batch_times: Times,
    /// Seconds per bucket of `series`.
    pub bucket_seconds: i64,
    pub series: Vec<Bucket>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchCounts {
    pub submitted: i64,
    pub done: i64,
    pub failed: i64,
    pub expired: i64,
    pub unfinished: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageCounts {
    pub done: i64,
    pub failed: i64,
}

/// The bucket of a series over `range`: a minute up to two hours, an hour up to four days, a
/// day beyond (at most about 370 buckets).
pub fn bucket_for(range: Duration) -> Duration {
    if range <= Duration::hours(2) {
        Duration::minutes(1)
    } else if range <= Duration::days(4) {
        Duration::hours(1)
    } else {
        Duration::days(1)
    }
}

/// The statistics of `[from, to)`.
pub async fn over(db: &Db, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Stats, sqlx::Error> {
    let bucket = bucket_for(to - from);
    let secs = bucket.num_seconds() as f64;
    let (batches, images, failures, series) = tokio::try_join!(
        sqlx::query(
            "SELECT count(*) AS submitted,
                    count(*) FILTER (WHERE status = 'done') AS done,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    count(*) FILTER (WHERE status = 'expired') AS expired,
                    count(*) FILTER (WHERE status IN ('uploading', 'open', 'queued', 'processing',
                                                      'archiving')) AS unfinished,
                    coalesce(sum((SELECT sum(input_bytes) FROM images i
                                  WHERE i.batch_id = b.id)), 0)::int8 AS bytes_in,
                    count(finished_at) FILTER (WHERE finished_at >= $1 AND finished_at < $2)
                        AS batch_count,
                    avg(extract(epoch FROM finished_at - created_at)::float8)
                        FILTER (WHERE finished_at >= $1 AND finished_at < $2) AS batch_mean,
                    percentile_cont(0.5) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - created_at)::float8)
                        FILTER (WHERE finished_at >= $1 AND finished_at < $2) AS batch_p50,
                    percentile_cont(0.95) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - created_at)::float8)
                        FILTER (WHERE finished_at >= $1 AND finished_at < $2) AS batch_p95,
                    coalesce(sum(archive_bytes) FILTER (WHERE finished_at >= $1
                                                        AND finished_at < $2), 0)::int8
                        AS archive_bytes
             FROM batches b WHERE created_at >= $1 AND created_at < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(db),
        sqlx::query(
            "SELECT count(*) FILTER (WHERE status = 'done') AS done,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    coalesce(sum(output_bytes), 0)::int8 AS bytes_out,
                    count(started_at) AS image_count,
                    avg(extract(epoch FROM finished_at - started_at)::float8) AS image_mean,
                    percentile_cont(0.5) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - started_at)::float8) AS image_p50,
                    percentile_cont(0.95) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - started_at)::float8) AS image_p95
             FROM images WHERE finished_at >= $1 AND finished_at < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(db),
        failures(db, from, to, 20),
        sqlx::query_as::<_, Bucket>(
            "WITH buckets AS (
                 SELECT generate_series(date_bin(make_interval(secs => $3), $1, $1),
                                        $2 - make_interval(secs => 0.000001),
                                        make_interval(secs => $3)) AS start
             ), images_in AS (
                 SELECT date_bin(make_interval(secs => $3), finished_at, $1) AS start,
                        count(*) FILTER (WHERE status = 'done') AS done,
                        count(*) FILTER (WHERE status = 'failed') AS failed
                 FROM images WHERE finished_at >= $1 AND finished_at < $2 GROUP BY 1
             ), batches_in AS (
                 SELECT date_bin(make_interval(secs => $3), created_at, $1) AS start,
                        count(*) AS n
                 FROM batches WHERE created_at >= $1 AND created_at < $2 GROUP BY 1
             )
             SELECT b.start, coalesce(i.done, 0) AS images_done,
                    coalesce(i.failed, 0) AS images_failed, coalesce(n.n, 0) AS batches
             FROM buckets b LEFT JOIN images_in i USING (start) LEFT JOIN batches_in n USING (start)
             ORDER BY b.start",
        )
        .bind(from)
        .bind(to)
        .bind(secs)
        .fetch_all(db),
    )?;
    Ok(Stats {
        from,
        to,
        batches: BatchCounts {
            submitted: batches.try_get("submitted")?,
            done: batches.try_get("done")?,
            failed: batches.try_get("failed")?,
            expired: batches.try_get("expired")?,
            unfinished: batches.try_get("unfinished")?,
        },
        images: ImageCounts {
            done: images.try_get("done")?,
            failed: images.try_get("failed")?,
        },
        bytes_in: batches.try_get("bytes_in")?,
        bytes_out: images.try_get("bytes_out")?,
        archive_bytes: batches.try_get("archive_bytes")?,
        failures,
        image_times: Times::read(&images, "image")?,
        batch_times: Times::read(&batches, "batch")?,
        bucket_seconds: bucket.num_seconds(),
        series,
    })
}

/// The most frequent reasons images failed in `[from, to)`.
pub async fn failures(
    db: &Db,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Failure>, sqlx::Error> {
    sqlx::query_as::<_, Failure>(
        "SELECT coalesce(error, 'unknown reason') AS reason, count(*) AS count
         FROM images WHERE status = 'failed' AND finished_at >= $1 AND finished_at < $2
         GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3",
    )
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Images finished per second over the last `minutes`.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub minutes: i64,
    pub images: i64,
    pub per_second: f64,
}

/// A batch as the monitor lists it: its id shortened (the full id is its owner's key).
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct RecentBatch {
    pub short_id: String,
    pub status: String,
    pub total: i32,
    pub done: i32,
    pub failed: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What the monitor shows.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    pub workers: Vec<crate::db::WorkerRow>,
    /// Images not finished yet in batches being received or processed.
    pub images_pending: i64,
    /// Of those, the ones no worker has started yet.
    pub images_waiting: i64,
    pub batches_unfinished: i64,
    pub webhooks_pending: i64,
    pub throughput: Vec<Throughput>,
    /// Image times over the last hour.
    pub image_times: Times,
    /// Failure reasons over the last hour.
    pub failures: Vec<Failure>,
    pub recent_batches: Vec<RecentBatch>,
    /// Images finished per minute over the last hour.
    pub series: Vec<Bucket>,
}

/// The monitor's view of now and the last hour.
pub async fn snapshot(db: &Db) -> Result<Snapshot, sqlx::Error> {
    let now = Utc::now();
    let hour_ago = now - Duration::hours(1);
    // A series of whole minutes, ending with the current one.
    let series_from = (now - Duration::minutes(59))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap_or(hour_ago);
    let (workers, backlog, recent, hour) = tokio::try_join!(
        crate::db::live_workers(db),
        sqlx::query(
            "SELECT count(*) AS pending,
                    count(*) FILTER (WHERE i.attempts = 0) AS waiting,
                    (SELECT count(*) FROM batches WHERE status IN
                        ('uploading', 'open', 'queued', 'processing', 'archiving')) AS unfinished,
                    (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')
                        AS webhooks
             FROM images i JOIN batches b ON b.id = i.batch_id
             WHERE i.status = 'pending' AND b.status IN ('uploading', 'open', 'queued', 'processing')",
        )
        .fetch_one(db),
        sqlx::query_as::<_, RecentBatch>(
            "SELECT left(id::text, 8) AS short_id, status, total, done_count AS done,
                    failed_count AS failed, created_at, finished_at
             FROM batches ORDER BY created_at DESC LIMIT 15",
        )
        .fetch_all(db),
        over(db, series_from, now + Duration::seconds(1)),
    )?;
    let throughput = sqlx::query(
        "SELECT count(*) FILTER (WHERE finished_at > now() - interval '1 minute') AS m1,
                count(*) FILTER (WHERE finished_at > now() - interval '5 minutes') AS m5,
                count(*) AS m60
         FROM images WHERE finished_at > now() - interval '60 minutes'",
    )
    .fetch_one(db)
    .await?;
    let throughput = [(1, "m1"), (5, "m5"), (60, "m60")]
        .into_iter()
        .map(|(minutes, column)| {
            let images: i64 = throughput.try_get(column)?;
            Ok(Throughput {
                minutes,
                images,
                per_second: images as f64 / (minutes * 60) as f64,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Snapshot {
        at: now,
        workers,
        images_pending: backlog.try_get("pending")?,
        images_waiting: backlog.try_get("waiting")?,
        batches_unfinished: backlog.try_get("unfinished")?,
        webhooks_pending: backlog.try_get("webhooks")?,
        throughput,
        image_times: hour.image_times,
        failures: hour.failures,
        recent_batches: recent,
        series: hour.series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_a_series_short() {
        assert_eq!(bucket_for(Duration::minutes(60)), Duration::minutes(1));
        assert_eq!(bucket_for(Duration::hours(24)), Duration::hours(1));
        assert_eq!(bucket_for(Duration::days(30)), Duration::days(1));
        let range = Duration::days(MAX_RANGE_DAYS);
        let buckets = range.num_seconds() / bucket_for(range).num_seconds();
        assert!(buckets <= 370, "{buckets}");
        let range = Duration::days(4);
        assert!(range.num_seconds() / bucket_for(range).num_seconds() <= 96);
    }
}
