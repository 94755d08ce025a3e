//! `web keys create|list|revoke`: the operator's API keys. A key is printed once, on stdout, when
//! it is made; Postgres keeps only its visible prefix and a hash, so `list` cannot show it.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use jobs::owners::{self, NewKey, Owner, OwnerLimits, Scope};

/// What `web` does besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage API keys (`web keys create|list|revoke`).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it, once, on stdout (clients send it as `Authorization: Bearer <key>`).
    Create(CreateKey),
    /// Every key: prefix, label, scopes, weight, limits, created, last used, revoked (never the
    /// key itself).
    List,
    /// Revoke the key with this prefix (`wm_1a2b3c4d`); it is refused from the next request on.
    Revoke {
        /// The key's visible prefix, as `web keys list` shows it.
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateKey {
    /// Who or what the key is for (shown in `web keys list` and on the monitor).
    #[arg(long, value_parser = label)]
    pub label: String,

    /// What the key may do: `submit`, `read`, `admin`, comma-separated.
    #[arg(long, default_value = "submit,read", value_parser = scopes)]
    pub scopes: Scopes,

    /// The key's share of the workers against other owners (1 is everyone's default; 0 < W ≤ 1000).
    #[arg(long, default_value_t = 1.0, value_parser = weight)]
    pub weight: f32,

    /// Most images of the key queued or being processed at once (default: OWNER_MAX_QUEUED_IMAGES).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub max_queued_images: Option<i32>,

    /// Most batches the key may create a minute (default: OWNER_MAX_BATCHES_PER_MINUTE).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub max_batches_per_minute: Option<i32>,

    /// Most bytes of files the key may send in 24 hours (default: OWNER_MAX_BYTES_PER_DAY).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_bytes_per_day: Option<i64>,
}

/// Scopes as parsed from `--scopes` (a type of its own, so that clap takes the list whole).
#[derive(Debug, Clone)]
pub struct Scopes(pub Vec<Scope>);

fn scopes(s: &str) -> Result<Scopes, String> {
    owners::parse_scopes(s).map(Scopes)
}

fn label(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the label must not be empty".into());
    }
    if s.chars().count() > 200 || s.chars().any(char::is_control) {
        return Err("the label is at most 200 characters, on one line".into());
    }
    Ok(s.to_owned())
}

fn weight(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(w) if w > 0.0 && w <= 1000.0 => Ok(w),
        _ => Err(format!(
            "{s:?} is not a weight: a number above 0 and at most 1000"
        )),
    }
}

/// Runs a `keys` command against the database of `settings`.
pub async fn run(settings: &jobs::Settings, command: KeysCommand) -> anyhow::Result<()> {
    let db = jobs::db::connect(settings.database_url(), 2)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")?;
    match command {
        KeysCommand::Create(new) => {
            let (owner, key) = owners::create_key(
                &db,
                &NewKey {
                    label: new.label,
                    scopes: new.scopes.0,
                    weight: new.weight,
                    limits: OwnerLimits {
                        max_queued_images: new.max_queued_images,
                        max_batches_per_minute: new.max_batches_per_minute,
                        max_bytes_per_day: new.max_bytes_per_day,
                    },
                },
            )
            .await
            .context("cannot create the key")?;
            println!("{}", owners::reveal(&key));
            eprintln!(
                "Made key {} ({}; scopes {}). It is shown this once: keep it now. Clients send it \
                 as `Authorization: Bearer <key>`; revoke it with `web keys revoke {}`.",
                owner.name,
                owner.label,
                scope_list(&owner),
                owner.name
            );
        }
        KeysCommand::List => {
            let keys = owners::list_keys(&db)
                .await
                .context("cannot list the keys")?;
            print!("{}", table(&keys, settings));
            if keys.is_empty() {
                eprintln!("No keys yet: make one with `web keys create --label <who>`.");
            }
        }
        KeysCommand::Revoke { prefix } => {
            if !owners::revoke_key(&db, &prefix)
                .await
                .context("cannot revoke the key")?
            {
                bail!(
                    "no live key has the prefix {:?} (see `web keys list`; a revoked key stays \
                     revoked)",
                    prefix.trim()
                );
            }
            eprintln!("Revoked {}: it is refused from now on.", prefix.trim());
        }
    }
    db.close().await;
    Ok(())
}

fn scope_list(owner: &Owner) -> String {
    owner
        .scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The keys as a tab-separated table with a header line. A limit the key has not set of its own
/// is the server's default, shown as `default:<value>`.
fn table(keys: &[Owner], settings: &jobs::Settings) -> String {
    let mut out = String::from(
        "prefix\tlabel\tscopes\tweight\tmax_queued_images\tmax_batches_per_minute\t\
         max_bytes_per_day\tcreated\tlast_used\trevoked\n",
    );
    for key in keys {
        let limits = key.limits.resolve(settings);
        let limit = |own: Option<i64>, resolved: i64| match own {
            Some(n) => n.to_string(),
            None => format!("default:{resolved}"),
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            key.name,
            key.label,
            scope_list(key),
            key.weight,
            limit(
                key.limits.max_queued_images.map(i64::from),
                limits.max_queued_images
            ),
            limit(
                key.limits.max_batches_per_minute.map(i64::from),
                limits.max_batches_per_minute
            ),
            limit(key.limits.max_bytes_per_day, limits.max_bytes_per_day),
            when(Some(key.created_at)),
            when(key.last_used_at),
            when(key.revoked_at),
        ));
    }
    out
}
