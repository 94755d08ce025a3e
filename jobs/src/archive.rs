//! The zip of a batch, assembled as it is downloaded: never built ahead, never stored. Every
//! processed image goes in under its cleaned, unique original name, in the batch's order, plus a
//! report of the files that failed and why. The sizes of the results were recorded when they were
//! stored, so the zip's layout and length are known before its first byte ([`crate::zipfile`]),
//! and its bytes are the results' own, read from storage a few at a time as the client takes
//! them: a batch is ready the moment its last image is stored, the store holds each result once,
//! and the download of a batch of any size holds only a few reads in memory.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};

use crate::db::{self, Db};
use crate::domain::{keys, BatchId};
use crate::names::{unique_entry_names, REPORT_NAME};
use crate::pipeline::Format;
use crate::storage::Storage;
use crate::zipfile::{ZipEntry, ZipPlan};
use crate::ImageStatus;

/// Results whose reads are started ahead of the one being sent.
const READ_AHEAD: usize = 4;

/// Where the bytes of one entry come from.
#[derive(Debug, Clone)]
enum Source {
    /// A result in storage, of the recorded size.
    Result { key: String },
    /// The report of the files that failed.
    Report(Bytes),
}

/// A batch's zip, laid out: what goes in it and where its bytes come from.
#[derive(Debug, Clone)]
pub struct BatchZip {
    plan: ZipPlan,
    sources: Vec<Source>,
}

/// Why a zip could not be sent whole.
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("the stored result {key} has {actual} bytes, not the {expected} recorded")]
    Size {
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("reading {key}: {message}")]
    Read { key: String, message: String },
}

impl BatchZip {
    /// Lays out the zip of `batch`: its done images (in order) and the report of its failures.
    /// Entries carry the time `at` (when the batch finished).
    pub async fn load(db: &Db, batch: BatchId, at: DateTime<Utc>) -> Result<Self, sqlx::Error> {
        Ok(Self::from_entries(
            batch,
            &db::archive_entries(db, batch).await?,
            at,
        ))
    }

    /// [`BatchZip::load`] from entries already read.
    pub fn from_entries(batch: BatchId, entries: &[db::ArchiveEntry], at: DateTime<Utc>) -> Self {
        let done: Vec<(&db::ArchiveEntry, Format, u64)> = entries
            .iter()
            .filter(|e| e.status == ImageStatus::Done)
            .filter_map(|e| {
                let format = e.output_format.as_deref().and_then(Format::parse)?;
                Some((e, format, e.output_bytes.unwrap_or(0).max(0) as u64))
            })
            .collect();
        let failures: Vec<(String, String)> = entries
            .iter()
            .filter(|e| e.status == ImageStatus::Failed)
            .map(|e| {
                let reason = e.error.clone().unwrap_or_else(|| "unknown reason".into());
                (e.name.clone(), reason)
            })
            .collect();
        let names = unique_entry_names(done.iter().map(|(e, f, _)| (e.name.as_str(), *f)));
        let mut zip_entries = Vec::with_capacity(done.len() + 1);
        let mut sources = Vec::with_capacity(done.len() + 1);
        for ((entry, format, size), name) in done.iter().zip(names) {
            zip_entries.push(ZipEntry { name, size: *size });
            sources.push(Source::Result {
                key: keys::output(batch, entry.id, format.ext()),
            });
        }
        if !failures.is_empty() {
            let report = Bytes::from(report_text(&failures).into_bytes());
            zip_entries.push(ZipEntry {
                name: REPORT_NAME.into(),
                size: report.len() as u64,
            });
            sources.push(Source::Report(report));
        }
        Self {
            plan: ZipPlan::new(zip_entries, at),
            sources,
        }
    }

    /// The zip's length in bytes.
    pub fn len(&self) -> u64 {
        self.plan.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Images in the zip (the report aside).
    pub fn images(&self) -> usize {
        self.sources
            .iter()
            .filter(|s| matches!(s, Source::Result { .. }))
            .count()
    }

    /// The zip's bytes, in order, reading the results from `storage` a few ahead of the one
    /// being sent. The first result's read is under way before this returns, so that storage
    /// out of reach is an error here, before anything is sent. A result missing or of another
    /// size than recorded later ends the stream with an error (the client sees a broken
    /// download, never a wrong zip).
    pub async fn open(
        self,
        storage: Storage,
    ) -> Result<impl Stream<Item = Result<Bytes, ZipError>> + Send, ZipError> {
        let Self { plan, sources } = self;
        let plan = std::sync::Arc::new(plan);
        // Each entry's bytes: a result's read is started up to READ_AHEAD entries early (its
        // answer's head is awaited, its body read only in turn).
        let mut bodies = futures::stream::iter(sources)
            .map(move |source| {
                let storage = storage.clone();
                async move {
                    match source {
                        Source::Report(bytes) => Ok::<_, ZipError>(EntryBody::Ready(bytes)),
                        Source::Result { key } => {
                            let (body, _) = storage.get_stream(&key).await?;
                            Ok(EntryBody::Stored { key, body })
                        }
                    }
                }
            })
            .buffered(READ_AHEAD)
            .boxed()
            .peekable();
        if let Some(Err(_)) = std::pin::Pin::new(&mut bodies).peek().await {
            if let Some(Err(e)) = bodies.next().await {
                return Err(e);
            }
        }
        let entries = bodies.enumerate().map({
            let plan = plan.clone();
            move |(i, body)| {
                let plan = plan.clone();
                entry_bytes(plan, i, body)
            }
        });
        // Every entry's header, bytes and descriptor, each entry's CRC kept for the directory.
        let crcs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let body = entries.flatten().map({
            let crcs = crcs.clone();
            move |piece| {
                piece.map(|piece| match piece {
                    Piece::Bytes(b) => b,
                    Piece::Crc(crc, descriptor) => {
                        crcs.lock().unwrap_or_else(|e| e.into_inner()).push(crc);
                        descriptor
                    }
                })
            }
        });
        let trailer = futures::stream::once(async move {
            let crcs = std::mem::take(&mut *crcs.lock().unwrap_or_else(|e| e.into_inner()));
            Ok(Bytes::from(plan.trailer(&crcs)))
        });
        Ok(body.chain(trailer))
    }
}

/// The body of one entry, once its read has started.
enum EntryBody {
    Ready(Bytes),
    Stored {
        key: String,
        body: aws_sdk_s3::primitives::ByteStream,
    },
}

/// What one entry contributes: bytes, then its descriptor with the CRC for the directory.
enum Piece {
    Bytes(Bytes),
    Crc(u32, Bytes),
}

/// Entry `i`: its local header, its bytes (counted and checked against the recorded size, their
/// CRC computed as they go), and its data descriptor.
fn entry_bytes(
    plan: std::sync::Arc<ZipPlan>,
    i: usize,
    body: Result<EntryBody, ZipError>,
) -> impl Stream<Item = Result<Piece, ZipError>> + Send {
    let expected = plan.entries()[i].size;
    let header = futures::stream::once({
        let header = Bytes::from(plan.local_header(i));
        async move { Ok(Piece::Bytes(header)) }
    });
    let (key, data): (
        String,
        futures::stream::BoxStream<'static, Result<Bytes, ZipError>>,
    ) = match body {
        Err(e) => (
            String::new(),
            futures::stream::once(async move { Err(e) }).boxed(),
        ),
        Ok(EntryBody::Ready(bytes)) => (
            REPORT_NAME.to_owned(),
            futures::stream::once(async move { Ok(bytes) }).boxed(),
        ),
        Ok(EntryBody::Stored { key, body }) => {
            let k = key.clone();
            let chunks = futures::stream::unfold(body, |mut body| async move {
                body.next().await.map(|chunk| (chunk, body))
            });
            (
                key,
                chunks
                    .map_err(move |e| ZipError::Read {
                        key: k.clone(),
                        message: e.to_string(),
                    })
                    .boxed(),
            )
        }
    };
    let state = (
        data,
        crc32fast::Hasher::new(),
        0u64,
        false, // done
    );
    let bytes = futures::stream::unfold(state, move |(mut data, mut crc, mut seen, done)| {
        let key = key.clone();
        let plan = plan.clone();
        async move {
            if done {
                return None;
            }
            match data.next().await {
                Some(Ok(chunk)) => {
                    crc.update(&chunk);
                    seen += chunk.len() as u64;
                    if seen > expected {
                        let e = ZipError::Size {
                            key,
                            expected,
                            actual: seen,
                        };
                        return Some((Err(e), (data, crc, seen, true)));
                    }
                    Some((Ok(Piece::Bytes(chunk)), (data, crc, seen, false)))
                }
                Some(Err(e)) => Some((Err(e), (data, crc, seen, true))),
                None if seen != expected => {
                    let e = ZipError::Size {
                        key,
                        expected,
                        actual: seen,
                    };
                    Some((Err(e), (data, crc, seen, true)))
                }
                None => {
                    let sum = crc.clone().finalize();
                    let descriptor = Bytes::from(plan.descriptor(i, sum));
                    Some((Ok(Piece::Crc(sum, descriptor)), (data, crc, seen, true)))
                }
            }
        }
    });
    header.chain(bytes)
}

/// Notes the length of a finished batch's zip (what the statistics call zip bytes).
pub async fn note_length(db: &Db, batch: BatchId) -> Result<(), sqlx::Error> {
    let Some(row) = db::get_batch(db, batch).await? else {
        return Ok(());
    };
    if row.status != crate::BatchStatus::Done {
        return Ok(());
    }
    let zip = BatchZip::load(db, batch, row.finished_at.unwrap_or(row.created_at)).await?;
    db::record_zip_length(db, batch, zip.len()).await
}

/// The text of the report of failed files.
pub fn report_text(failures: &[(String, String)]) -> String {
    let mut text = format!(
        "{} file(s) of this batch could not be processed and are not in this archive:\r\n\r\n",
        failures.len()
    );
    for (name, reason) in failures {
        let name: String = name.chars().filter(|c| !c.is_control()).collect();
        text.push_str(&format!("- {name}: {reason}\r\n"));
    }
    text
}
