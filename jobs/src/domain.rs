//! Domain types: batch and image ids, and the states a batch and an image move through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The random, unguessable id of ", $what, ".")]
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
            sqlx::Type,
        )]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id (UUID v4: 122 random bits).
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(BatchId, "a batch");
id_type!(ImageId, "an image");
id_type!(
    OwnerId,
    "an owner (an API key, or an anonymous client address)"
);

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    /// Files are being received in one request.
    Uploading,
    /// An open batch: it takes its files over many requests until it is closed, and its images
    /// are processed as they arrive.
    Open,
    /// Every file is stored; images wait for a worker.
    Queued,
    /// At least one worker has started on it.
    Processing,
    /// Every image is done or failed; the zip is being built.
    Archiving,
    /// The zip is ready to download.
    Done,
    /// Nothing could be produced (every image failed, or the upload broke off).
    Failed,
    /// Stopped by its owner: its pending images never start, its files are deleted.
    Cancelled,
    /// Its files were deleted after the result TTL.
    Expired,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 9] = [
        Self::Uploading,
        Self::Open,
        Self::Queued,
        Self::Processing,
        Self::Archiving,
        Self::Done,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploading => "uploading",
            Self::Open => "open",
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Archiving => "archiving",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// True once nothing more will happen to the batch but the purge.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed | Self::Cancelled | Self::Expired
        )
    }

    /// True while files are still arriving (one request's upload, or an open batch).
    pub fn is_receiving(self) -> bool {
        matches!(self, Self::Uploading | Self::Open)
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BatchStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown batch status {s:?}"))
    }
}

/// Rows hold statuses as text; one that names no status is a decoding error, never a guess.
impl TryFrom<String> for BatchStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Where one image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    Pending,
    Done,
    Failed,
    /// Its batch was cancelled before it was processed.
    Cancelled,
}

impl ImageStatus {
    pub const ALL: [ImageStatus; 4] = [Self::Pending, Self::Done, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl FromStr for ImageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown image status {s:?}"))
    }
}

impl fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for ImageStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Object keys: always built from generated ids, never from anything a user typed.
pub mod keys {
    use super::{BatchId, ImageId};

    pub fn batch_prefix(batch: BatchId) -> String {
        format!("batches/{batch}/")
    }

    pub fn original(batch: BatchId, image: ImageId) -> String {
        format!("batches/{batch}/in/{image}")
    }

    pub fn output(batch: BatchId, image: ImageId, ext: &str) -> String {
        format!("batches/{batch}/out/{image}.{ext}")
    }

    /// The logo uploaded with a batch, if any.
    pub fn logo(batch: BatchId) -> String {
        format!("batches/{batch}/logo")
    }

    pub fn archive(batch: BatchId) -> String {
        format!("batches/{batch}/result.zip")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for st in BatchStatus::ALL {
            assert_eq!(st.as_str().parse::<BatchStatus>(), Ok(st));
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("nope".parse::<BatchStatus>().is_err());
        for st in ImageStatus::ALL {
            assert_eq!(ImageStatus::try_from(st.as_str().to_owned()), Ok(st));
        }
        // A row with a status this version does not know fails to decode: no silent "pending".
        assert!(ImageStatus::try_from("archived".to_owned()).is_err());
        assert!(BatchStatus::try_from("paused".to_owned()).is_err());
    }

    #[test]
    fn keys_live_under_the_batch_prefix() {
        let b = BatchId::new();
        let i = ImageId::new();
        let prefix = keys::batch_prefix(b);
        // Every key a batch can own: the purge deletes the prefix, so one outside it would stay.
        for key in [
            keys::original(b, i),
            keys::output(b, i, "jpg"),
            keys::logo(b),
            keys::archive(b),
        ] {
            assert!(key.starts_with(&prefix), "{key}");
            assert!(key.len() > prefix.len(), "{key}");
        }
    }
}
