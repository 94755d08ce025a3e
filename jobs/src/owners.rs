//! Who a batch belongs to: an API key, or, for the anonymous browser form, the client's address.
//! Owners get a fair share of the workers (their `weight`, see `dispatch`) and limits of their
//! own. A key is shown once, when it is made: Postgres keeps only its visible prefix and the
//! SHA-256 of the whole key (keys are 256 random bits, so a fast hash is the right one).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::{FromRow, Row};

use crate::db::Db;
use crate::domain::OwnerId;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit batches (and add files to them, close and cancel them).
    Submit,
    /// Read what the key owns: its usage, its batches.
    Read,
    /// Everything: every batch, the keys, the monitor and the statistics.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Self::Submit, Self::Read, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s.trim())
            .ok_or_else(|| format!("unknown scope {s:?} (known: submit, read, admin)"))
    }
}

/// Parses `submit,read` (commas or spaces).
pub fn parse_scopes(s: &str) -> Result<Vec<Scope>, String> {
    let mut scopes: Vec<Scope> = Vec::new();
    for part in s.split([',', ' ']).filter(|p| !p.trim().is_empty()) {
        let scope: Scope = part.parse()?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err("at least one scope: submit, read or admin".into());
    }
    Ok(scopes)
}

/// Per-owner limits; `None` is the server's default (`OWNER_MAX_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OwnerLimits {
    /// Images queued or being processed at once.
    pub max_queued_images: Option<i32>,
    /// Batches created per minute (a sliding minute).
    pub max_batches_per_minute: Option<i32>,
    /// Bytes of files received per day (a sliding 24 hours).
    pub max_bytes_per_day: Option<i64>,
}

/// Limits with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    pub max_queued_images: i64,
    pub max_batches_per_minute: i64,
    pub max_bytes_per_day: i64,
}

impl OwnerLimits {
    /// These limits, with the server's defaults where none is set.
    pub fn resolve(&self, settings: &crate::Settings) -> Limits {
        Limits {
            max_queued_images: self
                .max_queued_images
                .map_or(settings.owner_max_queued_images as i64, i64::from),
            max_batches_per_minute: self
                .max_batches_per_minute
                .map_or(settings.owner_max_batches_per_minute as i64, i64::from),
            max_bytes_per_day: self
                .max_bytes_per_day
                .unwrap_or(settings.owner_max_bytes_per_day as i64),
        }
    }
}

/// An owner as requests see it.
#[derive(Debug, Clone)]
pub struct Owner {
    pub id: OwnerId,
    pub kind: OwnerKind,
    /// For a key: its visible prefix (`wm_1a2b3c4d`); for an address: the address.
    pub name: String,
    pub label: String,
    pub scopes: Vec<Scope>,
    pub weight: f32,
    pub limits: OwnerLimits,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    /// An API key.
    Key,
    /// An anonymous client address (the browser form without a key).
    Address,
}

impl Owner {
    /// Whether this owner may do what `scope` allows (`admin` allows everything; an anonymous
    /// owner may submit and read what it owns).
    pub fn can(&self, scope: Scope) -> bool {
        match self.kind {
            OwnerKind::Address => scope != Scope::Admin,
            OwnerKind::Key => self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.kind == OwnerKind::Key && self.scopes.contains(&Scope::Admin)
    }
}

const OWNER_COLUMNS: &str = "id, kind, coalesce(prefix, address) AS name, label, scopes, weight,
    max_queued_images, max_batches_per_minute, max_bytes_per_day, created_at, last_used_at,
    revoked_at";

impl<'r> FromRow<'r, sqlx::postgres::PgRow> for Owner {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let kind: String = row.try_get("kind")?;
        let scopes: Vec<String> = row.try_get("scopes")?;
        Ok(Self {
            id: row.try_get("id")?,
            kind: match kind.as_str() {
                "key" => OwnerKind::Key,
                "address" => OwnerKind::Address,
                other => {
                    return Err(sqlx::Error::Decode(
                        format!("unknown owner kind {other:?}").into(),
                    ))
                }
            },
            name: row.try_get("name")?,
            label: row.try_get("label")?,
            scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            weight: row.try_get("weight")?,
            limits: OwnerLimits {
                max_queued_images: row.try_get("max_queued_images")?,
                max_batches_per_minute: row.try_get("max_batches_per_minute")?,
                max_bytes_per_day: row.try_get("max_bytes_per_day")?,
            },
            created_at: row.try_get("created_at")?,
            last_used_at: row.try_get("last_used_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// What an owner has used, as its limits count it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Images queued or being processed now, in its batches still being received or processed.
    pub queued_images: i64,
    /// Batches it created in the last minute.
    pub batches_last_minute: i64,
    /// Bytes of files it sent in the last 24 hours (counted with the batch they came in, by the
    /// time the batch was created).
    pub bytes_last_day: i64,
    /// When the oldest batch counted in the minute, and in the day, was created: the limits
    /// free up as these leave their windows.
    #[serde(skip)]
    pub oldest_in_minute: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub oldest_in_day: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub now: Option<DateTime<Utc>>,
}

/// Reads what `owner` has used. In a transaction that holds the owner's lock ([`lock`]), the
/// figures stay true until it commits.
pub async fn usage<'e, E>(executor: E, owner: OwnerId) -> Result<Usage, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let row = sqlx::query(
        "SELECT
           (SELECT coalesce(sum(total - done_count - failed_count), 0)::int8 FROM batches
             WHERE owner_id = $1
               AND status IN ('uploading', 'open', 'queued', 'processing')) AS queued_images,
           (SELECT count(*) FROM batches
             WHERE owner_id = $1 AND created_at > now() - interval '1 minute') AS in_minute,
           (SELECT min(created_at) FROM batches
             WHERE owner_id = $1 AND created_at > now() - interval '1 minute') AS oldest_in_minute,
           (SELECT coalesce(sum(bytes_in), 0)::int8 FROM batches
             WHERE owner_id = $1 AND created_at > now() - interval '1 day') AS bytes_in_day,
           (SELECT min(created_at) FROM batches
             WHERE owner_id = $1 AND created_at > now() - interval '1 day'
               AND bytes_in > 0) AS oldest_in_day,
           now() AS now",
    )
    .bind(owner)
    .fetch_one(executor)
    .await?;
    Ok(Usage {
        queued_images: row.try_get("queued_images")?,
        batches_last_minute: row.try_get("in_minute")?,
        bytes_last_day: row.try_get("bytes_in_day")?,
        oldest_in_minute: row.try_get("oldest_in_minute")?,
        oldest_in_day: row.try_get("oldest_in_day")?,
        now: Some(row.try_get("now")?),
    })
}

/// Takes `owner`'s lock until the end of `tx`: checks of its limits and the changes they allow
/// (a batch made, files recorded) then happen one owner's request at a time, so that a limit
/// holds exactly even when requests race.
pub async fn lock(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    owner: OwnerId,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM owners WHERE id = $1 FOR UPDATE")
        .bind(owner)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An owner's limits as they are enforced: checked under the owner's [`lock`], in the
/// transaction that makes the batch or records its files, so that requests racing each other
/// cannot together go beyond them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub owner: OwnerId,
    pub limits: Limits,
}

impl Quota {
    /// The quota of `owner`, with the server's defaults where it has no limit of its own.
    pub fn of(owner: &Owner, settings: &crate::Settings) -> Self {
        Self {
            owner: owner.id,
            limits: owner.limits.resolve(settings),
        }
    }

    /// Takes the owner's lock in `tx` and checks that it may make one more batch.
    pub async fn new_batch(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<Result<(), LimitHit>, sqlx::Error> {
        lock(tx, self.owner).await?;
        let used = usage(&mut **tx, self.owner).await?;
        Ok(self.limits.check_new_batch(&used))
    }

    /// Takes the owner's lock in `tx` and checks that it may have `images` more images to
    /// process and send `bytes` more bytes of files.
    pub async fn adding(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        images: i64,
        bytes: i64,
    ) -> Result<Result<(), LimitHit>, sqlx::Error> {
        lock(tx, self.owner).await?;
        let used = usage(&mut **tx, self.owner).await?;
        Ok(self.limits.check_adding(&used, images, bytes))
    }
}

/// A limit an owner reached, with what to tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitHit {
    QueuedImages { limit: i64 },
    BatchesPerMinute { limit: i64, retry_after: u32 },
    BytesPerDay { limit: i64, retry_after: u32 },
}

/// How long to suggest waiting when too many images are queued: some of them will have been
/// processed by then.
pub const QUEUED_RETRY_AFTER: u32 = 30;

impl LimitHit {
    /// Seconds after which the request may succeed (`Retry-After`).
    pub fn retry_after(&self) -> u32 {
        match self {
            Self::QueuedImages { .. } => QUEUED_RETRY_AFTER,
            Self::BatchesPerMinute { retry_after, .. } | Self::BytesPerDay { retry_after, .. } => {
                (*retry_after).max(1)
            }
        }
    }

    /// What the owner is told.
    pub fn message(&self) -> String {
        match self {
            Self::QueuedImages { limit } => format!(
                "you have as many images queued or being processed as you may ({limit}); \
                 wait for some of them to finish, or cancel a batch"
            ),
            Self::BatchesPerMinute { limit, retry_after } => {
                format!("you may create {limit} batches a minute; try again in {retry_after} s")
            }
            Self::BytesPerDay { limit, retry_after } => format!(
                "you may send {} of files a day; this would go beyond it (try again in {} s, \
                 when the oldest upload counted leaves the last 24 hours)",
                crate::config::human_bytes(*limit as u64),
                retry_after
            ),
        }
    }
}

/// Seconds from `now` until `since` + `window` (at least 1).
fn seconds_until(now: Option<DateTime<Utc>>, since: Option<DateTime<Utc>>, window: i64) -> u32 {
    match (now, since) {
        (Some(now), Some(since)) => {
            let ms = (since + chrono::Duration::seconds(window) - now).num_milliseconds();
            ((ms.max(0) + 999) / 1000).clamp(1, u32::MAX as i64) as u32
        }
        _ => 1,
    }
}

impl Limits {
    /// One more batch.
    pub fn check_new_batch(&self, usage: &Usage) -> Result<(), LimitHit> {
        if usage.batches_last_minute + 1 > self.max_batches_per_minute {
            return Err(LimitHit::BatchesPerMinute {
                limit: self.max_batches_per_minute,
                retry_after: seconds_until(usage.now, usage.oldest_in_minute, 60),
            });
        }
        Ok(())
    }

    /// `images` more images to process and `bytes` more bytes of files (each checked only when
    /// something is added, so that a lowered limit does not refuse what adds nothing).
    pub fn check_adding(&self, usage: &Usage, images: i64, bytes: i64) -> Result<(), LimitHit> {
        if images > 0 {
            self.check_images(usage, images)?;
        }
        if bytes > 0 {
            self.check_bytes(usage, bytes)?;
        }
        Ok(())
    }

    /// `adding` more images to process.
    pub fn check_images(&self, usage: &Usage, adding: i64) -> Result<(), LimitHit> {
        if usage.queued_images + adding > self.max_queued_images {
            return Err(LimitHit::QueuedImages {
                limit: self.max_queued_images,
            });
        }
        Ok(())
    }

    /// `adding` more bytes of files.
    pub fn check_bytes(&self, usage: &Usage, adding: i64) -> Result<(), LimitHit> {
        if usage.bytes_last_day + adding > self.max_bytes_per_day {
            return Err(LimitHit::BytesPerDay {
                limit: self.max_bytes_per_day,
                retry_after: seconds_until(usage.now, usage.oldest_in_day, 86_400),
            });
        }
        Ok(())
    }
}

/// What every key starts with.
pub const KEY_PREFIX: &str = "wm_";

/// A key as presented: `wm_<8 hex>_<64 hex>`. The first two parts are its visible prefix.
fn split_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 8) && hex(secret, 64)).then(|| &key[..KEY_PREFIX.len() + 8])
}

fn key_hash(key: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"watermark-api-key\0");
    h.update(key.as_bytes());
    h.finalize().to_vec()
}

/// `bytes` random bytes from the operating system, in hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system gives random bytes");
    hex::encode(buf)
}

/// The lookup of the key presented with a request.
#[derive(Debug)]
pub enum KeyLookup {
    Valid(Owner),
    /// Not a key of this server, or not a key at all.
    Unknown,
    /// A key that was revoked.
    Revoked,
}

/// Finds the owner of `key` (the whole key as presented), and notes its use (at most once a
/// minute per key, so that lookups stay reads). Revocation takes effect at the next request.
pub async fn by_key(db: &Db, key: &str) -> Result<KeyLookup, sqlx::Error> {
    let Some(prefix) = split_key(key) else {
        return Ok(KeyLookup::Unknown);
    };
    let hash = key_hash(key);
    let owner: Option<Owner> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH touched AS (
             UPDATE owners SET last_used_at = now()
             WHERE prefix = $1 AND key_hash = $2 AND revoked_at IS NULL
               AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
         )
         SELECT {OWNER_COLUMNS} FROM owners WHERE prefix = $1 AND key_hash = $2"
    )))
    .bind(prefix)
    .bind(&hash)
    .fetch_optional(db)
    .await?;
    Ok(match owner {
        None => KeyLookup::Unknown,
        Some(o) if o.revoked_at.is_some() => KeyLookup::Revoked,
        Some(o) => KeyLookup::Valid(o),
    })
}

/// The anonymous owner of a client address (made on first use). `address` is already reduced
/// to what identifies a client ([`client_key`]).
pub async fn by_address(db: &Db, address: &str) -> Result<Owner, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO owners (id, kind, address, last_used_at) VALUES ($1, 'address', $2, now())
         ON CONFLICT (address) DO UPDATE SET last_used_at = now()
         RETURNING {OWNER_COLUMNS}"
    )))
    .bind(OwnerId::new())
    .bind(address)
    .fetch_one(db)
    .await
}

/// What identifies a client by its address: an IPv4 address as it is, an IPv6 address by its
/// /64 (one subscriber's network), an IPv4 address inside IPv6 as the IPv4 address.
pub fn client_key(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

/// An address or a network (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`): a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a network like 10.0.0.0/8"))?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {most}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A list of [`Network`]s (`TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<Network>);

/// Parses `10.0.0.0/8, 127.0.0.1` (commas or spaces; empty is none).
pub fn parse_networks(s: &str) -> Result<Networks, String> {
    s.split([',', ' '])
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map(Networks)
}

/// The client of a request: the connection's address, or, when the connection comes from a
/// trusted proxy, the nearest address in `X-Forwarded-For` that is not one (read from the
/// right, since a client can write anything on the left).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Network]) -> IpAddr {
    let trusted_addr = |a: IpAddr| trusted.iter().any(|n| n.contains(a));
    if !trusted_addr(peer) {
        return peer;
    }
    let mut client = peer;
    if let Some(header) = forwarded_for {
        for hop in header.rsplit(',') {
            let Ok(addr) = hop.trim().parse::<IpAddr>() else {
                break; // garbage: stop at the last address we could read
            };
            client = addr;
            if !trusted_addr(addr) {
                break;
            }
        }
    }
    client
}

/// A key to be made.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub label: String,
    pub scopes: Vec<Scope>,
    pub weight: f32,
    pub limits: OwnerLimits,
}

/// Makes a key: the owner row, and the key itself, which is shown once and never stored.
pub async fn create_key(db: &Db, new: &NewKey) -> Result<(Owner, SecretString), sqlx::Error> {
    let key = format!("{KEY_PREFIX}{}_{}", random_hex(4), random_hex(32));
    let prefix = split_key(&key).expect("a key we made splits").to_owned();
    let scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
    let owner: Owner = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO owners (id, kind, prefix, key_hash, label, scopes, weight, max_queued_images,
                             max_batches_per_minute, max_bytes_per_day)
         VALUES ($1, 'key', $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {OWNER_COLUMNS}"
    )))
    .bind(OwnerId::new())
    .bind(&prefix)
    .bind(key_hash(&key))
    .bind(&new.label)
    .bind(&scopes)
    .bind(new.weight)
    .bind(new.limits.max_queued_images)
    .bind(new.limits.max_batches_per_minute)
    .bind(new.limits.max_bytes_per_day)
    .fetch_one(db)
    .await?;
    Ok((owner, SecretString::from(key)))
}

/// Every key, newest first (revoked ones too).
pub async fn list_keys(db: &Db) -> Result<Vec<Owner>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OWNER_COLUMNS} FROM owners WHERE kind = 'key' ORDER BY created_at DESC"
    )))
    .fetch_all(db)
    .await
}

/// Revokes the key whose prefix is `prefix`: true when it was live.
pub async fn revoke_key(db: &Db, prefix: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE owners SET revoked_at = now()
         WHERE kind = 'key' AND prefix = $1 AND revoked_at IS NULL",
    )
    .bind(prefix.trim())
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Whether `presented` is shaped like one of our keys (for telling a malformed credential from
/// an unknown one). Never logs or returns the key.
pub fn looks_like_key(presented: &str) -> bool {
    split_key(presented).is_some()
}

/// The key as text, for the one place it is shown (its creation).
pub fn reveal(key: &SecretString) -> &str {
    key.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_visible_prefix_and_a_random_rest() {
        let a = format!("{KEY_PREFIX}{}_{}", random_hex(4), random_hex(32));
        let b = format!("{KEY_PREFIX}{}_{}", random_hex(4), random_hex(32));
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 8 + 1 + 64, "{a}");
        assert_eq!(split_key(&a), Some(&a[..11]));
        assert!(looks_like_key(&a));
        for bad in [
            "",
            "wm_",
            "wm_1234567_x",
            "xx_12345678_",
            &a[..a.len() - 1],
            &a.to_uppercase(),
        ] {
            assert!(split_key(bad).is_none() || bad == a.to_uppercase(), "{bad}");
        }
        assert_ne!(key_hash(&a), key_hash(&b));
    }

    #[test]
    fn random_hex_is_all_random_digits() {
        let keys: Vec<String> = (0..64).map(|_| random_hex(32)).collect();
        for position in 0..64 {
            let first = keys[0].as_bytes()[position];
            assert!(
                keys.iter().any(|k| k.as_bytes()[position] != first),
                "digit {position} is the same in 64 keys"
            );
        }
    }

    #[test]
    fn clients_are_their_address_or_their_ipv6_network() {
        assert_eq!(client_key("203.0.113.7".parse().unwrap()), "203.0.113.7");
        assert_eq!(
            client_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            client_key("2001:db8:1:2:bbbb::9".parse().unwrap()),
            client_key("2001:db8:1:2:aaaa::1".parse().unwrap())
        );
        assert_eq!(client_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = parse_networks("10.0.0.0/8, ::1").unwrap().0;
        assert_eq!(parse_networks("").unwrap(), Networks::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not from a proxy: the header is the client's own words.
        assert_eq!(
            client_address(ip("198.51.100.1"), Some("1.2.3.4"), &trusted),
            ip("198.51.100.1")
        );
        // From a proxy: the nearest untrusted hop, whatever the client put on the left.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                Some("6.6.6.6, 203.0.113.9, 10.1.1.1"),
                &trusted
            ),
            ip("203.0.113.9")
        );
        assert_eq!(client_address(ip("::1"), None, &trusted), ip("::1"));
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("junk"), &trusted),
            ip("10.0.0.2")
        );
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nope".parse::<Network>().is_err());
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && all.contains(ip("::ffff:1.2.3.4")));
        assert!(!all.contains(ip("2001:db8::1")));
    }

    #[test]
    fn limits_hold_at_exactly_their_value() {
        let limits = Limits {
            max_queued_images: 10,
            max_batches_per_minute: 2,
            max_bytes_per_day: 1000,
        };
        let now = Utc::now();
        let usage = Usage {
            queued_images: 4,
            batches_last_minute: 1,
            bytes_last_day: 900,
            oldest_in_minute: Some(now - chrono::Duration::seconds(45)),
            oldest_in_day: Some(now - chrono::Duration::hours(23)),
            now: Some(now),
        };
        assert_eq!(limits.check_images(&usage, 6), Ok(()));
        assert_eq!(
            limits.check_images(&usage, 7),
            Err(LimitHit::QueuedImages { limit: 10 })
        );
        assert_eq!(limits.check_new_batch(&usage), Ok(()));
        let full = Usage {
            batches_last_minute: 2,
            ..usage.clone()
        };
        let hit = limits.check_new_batch(&full).expect_err("the third batch");
        assert_eq!(hit.retry_after(), 15, "{hit:?}");
        assert_eq!(limits.check_bytes(&usage, 100), Ok(()));
        let hit = limits.check_bytes(&usage, 101).expect_err("one byte over");
        assert_eq!(hit.retry_after(), 3600, "{hit:?}");
        assert!(hit.message().contains("a day"), "{}", hit.message());
    }

    #[test]
    fn scopes_parse_and_admin_allows_all() {
        assert_eq!(
            parse_scopes("submit, read").unwrap(),
            vec![Scope::Submit, Scope::Read]
        );
        assert!(parse_scopes("").is_err());
        assert!(parse_scopes("submit,write").is_err());
        let owner = |kind, scopes: Vec<Scope>| Owner {
            id: OwnerId::new(),
            kind,
            name: String::new(),
            label: String::new(),
            scopes,
            weight: 1.0,
            limits: OwnerLimits::default(),
            created_at: Utc::now(),
            last_used_at: None,
            revoked_at: None,
        };
        let reader = owner(OwnerKind::Key, vec![Scope::Read]);
        assert!(reader.can(Scope::Read) && !reader.can(Scope::Submit));
        let admin = owner(OwnerKind::Key, vec![Scope::Admin]);
        assert!(Scope::ALL.iter().all(|s| admin.can(*s)) && admin.is_admin());
        let anonymous = owner(OwnerKind::Address, vec![]);
        assert!(anonymous.can(Scope::Submit) && !anonymous.can(Scope::Admin));
    }
}
