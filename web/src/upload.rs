//! Receiving a batch: the multipart body is streamed file by file to storage (at most three
//! parts of one file in memory: two uploading, one filling), each file's type is sniffed from
//! its first bytes, limits are enforced as the bytes arrive, and the pipeline is validated
//! before anything is enqueued. When the choices come before the files, each image is recorded
//! and dispatched as soon as it is stored. A refused or broken upload leaves nothing behind.

use axum::extract::multipart::{Field, Multipart, MultipartError};
use axum::http::{header, HeaderMap};
use jobs::db::{self, NewImage};
use jobs::domain::keys;
use jobs::names::display_name;
use jobs::pipeline::{Format, ACCEPTED};
use jobs::storage::Upload;
use jobs::{BatchId, ImageId};

use crate::choices::Choices;
use crate::error::AppError;
use crate::format::{capitalise, human_bytes};
use crate::state::AppState;

/// Bytes needed to tell the type of a file.
const SNIFF_BYTES: usize = 32;
/// Largest non-file field accepted (the pipeline JSON, a form value).
const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Most parts of one upload that are not files (choices, and parts we do not know).
const MAX_FIELDS: usize = 256;
/// Most bytes of all those parts together (the logo aside, which has its own limit).
const MAX_FIELDS_BYTES: usize = 512 * 1024;

/// What an upload may still send. Every byte of every part counts toward `MAX_BATCH_BYTES` as
/// it arrives, and the parts that are not files have a small budget of their own (how many,
/// and how many bytes together), so that a body of endless form fields cannot grow `web`. The
/// first excess ends the upload.
struct Budget {
    total: u64,
    limit: u64,
    fields: usize,
    field_bytes: usize,
}

impl Budget {
    /// The largest body an upload within the limits can have: the files and fields, plus each
    /// part's headers and delimiter (a generous 4 KiB for each part the limits allow) and a
    /// margin. A body that says it is larger (`Content-Length`) is refused before it is read.
    fn largest_body(max_batch_bytes: u64, max_files: u32) -> u64 {
        let parts = max_files as u64 + MAX_FIELDS as u64 + 2;
        max_batch_bytes
            .saturating_add(parts * 4096)
            .saturating_add(1024 * 1024)
    }

    fn new(limit: u64) -> Self {
        Self {
            total: 0,
            limit,
            fields: 0,
            field_bytes: 0,
        }
    }

    /// `n` more bytes of any part.
    fn bytes(&mut self, n: usize) -> Result<(), AppError> {
        self.total += n as u64;
        if self.total > self.limit {
            return Err(too_large_batch(self.limit));
        }
        Ok(())
    }

    /// One more part that is not a file.
    fn field(&mut self) -> Result<(), AppError> {
        self.fields += 1;
        if self.fields > MAX_FIELDS {
            return Err(AppError::TooLarge(format!(
                "too many fields: at most {MAX_FIELDS} besides the files"
            )));
        }
        Ok(())
    }

    /// `n` more bytes of a part that is not a file (nor the logo).
    fn field_bytes(&mut self, n: usize) -> Result<(), AppError> {
        self.bytes(n)?;
        self.field_bytes += n;
        if self.field_bytes > MAX_FIELDS_BYTES {
            return Err(AppError::TooLarge(format!(
                "the fields besides the files are larger than {} together",
                human_bytes(MAX_FIELDS_BYTES as u64)
            )));
        }
        Ok(())
    }
}

/// A batch that was received and enqueued.
pub struct Received {
    pub batch: BatchId,
    pub status: jobs::BatchStatus,
}

/// Receives a batch of `owner` (see [`crate::owner::resolve`]).
pub async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    owner: &jobs::owners::Owner,
    multipart: Multipart,
) -> Result<Received, AppError> {
    // A body that says it is beyond the limit is refused before a byte of it is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let settings = &state.settings;
    if declared
        > Some(Budget::largest_body(
            settings.max_batch_bytes,
            settings.max_files_per_batch,
        ))
    {
        return Err(too_large_batch(settings.max_batch_bytes));
    }
    // The upload runs on a task of its own: should the client go away and the request's future
    // be dropped, the body ends in an error and the upload still cleans up after itself (and its
    // images that workers already took).
    let Ok(slot) = state.upload_slots.clone().try_acquire_owned() else {
        tracing::warn!("refusing a submission: every upload slot is taken");
        return Err(AppError::Busy(format!(
            "{} uploads are arriving already, the most this server takes at once; please try \
             again in a few seconds",
            state.settings.max_concurrent_uploads
        )));
    };
    let state = state.clone();
    let owner = owner.id;
    let upload = async move {
        let received = receive_owned(&state, owner, multipart).await;
        drop(slot); // after the clean-up of a refused upload, too
        received
    };
    // In the request's span, so that its log lines carry the request's id.
    tokio::spawn(tracing::Instrument::instrument(
        upload,
        tracing::Span::current(),
    ))
    .await
    .map_err(|e| AppError::Internal(e.into()))?
}

async fn receive_owned(
    state: &AppState,
    owner: jobs::OwnerId,
    mut multipart: Multipart,
) -> Result<Received, AppError> {
    // Refuse up front, before reading a byte, when something the batch needs is down.
    let probe = state.probe().await;
    if !probe.all_up() {
        tracing::warn!(down = %probe.down(), "refusing a submission");
        return Err(AppError::Unavailable(format!(
            "{} is unavailable right now, so nothing was accepted; please try again in a minute",
            capitalise(&probe.down())
        )));
    }
    let batch = BatchId::new();
    let mut created = false;
    state.uploads.add(batch);
    jobs::metrics::UPLOADS_IN_PROGRESS.inc();
    let result = receive_into(state, batch, owner, &mut created, &mut multipart).await;
    jobs::metrics::UPLOADS_IN_PROGRESS.dec();
    state.uploads.remove(batch);
    if result.is_ok() {
        jobs::metrics::BATCHES_SUBMITTED.inc();
    }
    if result.is_err() && created {
        forget(state, batch).await;
    }
    result
}

/// Leaves nothing of a refused or broken upload: not its row, not its files, not the results
/// that workers already made of the images that came first. The batch is ended first, so that
/// no worker starts or counts another of its images, and a worker that stores a result after the
/// objects were deleted deletes it itself. Should storage fail now, the batch stays, expired, and
/// the purge deletes its objects and then it.
async fn forget(state: &AppState, batch: BatchId) {
    if let Err(e) = db::abandon_upload(&state.db, batch).await {
        tracing::warn!(%batch, error = %e, "could not end a refused upload; the reconciler will");
    }
    if let Err(e) = state
        .storage
        .delete_prefix(&keys::batch_prefix(batch))
        .await
    {
        tracing::warn!(%batch, error = %e, "could not delete a refused upload's files; the purge will");
    } else if let Err(e) = db::delete_batch(&state.db, batch).await {
        tracing::warn!(%batch, error = %e, "could not delete a refused upload's row; the purge will");
    }
}

async fn receive_into(
    state: &AppState,
    batch: BatchId,
    owner: jobs::OwnerId,
    created: &mut bool,
    multipart: &mut Multipart,
) -> Result<Received, AppError> {
    let settings = &state.settings;
    let mut files: Vec<NewImage> = Vec::new();
    let mut choices = Choices::default();
    // Where the batch's status is POSTed when it ends (checked as it arrives).
    let mut callback: Option<String> = None;
    let mut budget = Budget::new(settings.max_batch_bytes);
    // Set when the choices came before the first file and make a valid pipeline: each image is
    // then recorded and dispatched as soon as it is stored, while the rest still arrive.
    let mut recorder: Option<Recorder> = None;

    while let Some(field) = multipart.next_field().await.map_err(bad_body)? {
        let name = field.name().unwrap_or_default().to_owned();
        if recorder.is_some() && Choices::is_choice(&name) {
            return Err(AppError::BadRequest(format!(
                "the field {name:?} came after the files, but the choices that came before them \
                 were already being applied: send every choice (and the logo) before the files, \
                 or all of them after"
            )));
        }
        match name.as_str() {
            "files" | "file" => {
                // A form with no file chosen sends one empty, unnamed part: skipped. An unnamed
                // part with content is a file like any other (named "unnamed").
                let unnamed = field.file_name().is_none_or(str::is_empty);
                if files.len() >= settings.max_files_per_batch as usize {
                    return Err(AppError::TooLarge(format!(
                        "too many files: at most {} per batch (MAX_FILES_PER_BATCH)",
                        settings.max_files_per_batch
                    )));
                }
                if !*created {
                    let settled = choices.settled();
                    db::create_batch(&state.db, batch, owner, settled.as_ref()).await?;
                    *created = true;
                    if settled.is_some() {
                        recorder = Some(Recorder::start(state, batch));
                    }
                }
                let file = receive_file(state, batch, field, &mut budget).await?;
                if unnamed && file.input_bytes == 0 {
                    continue;
                }
                if let Some(r) = &recorder {
                    if !r.record(files.len(), file.clone()) {
                        // It stopped on an error: say which.
                        recorder.take().expect("a recorder").finish().await?;
                    }
                }
                files.push(file);
            }
            "logo" => {
                let bytes = logo_bytes(field, &mut budget).await?;
                if bytes.is_empty() {
                    continue; // the form's logo input, left empty
                }
                let check = bytes.clone();
                tokio::task::spawn_blocking(move || jobs::pipeline::decode_logo(&check))
                    .await
                    .map_err(|e| AppError::Internal(e.into()))?
                    .map_err(AppError::BadRequest)?;
                if !*created {
                    db::create_batch(&state.db, batch, owner, None).await?;
                    *created = true;
                }
                state
                    .storage
                    .put(&keys::logo(batch), bytes.into(), "application/octet-stream")
                    .await?;
                choices.logo = true;
            }
            "callback_url" => {
                let url = text(field, &mut budget).await?;
                callback = callback_url(settings, &url)?;
            }
            other if Choices::is_text(other) => {
                let value = text(field, &mut budget).await?;
                choices.set(&name, value);
            }
            _ => drain(field, &mut budget).await?,
        }
    }

    if files.is_empty() {
        return Err(AppError::BadRequest(
            "no files: choose at least one image".into(),
        ));
    }
    let streamed = recorder.is_some();
    let recorded = if let Some(recorder) = recorder {
        recorder.finish().await?;
        db::finish_upload(
            &state.db,
            batch,
            files.len(),
            callback.as_deref(),
            settings.result_ttl(),
        )
        .await?
    } else {
        let pipeline = choices.resolve()?.to_json();
        db::record_upload(
            &state.db,
            batch,
            &pipeline,
            &files,
            callback.as_deref(),
            settings.result_ttl(),
        )
        .await?
    };
    // Committed: from here on the batch cannot be lost. Its images (or, when every file was
    // refused, its archive) wait in Postgres until a dispatcher sends them to Redis: this one
    // now, or the workers' should Redis fail now.
    if let Err(e) =
        jobs::dispatch::dispatch(&state.db, &state.queues, settings.dispatch_window).await
    {
        tracing::warn!(%batch, error = %e, "could not dispatch now; the workers will");
    }
    let status = recorded.status;
    tracing::info!(%batch, files = files.len(), bytes = budget.total, streamed, "batch received");
    Ok(Received { batch, status })
}

/// Records the images of an upload whose choices came first, in the background, and asks for
/// a dispatch after each commit, so that storing the next file does not wait on Postgres. Small
/// files are recorded in groups (up to [`GROUP_FILES`], or what arrived within [`GROUP_WAIT`]
/// of the first), since one transaction and one dispatch per tiny image cost more than they
/// gain; a file of [`GROUP_BYTES`] or more goes at once. Dropped on an error, it records what it
/// was given and stops.
struct Recorder {
    queue: tokio::sync::mpsc::UnboundedSender<(usize, NewImage)>,
    task: tokio::task::JoinHandle<Result<(), sqlx::Error>>,
}

/// Most images recorded in one transaction.
const GROUP_FILES: usize = 64;
/// A group this large (in input bytes) is recorded without waiting for more.
const GROUP_BYTES: i64 = 1024 * 1024;
/// How long the first image of a group waits for others.
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(40);

impl Recorder {
    fn start(state: &AppState, batch: BatchId) -> Self {
        let (queue, mut stored) = tokio::sync::mpsc::unbounded_channel::<(usize, NewImage)>();
        let db = state.db.clone();
        let dispatch = state.dispatch.clone();
        let task = tokio::spawn(async move {
            let mut group: Vec<(usize, NewImage)> = Vec::new();
            let mut deadline = tokio::time::Instant::now();
            loop {
                let open = if group.is_empty() {
                    let open = stored.recv_many(&mut group, GROUP_FILES).await > 0;
                    deadline = tokio::time::Instant::now() + GROUP_WAIT;
                    open
                } else {
                    let room = GROUP_FILES.saturating_sub(group.len()).max(1);
                    tokio::select! {
                        n = stored.recv_many(&mut group, room) => n > 0,
                        () = tokio::time::sleep_until(deadline) => true,
                    }
                };
                let bytes: i64 = group.iter().map(|(_, image)| image.input_bytes).sum();
                let full = group.len() >= GROUP_FILES
                    || bytes >= GROUP_BYTES
                    || tokio::time::Instant::now() >= deadline;
                if !group.is_empty() && (full || !open) {
                    db::add_images(&db, batch, &group).await?;
                    if group.iter().any(|(_, image)| image.rejected.is_none()) {
                        dispatch.request();
                    }
                    group.clear();
                }
                if !open {
                    return Ok(());
                }
            }
        });
        Self { queue, task }
    }

    /// Hands over one image; false when the recorder has stopped on an error.
    fn record(&self, position: usize, image: NewImage) -> bool {
        self.queue.send((position, image)).is_ok()
    }

    /// Waits until every image handed over is recorded.
    async fn finish(self) -> Result<(), AppError> {
        drop(self.queue);
        self.task
            .await
            .map_err(|e| AppError::Internal(e.into()))?
            .map_err(AppError::from)
    }
}

/// The `callback_url` field: empty means none (the form's field, left blank); otherwise it must
/// pass [`jobs::webhook::check_callback_url`], and webhooks must be on (`WEBHOOK_SECRET`).
pub(crate) fn callback_url(
    settings: &jobs::Settings,
    value: &str,
) -> Result<Option<String>, AppError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let Some(webhooks) = settings.webhooks() else {
        return Err(AppError::BadRequest(
            "callback_url was given, but this server does not send webhooks (its operator has \
             not set WEBHOOK_SECRET); submit without it and follow status_url instead"
                .into(),
        ));
    };
    jobs::webhook::check_callback_url(value, webhooks.allow_private)
        .map(|url| Some(url.into()))
        .map_err(AppError::BadRequest)
}

/// Where the bytes of one file come from: a part of a multipart body (whose bytes count toward
/// the upload's [`Budget`]), or the whole body of a `PUT` to an open batch
/// ([`crate::open`]). `None` at the end of the file.
pub(crate) trait Chunks {
    async fn chunk(&mut self) -> Result<Option<axum::body::Bytes>, AppError>;
}

/// A file part of a multipart upload, counted toward its budget.
struct FieldChunks<'f, 'b> {
    field: Field<'f>,
    budget: &'b mut Budget,
}

impl Chunks for FieldChunks<'_, '_> {
    async fn chunk(&mut self) -> Result<Option<axum::body::Bytes>, AppError> {
        let chunk = self.field.chunk().await.map_err(bad_body)?;
        if let Some(c) = &chunk {
            self.budget.bytes(c.len())?;
        }
        Ok(chunk)
    }
}

/// Streams one file of a multipart upload to storage ([`store_file`]).
async fn receive_file(
    state: &AppState,
    batch: BatchId,
    field: Field<'_>,
    budget: &mut Budget,
) -> Result<NewImage, AppError> {
    let name = display_name(field.file_name().unwrap_or("unnamed"));
    let mut chunks = FieldChunks { field, budget };
    store_file(state, batch, ImageId::new(), name, &mut chunks).await
}

/// Streams one file to storage as image `id` of `batch`, sniffing its type from its first bytes.
/// A file that is empty, too large or not an image is returned as refused (with its reason) and
/// not stored, its bytes read and dropped; the rest of the batch goes on. An error of the body
/// (or of storage) is the request's: nothing of the file is left.
pub(crate) async fn store_file(
    state: &AppState,
    batch: BatchId,
    id: ImageId,
    name: String,
    chunks: &mut impl Chunks,
) -> Result<NewImage, AppError> {
    let settings = &state.settings;
    let mut file = Incoming::default();
    let mut size: u64 = 0;

    let outcome: Result<(), AppError> = async {
        while let Some(chunk) = chunks.chunk().await? {
            jobs::metrics::UPLOADED_BYTES.inc_by(chunk.len() as u64);
            size += chunk.len() as u64;
            if file.rejected.is_some() {
                continue; // read and discard the rest of a refused file
            }
            if size > settings.max_file_bytes {
                file.rejected = Some(format!(
                    "the file is larger than the limit of {} (MAX_FILE_BYTES)",
                    human_bytes(settings.max_file_bytes)
                ));
                if let Some(u) = file.upload.take() {
                    u.abort().await;
                }
                continue;
            }
            match file.upload.as_mut() {
                Some(u) => u.push(&chunk).await?,
                None => {
                    file.head.extend_from_slice(&chunk);
                    if file.head.len() >= SNIFF_BYTES {
                        file.start(state, keys::original(batch, id)).await?;
                    }
                }
            }
        }
        if file.rejected.is_none() && file.upload.is_none() {
            if size == 0 {
                file.rejected = Some("the file is empty".into());
            } else {
                file.start(state, keys::original(batch, id)).await?;
            }
        }
        Ok(())
    }
    .await;

    match (outcome, file.upload) {
        (Err(e), Some(u)) => {
            u.abort().await;
            Err(e)
        }
        (Err(e), None) => Err(e),
        (Ok(()), Some(u)) => {
            u.finish().await?;
            Ok(NewImage {
                id,
                name,
                input_format: file.format.map(|f| f.as_str().to_owned()),
                input_bytes: size as i64,
                rejected: None,
            })
        }
        (Ok(()), None) => Ok(NewImage {
            id,
            name,
            input_format: None,
            input_bytes: size as i64,
            rejected: Some(
                file.rejected
                    .unwrap_or_else(|| format!("not an image we can read (expected {ACCEPTED})")),
            ),
        }),
    }
}

/// A file as it arrives: its first bytes until its type is known, then its upload; or why it
/// was refused.
#[derive(Default)]
struct Incoming {
    head: Vec<u8>,
    upload: Option<Upload>,
    format: Option<Format>,
    rejected: Option<String>,
}

impl Incoming {
    /// Sniffs the buffered head and, when it is an image, starts its upload to `key`.
    async fn start(&mut self, state: &AppState, key: String) -> Result<(), AppError> {
        match Format::sniff(&self.head) {
            Some(f) => {
                let mut u = state.storage.upload(key, f.mime());
                u.push(&self.head).await?;
                self.format = Some(f);
                self.upload = Some(u);
            }
            None => {
                self.rejected = Some(format!(
                    "not an image we can read (expected {ACCEPTED}; the name does not matter, \
                     the content does)"
                ));
            }
        }
        self.head.clear();
        Ok(())
    }
}

/// The bytes of the logo field, at most [`jobs::pipeline::MAX_LOGO_BYTES`].
async fn logo_bytes(mut field: Field<'_>, budget: &mut Budget) -> Result<Vec<u8>, AppError> {
    budget.field()?;
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_body)? {
        budget.bytes(chunk.len())?;
        buf.extend_from_slice(&chunk);
        if buf.len() > jobs::pipeline::MAX_LOGO_BYTES {
            return Err(AppError::TooLarge(format!(
                "the logo is larger than the limit of {}",
                human_bytes(jobs::pipeline::MAX_LOGO_BYTES as u64)
            )));
        }
    }
    Ok(buf)
}

async fn text(mut field: Field<'_>, budget: &mut Budget) -> Result<String, AppError> {
    budget.field()?;
    let name = field.name().unwrap_or_default().to_owned();
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_body)? {
        budget.field_bytes(chunk.len())?;
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_FIELD_BYTES {
            return Err(AppError::TooLarge(format!(
                "the field {name:?} is too long"
            )));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| AppError::BadRequest(format!("the field {name:?} is not valid UTF-8")))
}

/// A part we do not know: read and dropped, within the fields' budget.
async fn drain(mut field: Field<'_>, budget: &mut Budget) -> Result<(), AppError> {
    budget.field()?;
    while let Some(chunk) = field.chunk().await.map_err(bad_body)? {
        budget.field_bytes(chunk.len())?;
    }
    Ok(())
}

pub(crate) fn too_large_batch(limit: u64) -> AppError {
    AppError::TooLarge(format!(
        "the upload is larger than the limit of {} per batch (MAX_BATCH_BYTES)",
        human_bytes(limit)
    ))
}

fn bad_body(e: MultipartError) -> AppError {
    if crate::pace::too_slow(&e) {
        return AppError::Timeout(
            "the upload arrived too slowly, so it was stopped; please try again on a better \
             connection"
                .into(),
        );
    }
    AppError::BadRequest(format!("the upload could not be read: {}", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn every_part_counts_and_the_first_excess_ends_the_upload() {
        let mut budget = Budget::new(1_000_000);
        for _ in 0..MAX_FIELDS {
            budget.field().expect("within the count");
        }
        let err = budget.field().expect_err("one field too many");
        assert!(err.to_string().contains("too many fields"), "{err}");
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let mut budget = Budget::new(u64::MAX);
        budget
            .field_bytes(MAX_FIELDS_BYTES)
            .expect("within the fields' bytes");
        let err = budget.field_bytes(1).expect_err("one byte too many");
        assert!(err.to_string().contains("besides the files"), "{err}");

        // Field bytes count toward the batch as well; files only toward the batch.
        let mut budget = Budget::new(100);
        budget.field_bytes(60).expect("fits");
        budget.bytes(40).expect("fits");
        let err = budget.bytes(1).expect_err("over the batch");
        assert!(err.to_string().contains("MAX_BATCH_BYTES"), "{err}");

        // A body may carry its parts' headers beyond the limit, but not much more.
        let largest = Budget::largest_body(500 << 20, 200);
        assert!(largest > (500 << 20) + 458 * 4096, "{largest}");
        assert!(largest < (500 << 20) + (4 << 20), "{largest}");
    }
}
