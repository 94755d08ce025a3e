//! Numbers and words as the pages and messages say them.

/// "Redis and S3 are down" from "redis and S3 are down": the first letter in upper case.
pub fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

pub use jobs::config::human_bytes;
