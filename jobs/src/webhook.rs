//! Webhooks: when a batch that was given a `callback_url` ends (`done` or `failed`), its status
//! JSON (the [`BatchView`](crate::view::BatchView) of `GET /api/batches/{id}`) is POSTed there,
//! signed with `WEBHOOK_SECRET`.
//!
//! What is owed lives in Postgres (`webhook_deliveries`, one row per batch, inserted by a trigger
//! when the batch ends), so a delivery survives a restart of every process. A worker claims due
//! deliveries with a lease ([`claim`]: `next_attempt_at` moves past the longest an attempt can
//! take, and `attempts` counts the claim), sends each once ([`send`]), and records the outcome
//! ([`record`]) only if its claim still stands; a worker that dies mid-delivery delays it by
//! the lease. Failures are retried with exponential backoff up to `WEBHOOK_MAX_ATTEMPTS`.
//!
//! The signature: `X-Watermark-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>` (see [`signature`] and docs/operations.md for a receiver's check).
//!
//! The SSRF guard: only absolute http(s) URLs without credentials; unless
//! `WEBHOOK_ALLOW_PRIVATE`, no literal non-public address nor `localhost` at submission
//! ([`check_callback_url`]), and at delivery the name is resolved here, every address checked
//! ([`forbidden`]), and the connection made to those very addresses (no second lookup a DNS
//! rebinding could answer differently). Redirects are not followed and no proxy is used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use url::{Host, Url};

use crate::db::Db;
use crate::{BatchId, BatchStatus};

/// Longest `callback_url` accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Longest wait between two attempts, whatever the backoff says.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Most deliveries one worker sends at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// How webhooks are sent (from `WEBHOOK_*`; see [`crate::Settings::webhooks`]).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub secret: SecretString,
    pub allow_private: bool,
    pub max_attempts: u32,
    /// The wait before the first retry; doubled for each further one, [`MAX_BACKOFF`] at most.
    pub backoff: Duration,
    /// The longest one attempt may take, from resolving the name to the answer's headers.
    pub timeout: Duration,
}

impl WebhookSettings {
    /// The wait after failed attempt number `attempt` (1 for the first).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// How long a claimed delivery belongs to its worker: well past the longest an attempt can
    /// take, so that a live worker always records its outcome first, and a dead one's delivery
    /// is taken again after it.
    pub fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(20)
    }
}

/// Checks a `callback_url` given at submission: an absolute `http` or `https` URL of at most
/// [`MAX_URL_LEN`] characters, without credentials, and (unless `allow_private`) not naming a
/// non-public address or `localhost`. Returns the URL as it will be stored and called, or why
/// it is refused, in words meant for the submitter.
pub fn check_callback_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!(
            "callback_url is longer than {MAX_URL_LEN} characters"
        ));
    }
    let url = Url::parse(raw.trim()).map_err(|e| {
        format!(
            "callback_url is not an absolute URL ({e}); give one such as https://example.com/hook"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "callback_url must be an http or https URL, not {}:",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "callback_url must not carry a user name or password; deliveries are signed \
             (X-Watermark-Signature) for the receiver to check instead"
                .into(),
        );
    }
    if url.as_str().len() > MAX_URL_LEN {
        return Err(format!(
            "callback_url is longer than {MAX_URL_LEN} characters"
        ));
    }
    if !allow_private {
        if let Some(reason) = refused_host(&url) {
            return Err(format!(
                "callback_url must reach a public address: {reason}; this server does not send \
                 webhooks to its own network"
            ));
        }
    }
    Ok(url)
}

/// Why the URL's host, as written, is not a public one: a literal address [`forbidden`] says
/// no to, or a `localhost` name.
fn refused_host(url: &Url) -> Option<String> {
    match url.host()? {
        Host::Ipv4(ip) => forbidden(IpAddr::V4(ip)).map(|why| format!("{ip} is {why}")),
        Host::Ipv6(ip) => forbidden(IpAddr::V6(ip)).map(|why| format!("{ip} is {why}")),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost"))
                .then(|| format!("{name} is this machine (loopback)"))
        }
    }
}

/// Why `ip` is not a public unicast address a webhook may reach (`Some("a loopback address")`),
/// or `None` when it is one. IPv4 addresses inside IPv6 ones (mapped, NAT64, 6to4) are judged
/// as the IPv4 address they carry.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified address (0.0.0.0/8)",
        (127, _, _) => "a loopback address",
        (10, _, _) => "a private address (10.0.0.0/8)",
        (172, 16..=31, _) => "a private address (172.16.0.0/12)",
        (192, 168, _) => "a private address (192.168.0.0/16)",
        (169, 254, _) => "a link-local address",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (192, 0, 0) => "an IETF protocol address (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        // ::ffff:a.b.c.d reaches a.b.c.d.
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    match s[0] {
        // 64:ff9b::/96, NAT64: the IPv4 address in the last 32 bits.
        0x0064 if s[1] == 0xff9b && s[2..6] == [0; 4] => forbidden_v4(embedded(s[6], s[7])),
        // 2002::/16, 6to4: the IPv4 address in bits 16..48.
        0x2002 => forbidden_v4(embedded(s[1], s[2])),
        // 2001::/23: IETF protocol assignments (Teredo, benchmarking, ORCHID...).
        0x2001 if s[1] < 0x0200 => Some("an IETF protocol address (2001::/23)"),
        0x2001 if s[1] == 0x0db8 => Some("a documentation address"),
        0xfc00..=0xfdff => Some("a unique local (private) address"),
        0xfe80..=0xfebf => Some("a link-local address"),
        0xfec0..=0xfeff => Some("a site-local address"),
        0xff00..=0xffff => Some("a multicast address"),
        // Global unicast is 2000::/3; the rest (::/8 with the IPv4-compatible forms,
        // 100::/64 discard, ...) is reserved.
        0x2000..=0x3fff => None,
        _ => Some("a reserved address"),
    }
}

/// The `X-Watermark-Signature` value for `body` sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("t={timestamp},v1={hex}")
}

/// A delivery claimed by this worker: its attempt number `attempt` (1 for the first) is this
/// worker's to make until the lease runs out.
#[derive(Debug, Clone)]
pub struct Claim {
    pub batch: BatchId,
    pub url: String,
    pub attempt: u32,
}

impl Claim {
    /// The host the delivery goes to, for logs: never the whole URL, whose path or query may
    /// hold the receiver's token.
    pub fn host(&self) -> String {
        Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Claims up to `limit` deliveries that are due, for [`WebhookSettings::lease`]; each claim
/// counts as an attempt. Rows locked by another worker's claim are skipped, and a claimed row
/// is not due again until its lease ends, so each attempt has one sender.
pub async fn claim(
    db: &Db,
    settings: &WebhookSettings,
    limit: usize,
) -> Result<Vec<Claim>, sqlx::Error> {
    let rows: Vec<(BatchId, String, i32)> = sqlx::query_as(
        "UPDATE webhook_deliveries
         SET attempts = attempts + 1,
             next_attempt_at = now() + make_interval(secs => $1)
         WHERE batch_id IN (
             SELECT batch_id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= now() AND attempts < $2
             ORDER BY next_attempt_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING batch_id, url, attempts",
    )
    .bind(settings.lease().as_secs_f64())
    .bind(settings.max_attempts as i32)
    .bind(limit as i64)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(batch, url, attempts)| Claim {
            batch,
            url,
            attempt: attempts.max(1) as u32,
        })
        .collect())
}

/// Gives up the deliveries whose last allowed attempt was claimed and never recorded (its
/// worker died during it), once that lease has run out. Returns how many.
pub async fn give_up_abandoned(db: &Db, settings: &WebhookSettings) -> Result<u64, sqlx::Error> {
    let given_up: i64 = sqlx::query_scalar(
        "WITH gone AS (
             UPDATE webhook_deliveries
             SET status = 'failed',
                 last_error = 'the last attempt never finished (its worker stopped during it)'
             WHERE status = 'pending' AND attempts >= $1 AND next_attempt_at <= now()
             RETURNING batch_id, attempts, last_error),
         logged AS (
             INSERT INTO batch_events (batch_id, kind, attempt, detail)
             SELECT batch_id, 'webhook.failed', attempts, last_error || '; given up' FROM gone
             RETURNING 1)
         SELECT count(*) FROM logged",
    )
    .bind(settings.max_attempts as i32)
    .fetch_one(db)
    .await?;
    Ok(given_up as u64)
}

/// How one attempt at a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// The receiver answered something else (a redirect included: they are not followed).
    /// Retried.
    Rejected { status: u16 },
    /// No answer: the name did not resolve, the connection failed, or the time ran out.
    /// Retried.
    Unreachable { error: String },
    /// The target is not allowed (the SSRF guard) or not usable: never retried.
    Refused { reason: String },
}

impl Outcome {
    /// A short label, for logs and counters: `delivered`, `rejected`, `unreachable`, `refused`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Rejected { .. } => "rejected",
            Self::Unreachable { .. } => "unreachable",
            Self::Refused { .. } => "refused",
        }
    }

    /// What the event log says of this attempt.
    pub fn detail(&self) -> String {
        match self {
            Self::Delivered { status } | Self::Rejected { status } => {
                let reason = reqwest::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                match reason {
                    Some(r) => format!("HTTP {status} {r}"),
                    None => format!("HTTP {status}"),
                }
            }
            Self::Unreachable { error } => error.clone(),
            Self::Refused { reason } => format!("refused: {reason}"),
        }
    }
}

/// What became of a delivery once an attempt's outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    /// Failed; the next attempt is due after this wait.
    WillRetry(Duration),
    /// Failed for good: out of attempts, or refused.
    GaveUp,
    /// The claim no longer stood (its lease ran out and another worker took the delivery, or the
    /// batch is gone): nothing was recorded.
    Stale,
}

/// Records the outcome of `claim`'s attempt, with its event (`webhook.delivered` or
/// `webhook.failed`, by `worker`), if the claim still stands.
pub async fn record(
    db: &Db,
    settings: &WebhookSettings,
    claim: &Claim,
    outcome: &Outcome,
    worker: &str,
) -> Result<Recorded, sqlx::Error> {
    let (status, kind, wait, detail, result) = match outcome {
        Outcome::Delivered { .. } => (
            "delivered",
            "webhook.delivered",
            Duration::ZERO,
            outcome.detail(),
            Recorded::Delivered,
        ),
        Outcome::Refused { .. } => (
            "failed",
            "webhook.failed",
            Duration::ZERO,
            format!("{}; not retried", outcome.detail()),
            Recorded::GaveUp,
        ),
        Outcome::Rejected { .. } | Outcome::Unreachable { .. }
            if claim.attempt >= settings.max_attempts =>
        {
            (
                "failed",
                "webhook.failed",
                Duration::ZERO,
                format!(
                    "{}; given up after {} attempts",
                    outcome.detail(),
                    claim.attempt
                ),
                Recorded::GaveUp,
            )
        }
        Outcome::Rejected { .. } | Outcome::Unreachable { .. } => {
            let wait = settings.backoff_after(claim.attempt);
            (
                "pending",
                "webhook.failed",
                wait,
                format!(
                    "{}; retrying in {}",
                    outcome.detail(),
                    crate::config::human_duration(wait.as_secs().max(1))
                ),
                Recorded::WillRetry(wait),
            )
        }
    };
    let error = match outcome {
        Outcome::Delivered { .. } => None,
        other => Some(other.detail()),
    };
    let recorded: Option<i64> = sqlx::query_scalar(
        "WITH done AS (
             UPDATE webhook_deliveries
             SET status = $3,
                 last_error = $4,
                 next_attempt_at = now() + make_interval(secs => $5),
                 delivered_at = CASE WHEN $3 = 'delivered' THEN now() END
             WHERE batch_id = $1 AND attempts = $2 AND status = 'pending'
             RETURNING batch_id)
         INSERT INTO batch_events (batch_id, kind, worker, attempt, detail)
         SELECT batch_id, $6, $7, $2, $8 FROM done
         RETURNING id",
    )
    .bind(claim.batch)
    .bind(claim.attempt as i32)
    .bind(status)
    .bind(error)
    .bind(wait.as_secs_f64())
    .bind(kind)
    .bind(worker)
    .bind(detail)
    .fetch_optional(db)
    .await?;
    Ok(if recorded.is_some() {
        result
    } else {
        Recorded::Stale
    })
}

/// The `X-Watermark-Event` of a batch in `status`.
pub fn event_name(status: BatchStatus) -> &'static str {
    match status {
        BatchStatus::Done => "batch.done",
        BatchStatus::Failed => "batch.failed",
        BatchStatus::Cancelled => "batch.cancelled",
        // The batch expired before its webhook could be delivered (the receiver was down for
        // longer than RESULT_TTL_SECONDS).
        BatchStatus::Expired => "batch.expired",
        _ => "batch.updated",
    }
}

/// What one attempt sends: the batch's status JSON and what the headers say of it.
#[derive(Debug, Clone)]
pub struct Message {
    pub delivery: BatchId,
    pub event: &'static str,
    pub attempt: u32,
    pub body: Vec<u8>,
}

impl Message {
    /// The message for `claim`: the batch's status JSON as `GET /api/batches/{id}` gives it.
    /// `None` when the batch is gone.
    pub async fn load(db: &Db, claim: &Claim) -> Result<Option<Self>, sqlx::Error> {
        let Some(view) = crate::view::load(db, claim.batch, true).await? else {
            return Ok(None);
        };
        Ok(Some(Self {
            delivery: claim.batch,
            event: event_name(view.status),
            attempt: claim.attempt,
            body: serde_json::to_vec(&view).expect("a batch view serialises"),
        }))
    }
}

/// Makes one attempt at sending `message` to `url`: checks the URL, resolves its host and checks
/// every address (unless `allow_private`), then POSTs the signed message to those addresses,
/// all within `settings.timeout`. Never follows a redirect, never reads the answer's body.
pub async fn send(settings: &WebhookSettings, url: &str, message: &Message) -> Outcome {
    match tokio::time::timeout(settings.timeout, send_unbounded(settings, url, message)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Unreachable {
            error: format!(
                "no answer within {}",
                crate::config::human_duration(settings.timeout.as_secs())
            ),
        },
    }
}

async fn send_unbounded(settings: &WebhookSettings, url: &str, message: &Message) -> Outcome {
    let url = match check_callback_url(url, settings.allow_private) {
        Ok(url) => url,
        Err(reason) => return Outcome::Refused { reason },
    };
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("watermark-webhook/", env!("CARGO_PKG_VERSION")));
    if let Some(Host::Domain(name)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = match resolve_checked(name, port, settings.allow_private).await {
            Ok(addrs) => addrs,
            Err(outcome) => return outcome,
        };
        // The connection goes to these checked addresses and no others: the client asks no
        // other resolver.
        client = client.dns_resolver(Arc::new(Pinned {
            name: name.to_ascii_lowercase(),
            addrs,
        }));
    }
    let client = match client.build() {
        Ok(client) => client,
        Err(e) => {
            return Outcome::Unreachable {
                error: format!("cannot make an HTTP client: {}", describe(&e)),
            }
        }
    };
    let timestamp = chrono::Utc::now().timestamp();
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Watermark-Event", message.event)
        .header("X-Watermark-Delivery", message.delivery.to_string())
        .header("X-Watermark-Attempt", message.attempt.to_string())
        .header(
            "X-Watermark-Signature",
            signature(
                settings.secret.expose_secret().as_bytes(),
                timestamp,
                &message.body,
            ),
        )
        .body(message.body.clone())
        .send()
        .await;
    // The answer's body is not read: dropping the response closes the connection.
    match sent {
        Ok(response) if response.status().is_success() => Outcome::Delivered {
            status: response.status().as_u16(),
        },
        Ok(response) => Outcome::Rejected {
            status: response.status().as_u16(),
        },
        Err(e) => Outcome::Unreachable {
            error: describe(&e),
        },
    }
}

/// The addresses of `name`, every one of them public unless `allow_private`; or the outcome of
/// an attempt that cannot go on (the name does not resolve, or resolves to a forbidden address).
async fn resolve_checked(
    name: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Outcome> {
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            return Err(Outcome::Unreachable {
                error: format!("cannot resolve {name}: {e}"),
            })
        }
    };
    if addrs.is_empty() {
        return Err(Outcome::Unreachable {
            error: format!("{name} has no address"),
        });
    }
    if !allow_private {
        if let Some((ip, why)) = addrs
            .iter()
            .find_map(|a| forbidden(a.ip()).map(|why| (a.ip(), why)))
        {
            return Err(Outcome::Refused {
                reason: format!("{name} resolves to {ip}, {why}"),
            });
        }
    }
    Ok(addrs)
}

/// A reqwest error in words, without its URL (whose query may hold the receiver's token) and
/// with its causes.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".into();
    }
    let mut text = if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut cause = std::error::Error::source(error);
    let mut depth = 0;
    while let Some(e) = cause {
        let part = e.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
        depth += 1;
        if depth >= 8 {
            break;
        }
    }
    text
}

/// A resolver that knows one name, already resolved and checked, and refuses every other.
struct Pinned {
    name: String,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for Pinned {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let found = name
            .as_str()
            .eq_ignore_ascii_case(&self.name)
            .then(|| self.addrs.clone());
        Box::pin(async move {
            match found {
                Some(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                None => Err("this name was not checked by the webhook guard".into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow_private: bool) -> WebhookSettings {
        WebhookSettings {
            secret: SecretString::from("whsec-test-secret-0123456789"),
            allow_private,
            max_attempts: 8,
            backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The HMAC itself: RFC 4231, test case 2.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let raw: Vec<String> = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            raw.concat(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Computed independently:
        //   printf '%s' '1700000000.{"id":"x","status":"done"}' \
        //     | openssl dgst -sha256 -hmac 'whsec-test-secret-0123456789'
        assert_eq!(
            signature(
                b"whsec-test-secret-0123456789",
                1_700_000_000,
                br#"{"id":"x","status":"done"}"#
            ),
            "t=1700000000,v1=0b4e4d9425284d32f931a87abb7e870a0379d53d37d2e3954c96bd06b2aada55"
        );
        // Another body, another time, another secret: another signature.
        let base = signature(b"k", 1, b"a");
        assert_ne!(base, signature(b"k", 1, b"b"));
        assert_ne!(base, signature(b"k", 2, b"a"));
        assert_ne!(base, signature(b"K", 1, b"a"));
    }

    #[test]
    fn non_public_addresses_are_forbidden() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254", // cloud metadata
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",      // IPv4-compatible, deprecated
            "64:ff9b::a00:1",   // NAT64 of 10.0.0.1
            "2002:c0a8:101::1", // 6to4 of 192.168.1.1
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1", // Teredo
            "100::1",
        ];
        for ip in refused {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(forbidden(parsed).is_some(), "{ip} should be refused");
        }
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
        ];
        for ip in allowed {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden(parsed), None, "{ip} should be allowed");
        }
        assert_eq!(
            forbidden("127.0.0.1".parse().unwrap()),
            Some("a loopback address")
        );
        assert_eq!(
            forbidden("::ffff:192.168.0.1".parse().unwrap()),
            Some("a private address (192.168.0.0/16)")
        );
    }

    #[test]
    fn callback_urls_are_checked_at_submission() {
        let ok = |u: &str| check_callback_url(u, false).map(|u| u.to_string());
        assert_eq!(
            ok("https://example.com/hook?x=1").as_deref(),
            Ok("https://example.com/hook?x=1")
        );
        assert_eq!(
            ok("  http://8.8.8.8:8080/h ").as_deref(),
            Ok("http://8.8.8.8:8080/h")
        );
        let refused = |u: &str, allow_private: bool, says: &str| {
            let err = check_callback_url(u, allow_private).expect_err(u);
            assert!(err.contains(says), "{u}: {err}");
        };
        refused("ftp://example.com/x", false, "http or https");
        refused("file:///etc/passwd", true, "http or https");
        refused("javascript:alert(1)", true, "http or https");
        refused("/relative/path", true, "absolute URL");
        refused("example.com/hook", true, "absolute URL");
        refused(
            "https://user:pw@example.com/",
            true,
            "user name or password",
        );
        refused("https://user@example.com/", true, "user name or password");
        refused(
            &format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)),
            true,
            "longer than 2048",
        );
        refused("http://127.0.0.1:9000/", false, "loopback");
        refused("http://[::1]/", false, "loopback");
        refused("http://10.0.0.7/", false, "private");
        refused("http://169.254.169.254/latest", false, "link-local");
        refused("http://100.64.1.1/", false, "carrier-grade");
        refused("http://[fd00::1]/", false, "unique local");
        refused("http://[::ffff:192.168.0.1]/", false, "private");
        refused("http://0.0.0.0/", false, "unspecified");
        refused("http://localhost:8080/", false, "loopback");
        refused("http://api.LOCALHOST./", false, "loopback");
        // The URL parser reads other spellings of an IPv4 address as that address.
        refused("http://2130706433/", false, "loopback");
        refused("http://0x7f.1/", false, "loopback");
        // With WEBHOOK_ALLOW_PRIVATE, those are fine.
        for u in [
            "http://127.0.0.1:9000/",
            "http://localhost/",
            "http://[fd00::1]/",
        ] {
            assert!(check_callback_url(u, true).is_ok(), "{u}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let s = settings(false);
        let waits: Vec<u64> = (1..=10).map(|n| s.backoff_after(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]);
        assert_eq!(s.backoff_after(200), MAX_BACKOFF);
        assert!(s.lease() > s.timeout + Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_refused_target_is_not_contacted_and_says_why() {
        let message = Message {
            delivery: BatchId::new(),
            event: "batch.done",
            attempt: 1,
            body: b"{}".to_vec(),
        };
        // A listener on loopback that must not be reached.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let outcome = send(&settings(false), &url, &message).await;
        assert!(
            matches!(&outcome, Outcome::Refused { reason } if reason.contains("loopback")),
            "{outcome:?}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the guard let a connection through");
        // A name is resolved here and judged by what it resolves to (`localhost` is refused
        // by name at submission; this is the check made again at delivery).
        let refused = resolve_checked("localhost", 80, false)
            .await
            .expect_err("localhost resolves to loopback");
        assert!(
            matches!(&refused, Outcome::Refused { reason } if reason.contains("loopback")),
            "{refused:?}"
        );
        let allowed = resolve_checked("localhost", 8080, true)
            .await
            .expect("allowed with WEBHOOK_ALLOW_PRIVATE");
        assert!(allowed
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
    }

    #[tokio::test]
    async fn the_pinned_resolver_answers_only_its_name() {
        use reqwest::dns::Resolve;
        let pinned = Pinned {
            name: "hooks.example.com".into(),
            addrs: vec!["93.184.215.14:443".parse().unwrap()],
        };
        let found: Vec<SocketAddr> = pinned
            .resolve("Hooks.Example.COM".parse().unwrap())
            .await
            .expect("its own name")
            .collect();
        assert_eq!(found, ["93.184.215.14:443".parse().unwrap()]);
        assert!(pinned
            .resolve("other.example.com".parse().unwrap())
            .await
            .is_err());
    }
}
