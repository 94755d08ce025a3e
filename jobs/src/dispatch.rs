//! Postgres decides what is in Redis. A recorded image waits in Postgres until a dispatcher
//! pushes its job; at most a window of image jobs are in Redis at once (waiting, scheduled for a
//! retry, or running), so a backlog of any size stays in Postgres and never reaches the
//! apalis-redis limit on jobs due at once (about 8,000 kill every worker).
//!
//! The window follows live capacity: three times the image slots of the live workers (the
//! `workers` table: the sum of `concurrency` over workers seen in the last
//! [`crate::db::LIVE_WORKER_SECONDS`]), at most `DISPATCH_WINDOW`, at least 1. Two slots' worth
//! wait in Redis behind the running images, enough to keep every slot busy between two
//! dispatches (a worker asks for one after every `concurrency` images it finishes).
//!
//! What fills the window is fair ([`pick`]): weighted round-robin across owners
//! (`batches.owner_id`; the batches of no owner count as one owner; `owners.weight`), by stride
//! scheduling with each owner's pass kept in `dispatch_passes`, then across an owner's batches
//! (the one with the fewest images in Redis), then by position in a batch. An owner with
//! nothing in Redis is picked first: its first image goes to the head of the queue, even beyond
//! a full window (by one job per such owner), so that it starts when the first slot frees.
//!
//! The dispatcher also notices when Redis has lost its data (the epoch key is gone: a restart
//! without persistence, a `FLUSHALL`, a failover to an empty replica) and hands every image that
//! Redis held back to the queue at once, instead of waiting for the reconciler.
//!
//! Dispatchers run in every worker (after every `concurrency` images a worker finishes, and
//! every poll interval) and in `web` (right after a batch or a file is recorded); a Postgres
//! advisory lock makes them take turns. A dispatch costs the same few statements whatever it pushes (see
//! `docs/scaling.md`).

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;

use crate::db::Db;
use crate::domain::{BatchId, ImageId, OwnerId};
use crate::queue::Queues;

/// Key of the advisory lock the dispatchers take turns on (any constant unique to this system).
const DISPATCH_LOCK: i64 = 0x776d_6469_7370_6174; // "wmdispat"

/// Jobs allowed in Redis per live image slot.
pub const JOBS_PER_SLOT: u32 = 3;

/// How a dispatch fills Redis: [`Settings::dispatch_policy`](crate::Settings::dispatch_policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `DISPATCH_WINDOW`: the most image jobs in Redis at once.
    pub max_window: u32,
    /// Benchmarks only: first in, first out with a fixed window of `max_window` (the baseline of
    /// `bench fair`).
    pub fifo: bool,
}

/// What one dispatch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    /// Image jobs pushed to Redis.
    pub images: usize,
    /// The window it filled: most image jobs in Redis at once.
    pub window: u32,
    /// Images may still be waiting in Postgres (the window was full or filled up): the next
    /// image to finish should ask for another dispatch.
    pub waiting: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

impl DispatchError {
    /// Whether trying again later may succeed (see [`crate::db::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Db(e) => crate::db::is_retryable(e),
            Self::Queue(e) => e.is_retryable(),
        }
    }
}

/// A batch as the picker sees it: its owner (`None`: the batches of no owner, one owner), the
/// owner's weight and pass, its images in Redis now, and its first waiting images in position
/// order.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub batch: BatchId,
    pub owner: Option<OwnerId>,
    pub weight: f64,
    /// The owner's pass as last stored (0 for an owner never served): see [`pick`].
    pub pass: f64,
    pub in_redis: u32,
    pub images: Vec<ImageId>,
}

/// What [`pick`] chose: (batch, image) in pick order, and the new pass of each owner served.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Picked {
    pub images: Vec<(BatchId, ImageId)>,
    pub passes: Vec<(Option<OwnerId>, f64)>,
}

/// Picks up to `room` images from `batches` (in the order they were queued: earlier batches
/// win ties), weighted round-robin across owners, then across an owner's batches, then by
/// position.
///
/// Owners take turns by stride scheduling: each has a pass, and each pick goes to the owner
/// with the smallest pass, whose pass then grows by 1 ÷ weight, so that over any stretch an
/// owner of weight 2 gets twice the picks of an owner of weight 1, whatever the size of the
/// window. An owner with no image in Redis starts again from the smallest pass of the owners
/// with images there (with none in Redis, all start from the largest pass of those waiting), so
/// that an owner that was away neither claims credit for its absence and starves the others,
/// nor waits for the others to catch up with what it was served before. Equal passes
/// go to the owner with the fewest images in Redis ÷ weight (a newcomer: none), then to the
/// earlier batch. Within the owner, the pick goes to its batch with the fewest images in Redis
/// (and picked), then the earlier batch, and there to the lowest waiting position.
pub fn pick(batches: &[Waiting], room: usize) -> Picked {
    struct Owner {
        key: Option<OwnerId>,
        weight: f64,
        pass: f64,
        load: u64,
        served: bool,
        /// Indexes into `batches` of its batches with something waiting, in queue order.
        batches: Vec<usize>,
    }
    let mut owners: Vec<Owner> = Vec::new();
    let mut index: HashMap<Option<OwnerId>, usize> = HashMap::new();
    for (i, b) in batches.iter().enumerate() {
        let o = *index.entry(b.owner).or_insert_with(|| {
            owners.push(Owner {
                key: b.owner,
                weight: if b.weight.is_finite() && b.weight > 0.0 {
                    b.weight
                } else {
                    1.0
                },
                pass: if b.pass.is_finite() { b.pass } else { 0.0 },
                load: 0,
                served: false,
                batches: Vec::new(),
            });
            owners.len() - 1
        });
        owners[o].load += u64::from(b.in_redis);
        if !b.images.is_empty() {
            owners[o].batches.push(i);
        }
    }
    let in_redis = owners.iter().filter(|o| o.load > 0).map(|o| o.pass);
    let floor = match in_redis.clone().next() {
        Some(_) => in_redis.fold(f64::INFINITY, f64::min),
        None => owners
            .iter()
            .filter(|o| !o.batches.is_empty())
            .map(|o| o.pass)
            .fold(f64::NEG_INFINITY, f64::max),
    };
    for o in owners.iter_mut().filter(|o| o.load == 0) {
        o.pass = floor;
    }
    let mut load: Vec<u64> = batches.iter().map(|b| u64::from(b.in_redis)).collect();
    let mut next: Vec<usize> = vec![0; batches.len()];
    let mut picked = Vec::with_capacity(room);
    while picked.len() < room {
        let Some(o) = owners
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.batches.is_empty())
            .min_by(|(i, a), (j, b)| {
                a.pass
                    .total_cmp(&b.pass)
                    .then((a.load as f64 / a.weight).total_cmp(&(b.load as f64 / b.weight)))
                    .then(a.batches[0].cmp(&b.batches[0]))
                    .then(i.cmp(j))
            })
            .map(|(i, _)| i)
        else {
            break;
        };
        let owner = &mut owners[o];
        let (slot, &b) = owner
            .batches
            .iter()
            .enumerate()
            .min_by_key(|&(_, &b)| (load[b], b))
            .expect("an owner with batches");
        picked.push((batches[b].batch, batches[b].images[next[b]]));
        next[b] += 1;
        load[b] += 1;
        owner.load += 1;
        owner.pass += 1.0 / owner.weight;
        owner.served = true;
        if next[b] == batches[b].images.len() {
            owner.batches.remove(slot);
        }
    }
    Picked {
        images: picked,
        passes: owners
            .iter()
            .filter(|o| o.served)
            .map(|o| (o.key, o.pass))
            .collect(),
    }
}

/// How many owners wait with nothing in Redis: [`pick`] gives each of them one image before any
/// other owner's, so the first this many picks are their turns.
fn newcomers(batches: &[Waiting]) -> usize {
    let mut load: HashMap<Option<OwnerId>, (u64, bool)> = HashMap::new();
    for b in batches {
        let entry = load.entry(b.owner).or_default();
        entry.0 += u64::from(b.in_redis);
        entry.1 |= !b.images.is_empty();
    }
    load.values()
        .filter(|&&(in_redis, waits)| in_redis == 0 && waits)
        .count()
}

/// The baseline of `bench fair`: batches in the order they were queued, each in position order;
/// no passes change.
fn pick_fifo(batches: &[Waiting], room: usize) -> Picked {
    Picked {
        images: batches
            .iter()
            .flat_map(|b| b.images.iter().map(move |&image| (b.batch, image)))
            .take(room)
            .collect(),
        passes: Vec::new(),
    }
}

/// Pushes waiting images to Redis, fairly ([`pick`]), while fewer than the window of image jobs
/// are there (three times the live image slots, at most `policy.max_window`), and the first
/// image of each owner with nothing there to the head of the queue, window full or not. Jobs
/// are pushed before the transaction that marks them enqueued commits: should the commit fail,
/// they are pushed again later, and running an image twice is harmless, whereas the other order
/// could lose them.
pub async fn dispatch(
    db: &Db,
    queues: &Queues,
    policy: Policy,
) -> Result<Dispatched, DispatchError> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(DISPATCH_LOCK)
        .execute(&mut *tx)
        .await?;

    if !queues.epoch_present().await? {
        let forgotten = sqlx::query(
            "UPDATE images SET enqueued_at = NULL
             WHERE status = 'pending' AND enqueued_at IS NOT NULL",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        queues.set_epoch().await?;
        if forgotten > 0 {
            tracing::warn!(
                images = forgotten,
                "Redis lost its jobs; enqueueing them again from Postgres"
            );
        }
    }

    // One statement: the window (from the live workers' slots), the room left in it, and the
    // candidates: of each owner's batches with images waiting, the `room` with the fewest in
    // Redis, each with its first `room` waiting images (no pick can go further), plus every
    // batch with images in Redis, for its owner's count. With the window full, the candidates
    // are the first waiting image of each owner with nothing in Redis (its turn comes first).
    // One row without a batch: nothing waits.
    let rows = sqlx::query(
        "WITH in_redis AS (
             SELECT batch_id, count(*)::int8 AS n FROM images
             WHERE status = 'pending' AND enqueued_at IS NOT NULL
             GROUP BY batch_id
         ), win AS (
             SELECT w.window_size, greatest(w.window_size - coalesce(r.n, 0), 0) AS room,
                    greatest(w.window_size - coalesce(r.n, 0), 1) AS take
             FROM (SELECT CASE WHEN $4 THEN $1
                               ELSE least(greatest($3 * coalesce(sum(concurrency), 0), 1), $1)
                          END::int8 AS window_size
                   FROM workers
                   WHERE stopped_at IS NULL
                     AND last_seen > now() - make_interval(secs => $2)) w,
                  (SELECT sum(n)::int8 AS n FROM in_redis) r
         ), owners_in_redis AS (
             SELECT DISTINCT b.owner_id FROM in_redis r JOIN batches b ON b.id = r.batch_id
         ), waiting AS (
             SELECT b.id, b.owner_id, b.queued_at, coalesce(r.n, 0) AS in_redis,
                    row_number() OVER (PARTITION BY CASE WHEN $4 THEN NULL ELSE b.owner_id END
                                       ORDER BY CASE WHEN $4 THEN 0 ELSE coalesce(r.n, 0) END,
                                                b.queued_at, b.id) AS nth
             FROM batches b LEFT JOIN in_redis r ON r.batch_id = b.id
             WHERE b.status IN ('uploading', 'open', 'queued', 'processing')
               AND ((SELECT room FROM win) > 0
                    OR (NOT $4 AND NOT EXISTS (SELECT 1 FROM owners_in_redis o
                                               WHERE o.owner_id IS NOT DISTINCT FROM b.owner_id)))
               AND EXISTS (SELECT 1 FROM images i
                           WHERE i.batch_id = b.id AND i.status = 'pending'
                             AND i.enqueued_at IS NULL)
         ), considered AS (
             SELECT w.id, w.owner_id, w.queued_at, w.in_redis,
                    ARRAY(SELECT i.id FROM images i
                          WHERE i.batch_id = w.id AND i.status = 'pending'
                            AND i.enqueued_at IS NULL
                          ORDER BY i.position LIMIT (SELECT take FROM win)) AS images
             FROM waiting w WHERE w.nth <= (SELECT take FROM win)
             UNION ALL
             SELECT b.id, b.owner_id, b.queued_at, r.n, '{}'::uuid[]
             FROM in_redis r JOIN batches b ON b.id = r.batch_id
             WHERE EXISTS (SELECT 1 FROM waiting)
               AND NOT EXISTS (SELECT 1 FROM waiting w
                               WHERE w.id = r.batch_id AND w.nth <= (SELECT take FROM win))
         )
         SELECT win.window_size, win.room, c.id, c.owner_id,
                coalesce(o.weight, 1)::float8 AS weight, coalesce(p.pass, 0) AS pass,
                c.in_redis, c.images
         FROM win
         LEFT JOIN (considered c
                    LEFT JOIN owners o ON o.id = c.owner_id
                    LEFT JOIN dispatch_passes p
                           ON p.owner_id = coalesce(c.owner_id, '00000000-0000-0000-0000-000000000000'))
                ON true
         ORDER BY c.queued_at NULLS LAST, c.id",
    )
    .bind(i64::from(policy.max_window.max(1)))
    .bind(crate::db::LIVE_WORKER_SECONDS as f64)
    .bind(i64::from(JOBS_PER_SLOT))
    .bind(policy.fifo)
    .fetch_all(&mut *tx)
    .await?;
    // `win` has one row, so there is always at least one.
    let first = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let window = u32::try_from(first.try_get::<i64, _>("window_size")?).unwrap_or(u32::MAX);
    let room = usize::try_from(first.try_get::<i64, _>("room")?).unwrap_or(0);
    let mut report = Dispatched {
        images: 0,
        window,
        // A full window may hide a backlog: the next image to finish makes room.
        waiting: room == 0,
    };
    let mut batches = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(batch) = row.try_get::<Option<BatchId>, _>("id")? else {
            continue; // nothing waits
        };
        batches.push(Waiting {
            batch,
            owner: row.try_get("owner_id")?,
            weight: row.try_get("weight")?,
            pass: row.try_get("pass")?,
            in_redis: u32::try_from(row.try_get::<i64, _>("in_redis")?).unwrap_or(u32::MAX),
            images: row.try_get("images")?,
        });
    }
    // The owners waiting with nothing in Redis: each one's first image goes to the front of the
    // queue, even beyond a full window (by at most one job per such owner).
    let newcomers = if policy.fifo { 0 } else { newcomers(&batches) };
    if room == 0 && newcomers == 0 {
        tx.commit().await?;
        return Ok(report);
    }
    let take = room.max(newcomers);
    let Picked {
        images: picked,
        passes,
    } = if policy.fifo {
        pick_fifo(&batches, take)
    } else {
        pick(&batches, take)
    };
    let candidates: usize = batches.iter().map(|b| b.images.len()).sum();
    // Something may still wait when the room was filled, or some candidates were not picked.
    report.waiting = room == 0 || picked.len() >= room || candidates > picked.len();
    if !picked.is_empty() {
        let ids: Vec<ImageId> = picked.iter().map(|&(_, image)| image).collect();
        let (owners, passes): (Vec<uuid::Uuid>, Vec<f64>) = passes
            .into_iter()
            .map(|(owner, pass)| (owner.map_or(uuid::Uuid::nil(), |o| o.0), pass))
            .unzip();
        // One statement: the owners' new passes, and the picked images marked as pushed.
        let marked: Vec<ImageId> = sqlx::query_scalar(
            "WITH passes AS (
                 INSERT INTO dispatch_passes (owner_id, pass)
                 SELECT * FROM unnest($2::uuid[], $3::float8[])
                 ON CONFLICT (owner_id) DO UPDATE SET pass = EXCLUDED.pass
             )
             UPDATE images SET enqueued_at = now()
             WHERE id = ANY($1) AND status = 'pending' AND enqueued_at IS NULL
             RETURNING id",
        )
        .bind(&ids)
        .bind(&owners)
        .bind(&passes)
        .fetch_all(&mut *tx)
        .await?;
        // Under the lock nothing else marks images; a picked image is left out only when its
        // batch ended meanwhile. The newcomers' turns are the first picks ([`pick`]).
        let (front, back) = picked.split_at(newcomers.min(picked.len()));
        let marked: std::collections::HashSet<ImageId> = marked.into_iter().collect();
        let only_marked = |jobs: &[(BatchId, ImageId)]| -> Vec<(BatchId, ImageId)> {
            jobs.iter()
                .copied()
                .filter(|(_, image)| marked.contains(image))
                .collect()
        };
        let (front, back) = (only_marked(front), only_marked(back));
        queues.enqueue_images(&back).await?;
        queues.enqueue_images_first(&front).await?;
        report.images = front.len() + back.len();
    }
    tx.commit().await?;
    Ok(report)
}

/// Dispatches in the background soon after being asked. Requests made while a dispatch runs
/// coalesce into one more dispatch, so an upload can ask after every image it stores.
#[derive(Clone)]
pub struct Soon(Arc<tokio::sync::Notify>);

impl Soon {
    /// Starts the background task (on the current Tokio runtime).
    pub fn spawn(db: Db, queues: Queues, policy: Policy) -> Self {
        let notify = Arc::new(tokio::sync::Notify::new());
        let wanted = notify.clone();
        tokio::spawn(async move {
            loop {
                wanted.notified().await;
                if let Err(e) = dispatch(&db, &queues, policy).await {
                    // The images wait in Postgres; the workers' dispatchers send them.
                    tracing::warn!(error = %e, "could not dispatch now; the workers will");
                }
            }
        });
        Self(notify)
    }

    pub fn request(&self) {
        self.0.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(owner: Option<OwnerId>, weight: f64, in_redis: u32, n: usize) -> Waiting {
        Waiting {
            batch: BatchId::new(),
            owner,
            weight,
            pass: 0.0,
            in_redis,
            images: (0..n).map(|_| ImageId::new()).collect(),
        }
    }

    fn count(picked: &[(BatchId, ImageId)], b: &Waiting) -> usize {
        picked.iter().filter(|(id, _)| *id == b.batch).count()
    }

    /// Runs the picker as the dispatcher would, one image at a time, with the passes kept
    /// between picks (and nothing finishing): the owner of each pick, as a batch index.
    fn sequence(mut batches: Vec<Waiting>, picks: usize) -> Vec<usize> {
        let mut order = Vec::new();
        for _ in 0..picks {
            let picked = pick(&batches, 1);
            let Some(&(batch, image)) = picked.images.first() else {
                break;
            };
            let b = batches.iter().position(|w| w.batch == batch).unwrap();
            order.push(b);
            assert_eq!(batches[b].images.remove(0), image, "lowest position first");
            batches[b].in_redis += 1;
            for (owner, pass) in &picked.passes {
                for w in batches.iter_mut().filter(|w| w.owner == *owner) {
                    w.pass = *pass;
                }
            }
        }
        order
    }

    #[test]
    fn a_newcomer_goes_first_and_owners_alternate() {
        let a = Some(OwnerId::new());
        let b = Some(OwnerId::new());
        // A has been served a long time (a large pass); B arrives with none.
        let mut big = batch(a, 1.0, 7, 100);
        big.pass = 500.0;
        let small = batch(b, 1.0, 0, 1);
        let picked = pick(&[big.clone(), small.clone()], 1);
        assert_eq!(picked.images, vec![(small.batch, small.images[0])]);
        // B started from A's pass: no credit for its absence.
        assert_eq!(picked.passes, vec![(b, 501.0)]);

        // Both backlogged: they alternate, each in position order.
        let a1 = batch(a, 1.0, 0, 10);
        let b1 = batch(b, 1.0, 0, 10);
        let picked = pick(&[a1.clone(), b1.clone()], 4);
        assert_eq!(
            picked.images,
            vec![
                (a1.batch, a1.images[0]),
                (b1.batch, b1.images[0]),
                (a1.batch, a1.images[1]),
                (b1.batch, b1.images[1]),
            ]
        );
        assert_eq!(sequence(vec![a1, b1], 6), vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn the_first_picks_are_one_image_of_each_owner_with_nothing_in_redis() {
        let (a, b, c, d) = (
            Some(OwnerId::new()),
            Some(OwnerId::new()),
            Some(OwnerId::new()),
            None,
        );
        // A is served (in Redis, the smallest pass); B (weight 5), C and the owner-less
        // batches wait with nothing there, C and D with two batches each.
        let mut a1 = batch(a, 1.0, 6, 50);
        a1.pass = 10.0;
        let mut b1 = batch(b, 5.0, 0, 3);
        b1.pass = 2.0;
        let c1 = batch(c, 1.0, 0, 2);
        let c2 = batch(c, 1.0, 0, 2);
        let d1 = batch(d, 0.5, 0, 1);
        let d2 = batch(d, 0.5, 0, 1);
        let all = [a1.clone(), b1.clone(), c1.clone(), c2, d1.clone(), d2];
        assert_eq!(newcomers(&all), 3);
        for room in [3, 8] {
            let picked = pick(&all, room);
            let mut first: Vec<BatchId> = picked.images[..3].iter().map(|p| p.0).collect();
            first.sort();
            let mut want = vec![b1.batch, c1.batch, d1.batch];
            want.sort();
            assert_eq!(first, want, "room {room}: {:?}", picked.images);
        }
        // Nothing waits for an owner with nothing in Redis: no newcomer.
        assert_eq!(newcomers(&[a1, batch(b, 1.0, 2, 0)]), 0);
    }

    #[test]
    fn a_returning_owner_cannot_starve_the_others() {
        let a = Some(OwnerId::new());
        let b = Some(OwnerId::new());
        // B was last served long ago (pass 3); A is being served (pass 100, images in Redis).
        let mut a1 = batch(a, 1.0, 4, 50);
        a1.pass = 100.0;
        let mut b1 = batch(b, 1.0, 0, 50);
        b1.pass = 3.0;
        let order = sequence(vec![a1.clone(), b1.clone()], 8);
        assert_eq!(order, vec![1, 0, 1, 0, 1, 0, 1, 0]);
        // Nor does a returning owner wait for the others to catch up with its past.
        b1.pass = 9000.0;
        let order = sequence(vec![a1, b1], 8);
        assert_eq!(order, vec![1, 0, 1, 0, 1, 0, 1, 0]);
    }

    #[test]
    fn an_owners_batches_take_turns() {
        let a = Some(OwnerId::new());
        let b = Some(OwnerId::new());
        // A has 4 in Redis from a batch with nothing left waiting, and two batches waiting.
        let done = batch(a, 1.0, 4, 0);
        let a1 = batch(a, 1.0, 0, 10);
        let a2 = batch(a, 1.0, 0, 10);
        let b1 = batch(b, 1.0, 0, 10);
        let all = [done, a1.clone(), a2.clone(), b1.clone()];
        let picked = pick(&all, 8).images;
        // Equal passes: B goes first (fewer in Redis), then they alternate; A's picks are
        // split over its batches.
        assert_eq!(picked[0], (b1.batch, b1.images[0]));
        assert_eq!(count(&picked, &b1), 4);
        assert_eq!(count(&picked, &a1), 2);
        assert_eq!(count(&picked, &a2), 2);
    }

    #[test]
    fn weight_two_gets_twice_the_share_and_no_owner_is_one_owner() {
        let heavy = Some(OwnerId::new());
        let h = batch(heavy, 2.0, 0, 100);
        let n1 = batch(None, 1.0, 0, 100);
        let n2 = batch(None, 1.0, 0, 100);
        let picked = pick(&[n1.clone(), h.clone(), n2.clone()], 30).images;
        // Two thirds of 30, give or take the one pick a tie decides.
        let heavy_share = count(&picked, &h);
        assert!((19..=21).contains(&heavy_share), "{heavy_share} of 30");
        assert_eq!(count(&picked, &n1) + count(&picked, &n2), 30 - heavy_share);
        assert!(count(&picked, &n1).abs_diff(count(&picked, &n2)) <= 1);
        // One at a time too, as a busy system refills its window.
        let order = sequence(vec![n1, h], 30);
        let heavy_turns = order.iter().filter(|&&b| b == 1).count();
        assert!((19..=21).contains(&heavy_turns), "{heavy_turns} of 30");
    }

    #[test]
    fn picks_stop_when_nothing_waits() {
        let a = batch(None, 1.0, 0, 2);
        let b = batch(Some(OwnerId::new()), 1.0, 0, 1);
        let picked = pick(&[a.clone(), b.clone()], 10);
        assert_eq!(picked.images.len(), 3);
        assert_eq!(picked.passes.len(), 2);
        assert!(pick(&[], 5).images.is_empty());
        assert_eq!(pick(&[a], 0), Picked::default());
    }
}
