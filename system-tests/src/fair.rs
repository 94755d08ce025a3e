//! Helpers for the fair-dispatch test and benchmark: API keys of owners with a weight, batches
//! submitted as one owner, and the share of the work each owner got.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::System;

/// A key of a new owner with `weight` and submit and read scopes; the key itself.
pub async fn make_key(sys: &System, label: &str, weight: f32) -> anyhow::Result<String> {
    let (_, key) = jobs::owners::create_key(
        &sys.db,
        &jobs::owners::NewKey {
            label: label.into(),
            scopes: vec![jobs::owners::Scope::Submit, jobs::owners::Scope::Read],
            weight,
            limits: jobs::owners::OwnerLimits::default(),
        },
    )
    .await
    .context("create a key")?;
    Ok(jobs::owners::reveal(&key).to_owned())
}

/// `POST /api/batches` as the owner of `key`; the batch's id (202 expected).
pub async fn submit_as(
    sys: &System,
    key: &str,
    files: &[(&str, Vec<u8>)],
    pipeline: Option<&Value>,
) -> anyhow::Result<String> {
    let mut form = reqwest::multipart::Form::new();
    if let Some(p) = pipeline {
        form = form.text("pipeline", p.to_string());
    }
    for (name, bytes) in files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
        );
    }
    let res = sys
        .http
        .post(sys.url("/api/batches"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await?;
    let status = res.status().as_u16();
    let body: Value = res.json().await?;
    if status != 202 {
        bail!("submission answered {status}: {body}");
    }
    Ok(body["id"].as_str().context("an id")?.to_owned())
}

/// Polls the batch's summary as the owner of `key` until it is final; the last answer.
pub async fn wait_final_as(
    sys: &System,
    key: &str,
    id: &str,
    limit: Duration,
    every: Duration,
) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let res = sys
            .http
            .get(sys.url(&format!("/api/batches/{id}?images=false")))
            .bearer_auth(key)
            .send()
            .await?;
        let code = res.status().as_u16();
        let body: Value = res.json().await?;
        if code == 200 && matches!(body["status"].as_str(), Some("done" | "failed" | "expired")) {
            return Ok(body);
        }
        if started.elapsed() > limit {
            bail!("batch {id} not final after {limit:?}: {code} {body}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Images of the owner labelled `label` still pending (waiting or running).
pub async fn pending_of(sys: &System, label: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM images i JOIN batches b ON b.id = i.batch_id
         JOIN owners o ON o.id = b.owner_id
         WHERE o.label = $1 AND i.status = 'pending'",
    )
    .bind(label)
    .fetch_one(&sys.db)
    .await?)
}

/// Image jobs in Redis as Postgres sees them (pending images whose job was pushed).
pub async fn dispatched(sys: &System) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM images WHERE status = 'pending' AND enqueued_at IS NOT NULL",
    )
    .fetch_one(&sys.db)
    .await?)
}

/// The labels of the owners of the images finished `skip + 1`-th to `skip + n`-th, in order.
pub async fn finish_order(sys: &System, skip: i64, n: i64) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT o.label FROM images i JOIN batches b ON b.id = i.batch_id
         JOIN owners o ON o.id = b.owner_id
         WHERE i.finished_at IS NOT NULL
         ORDER BY i.finished_at, i.id OFFSET $1 LIMIT $2",
    )
    .bind(skip)
    .bind(n)
    .fetch_all(&sys.db)
    .await?)
}
