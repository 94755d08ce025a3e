//! Object storage over plain S3 (MinIO in production, Garage locally and in CI): originals,
//! results and archives. Keys come from generated ids only (see `domain::keys`). Deleting what is
//! already gone is success.

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

use crate::Settings;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Size of one multipart part: the most an upload buffers in memory per file.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The object (or bucket) does not exist.
    NotFound,
    /// The server could not be reached or answered with a transient failure: try again later.
    Transient,
    /// Anything else (permissions, bad request): trying again will not help.
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("storage {op} failed: {message}")]
pub struct StorageError {
    pub kind: StorageErrorKind,
    pub op: &'static str,
    pub message: String,
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        self.kind == StorageErrorKind::NotFound
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == StorageErrorKind::Transient
    }

    fn other(op: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: StorageErrorKind::Other,
            op,
            message: message.into(),
        }
    }
}

fn classify<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let kind = match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            match code {
                "NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchUpload" => {
                    StorageErrorKind::NotFound
                }
                "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" => {
                    StorageErrorKind::Transient
                }
                // No code (a HEAD answer has no body): the HTTP status says it.
                _ => kind_of_status(service.raw().status().as_u16()),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            StorageErrorKind::Transient
        }
        _ => StorageErrorKind::Other,
    };
    StorageError {
        kind,
        op,
        message: DisplayErrorContext(&err).to_string(),
    }
}

/// What an S3 answer's HTTP status means for the caller.
fn kind_of_status(status: u16) -> StorageErrorKind {
    match status {
        404 => StorageErrorKind::NotFound,
        408 | 429 | 500..=599 => StorageErrorKind::Transient,
        _ => StorageErrorKind::Other,
    }
}

/// The bucket this deployment uses.
#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    bucket: String,
}

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    /// Redacted in `Debug`, so that a logged configuration shows no secret.
    pub secret_access_key: SecretString,
    pub force_path_style: bool,
    /// How connections to the store are made and kept.
    pub connections: Connections,
}

impl StorageConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        // An empty S3_ENDPOINT (as compose passes an unset one) means AWS itself.
        let endpoint = settings
            .s3_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty());
        Self {
            connections: Connections::for_endpoint(endpoint.as_deref()),
            endpoint,
            region: settings.s3_region.clone(),
            bucket: settings.s3_bucket.clone(),
            access_key_id: settings.s3_access_key_id.clone(),
            secret_access_key: settings.s3_secret_access_key.clone(),
            force_path_style: settings.s3_force_path_style,
        }
    }
}

/// How the client connects to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Kept alive, acknowledging every read at once ([`crate::s3http`]): plain-HTTP endpoints,
    /// where Garage would otherwise stall reads on reused connections.
    QuickAck,
    /// The SDK's own client, kept alive: `https://` endpoints and AWS.
    Sdk,
    /// The SDK's client with a new connection per request. Only for comparison (the bench):
    /// the old way around Garage's stall.
    Fresh,
}

impl Connections {
    pub fn for_endpoint(endpoint: Option<&str>) -> Self {
        match endpoint {
            Some(e) if e.starts_with("http://") => Self::QuickAck,
            _ => Self::Sdk,
        }
    }
}

impl Storage {
    pub fn new(settings: &Settings) -> Self {
        Self::from_config(StorageConfig::from_settings(settings))
    }

    pub fn from_config(config: StorageConfig) -> Self {
        let creds = Credentials::new(
            config.access_key_id,
            config.secret_access_key.expose_secret().to_owned(),
            None,
            None,
            "settings",
        );
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region))
            .credentials_provider(creds)
            .force_path_style(config.force_path_style)
            // Checksums only where S3 requires them: MinIO and Garage do not all accept the
            // SDK's default streaming checksum trailers.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(3));
        if let Some(endpoint) = config.endpoint.as_deref().filter(|e| !e.is_empty()) {
            conf = conf.endpoint_url(endpoint);
        }
        match config.connections {
            Connections::Sdk => {}
            Connections::QuickAck => {
                conf = conf.http_client(crate::s3http::quick_ack_client(CONNECT_TIMEOUT));
            }
            Connections::Fresh => {
                use aws_smithy_http_client::tls;
                conf = conf.http_client(
                    aws_smithy_http_client::Builder::new()
                        .pool_max_idle_per_host(0)
                        .tls_provider(tls::Provider::Rustls(
                            tls::rustls_provider::CryptoMode::AwsLc,
                        ))
                        .build_https(),
                );
            }
        }
        Self {
            client: Client::from_conf(conf.build()),
            bucket: config.bucket,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Answers when the bucket is reachable (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| classify("head bucket", e))?;
        Ok(())
    }

    /// Deletes the (empty) bucket; a bucket already gone is success.
    pub async fn delete_bucket(&self) -> Result<(), StorageError> {
        match self
            .client
            .delete_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = classify("delete bucket", e);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates the bucket when it does not exist yet.
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        match self.ping().await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => {
                self.client
                    .create_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| classify("create bucket", e))?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify("put", e))?;
        Ok(())
    }

    /// Starts a streamed upload: parts of [`PART_SIZE`] go up as they fill.
    pub fn upload(&self, key: String, content_type: &'static str) -> Upload {
        Upload {
            storage: self.clone(),
            key,
            content_type,
            buffer: Vec::new(),
            part_size: PART_SIZE,
            multipart: None,
            written: 0,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let (body, _) = self.get_stream(key).await?;
        let data = body.collect().await.map_err(|e| StorageError {
            kind: StorageErrorKind::Transient,
            op: "get",
            message: e.to_string(),
        })?;
        Ok(data.into_bytes())
    }

    /// Streams an object: its body and its length.
    pub async fn get_stream(&self, key: &str) -> Result<(ByteStream, Option<i64>), StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("get", e))?;
        Ok((out.body, out.content_length))
    }

    /// Deletes one object; an object that is not there is success.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("delete", e))?;
        Ok(())
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("list", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// Deletes every object under `prefix`; returns how many there were. Nothing there is success.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let keys = self.list(prefix).await?;
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::other("delete", e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::other("delete", e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| classify("delete", e))?;
            if let Some(err) = out.errors().first() {
                return Err(StorageError {
                    kind: StorageErrorKind::Transient,
                    op: "delete",
                    message: format!("{:?}: {:?}", err.key(), err.message()),
                });
            }
        }
        self.abort_uploads(prefix).await?;
        Ok(keys.len())
    }

    /// Aborts the unfinished multipart uploads under `prefix` (left by a `web` that died in the
    /// middle of a file): they are invisible in listings but hold storage until aborted.
    pub async fn abort_uploads(&self, prefix: &str) -> Result<usize, StorageError> {
        let mut aborted = 0;
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .send()
                .await
                .map_err(|e| classify("list uploads", e))?;
            let uploads = out.uploads();
            if uploads.is_empty() {
                return Ok(aborted);
            }
            for upload in uploads {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| classify("abort upload", e))?;
                aborted += 1;
            }
            if !out.is_truncated().unwrap_or(false) {
                return Ok(aborted);
            }
        }
    }

    async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<String, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| classify("create multipart upload", e))?;
        out.upload_id.ok_or_else(|| {
            StorageError::other("create multipart upload", "no upload id in the answer")
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: ByteStream,
    ) -> Result<CompletedPart, StorageError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .map_err(|e| classify("upload part", e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag)
            .build())
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), StorageError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("complete multipart upload", e))?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort a multipart upload");
        }
    }
}

/// A streamed upload of one object. Parts go up in the background, at most
/// [`PARTS_IN_FLIGHT`] at once, so the caller goes on producing the next part meanwhile; at most
/// that many parts plus the one filling are held in memory.
pub struct Upload {
    storage: Storage,
    key: String,
    content_type: &'static str,
    buffer: Vec<u8>,
    part_size: usize,
    multipart: Option<Multipart>,
    written: u64,
}

/// Past this size, an [`Upload`]'s buffer grows to a whole part at once.
const GROW_UNTIL: usize = 1024 * 1024;

/// Parts uploaded at once by one [`Upload`].
pub const PARTS_IN_FLIGHT: usize = 2;

/// The smallest part S3 accepts (but for the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

struct Multipart {
    id: String,
    sent: Vec<CompletedPart>,
    sending:
        std::collections::VecDeque<tokio::task::JoinHandle<Result<CompletedPart, StorageError>>>,
}

async fn joined(
    part: tokio::task::JoinHandle<Result<CompletedPart, StorageError>>,
) -> Result<CompletedPart, StorageError> {
    part.await
        .map_err(|e| StorageError::other("upload part", e.to_string()))?
}

impl Upload {
    /// Parts of `bytes` (at least [`MIN_PART_SIZE`]) instead of [`PART_SIZE`].
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The first bytes received (for sniffing the type), while still in the buffer.
    pub fn head(&self) -> &[u8] {
        &self.buffer
    }

    pub async fn push(&mut self, mut chunk: &[u8]) -> Result<(), StorageError> {
        self.written += chunk.len() as u64;
        while !chunk.is_empty() {
            // Each part is exactly `part_size` (the rest of a chunk opens the next one), in one
            // buffer that grows by doubling while the file may still be small, then once to its
            // full size: never past it, and without a trail of freed smaller buffers.
            let room = self.part_size - self.buffer.len();
            let (now, rest) = chunk.split_at(room.min(chunk.len()));
            let needed = self.buffer.len() + now.len();
            if needed > self.buffer.capacity() {
                let grown = if needed > GROW_UNTIL {
                    self.part_size
                } else {
                    (self.buffer.capacity() * 2).max(needed)
                };
                self.buffer.reserve_exact(grown - self.buffer.len());
            }
            self.buffer.extend_from_slice(now);
            if self.buffer.len() == self.part_size {
                self.flush_part().await?;
            }
            chunk = rest;
        }
        Ok(())
    }

    async fn flush_part(&mut self) -> Result<(), StorageError> {
        if self.multipart.is_none() {
            let id = self
                .storage
                .create_multipart(&self.key, self.content_type)
                .await?;
            self.multipart = Some(Multipart {
                id,
                sent: Vec::new(),
                sending: Default::default(),
            });
        }
        let multipart = self.multipart.as_mut().expect("multipart started above");
        if multipart.sending.len() >= PARTS_IN_FLIGHT {
            let oldest = multipart.sending.pop_front().expect("parts in flight");
            multipart.sent.push(joined(oldest).await?);
        }
        // The next part will be full too (or the last): its whole buffer at once.
        let body = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(self.part_size),
        ));
        let number = (multipart.sent.len() + multipart.sending.len()) as i32 + 1;
        let (storage, key, id) = (self.storage.clone(), self.key.clone(), multipart.id.clone());
        multipart.sending.push_back(tokio::spawn(async move {
            storage
                .upload_part(&key, &id, number, ByteStream::from(body))
                .await
        }));
        Ok(())
    }

    /// Writes what is left and completes the object.
    pub async fn finish(mut self) -> Result<u64, StorageError> {
        if self.multipart.is_none() {
            let body = Bytes::from(std::mem::take(&mut self.buffer));
            self.storage.put(&self.key, body, self.content_type).await?;
            return Ok(self.written);
        }
        let result = async {
            if !self.buffer.is_empty() {
                self.flush_part().await?;
            }
            let multipart = self.multipart.as_mut().expect("multipart is some");
            while let Some(part) = multipart.sending.pop_front() {
                multipart.sent.push(joined(part).await?);
            }
            let parts = std::mem::take(&mut multipart.sent);
            self.storage
                .complete_multipart(&self.key, &multipart.id, parts)
                .await
        }
        .await;
        if let Err(e) = result {
            self.abort().await;
            return Err(e);
        }
        Ok(self.written)
    }

    /// Gives up: nothing of this object is left behind.
    pub async fn abort(mut self) {
        if let Some(multipart) = self.multipart.take() {
            for part in &multipart.sending {
                part.abort();
            }
            for part in multipart.sending {
                let _ = part.await;
            }
            self.storage.abort_multipart(&self.key, &multipart.id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::head_object::HeadObjectError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn answered(status: u16, code: Option<&str>) -> StorageError {
        let mut meta = ErrorMetadata::builder();
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = HttpResponse::new(
            StatusCode::try_from(status).expect("a status"),
            SdkBody::empty(),
        );
        classify(
            "head",
            SdkError::service_error(HeadObjectError::generic(meta.build()), raw),
        )
    }

    #[test]
    fn errors_are_classified_by_their_code_then_their_http_status() {
        assert_eq!(answered(404, None).kind, StorageErrorKind::NotFound);
        assert_eq!(answered(503, None).kind, StorageErrorKind::Transient);
        assert_eq!(answered(429, None).kind, StorageErrorKind::Transient);
        assert_eq!(answered(403, None).kind, StorageErrorKind::Other);
        assert_eq!(
            answered(400, Some("NoSuchKey")).kind,
            StorageErrorKind::NotFound
        );
        assert_eq!(
            answered(200, Some("SlowDown")).kind,
            StorageErrorKind::Transient
        );
        assert_eq!(
            answered(403, Some("AccessDenied")).kind,
            StorageErrorKind::Other
        );
    }

    #[test]
    fn the_secret_key_is_not_in_debug_output() {
        let config = StorageConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            bucket: "b".into(),
            access_key_id: "GK1".into(),
            secret_access_key: "s3cr3t-value".to_owned().into(),
            force_path_style: true,
            connections: Connections::QuickAck,
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
    }
}
