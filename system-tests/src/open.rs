//! A client of open batches (`POST /api/batches/open`, `PUT …/files/{file_id}`, `POST …/close`),
//! as the tests and the benchmark use it.

use anyhow::Context;
use serde_json::Value;

use crate::System;

/// `POST /api/batches/open` with `pipeline` (the default when `None`), an optional
/// `Idempotency-Key` and an optional bearer `key`: the answer's status and JSON.
pub async fn open(
    sys: &System,
    pipeline: Option<&Value>,
    idempotency_key: Option<&str>,
    key: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut body = serde_json::Map::new();
    if let Some(p) = pipeline {
        body.insert("pipeline".into(), p.clone());
    }
    let mut req = sys
        .http
        .post(sys.url("/api/batches/open"))
        .json(&Value::Object(body));
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await?;
    Ok((res.status().as_u16(), res.json().await?))
}

/// Opens a batch and expects 201: its id.
pub async fn open_ok(sys: &System, pipeline: Option<&Value>) -> anyhow::Result<String> {
    let (code, body) = open(sys, pipeline, None, None).await?;
    anyhow::ensure!(code == 201, "opening answered {code}: {body}");
    Ok(body["id"].as_str().context("an id")?.to_owned())
}

/// `PUT /api/batches/{id}/files/{file_id}?name=…` with `bytes`: the answer's status and JSON.
pub async fn put(
    sys: &System,
    id: &str,
    file_id: &str,
    name: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    put_with(sys, id, file_id, name, bytes, None).await
}

/// [`put`] with an optional bearer `key`.
pub async fn put_with(
    sys: &System,
    id: &str,
    file_id: &str,
    name: &str,
    bytes: Vec<u8>,
    key: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = sys
        .http
        .put(sys.url(&format!("/api/batches/{id}/files/{file_id}")))
        .query(&[("name", name)])
        .body(bytes);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await?;
    Ok((res.status().as_u16(), res.json().await?))
}

/// `POST /api/batches/{id}/close`: the answer's status and JSON.
pub async fn close(sys: &System, id: &str) -> anyhow::Result<(u16, Value)> {
    let res = sys
        .http
        .post(sys.url(&format!("/api/batches/{id}/close")))
        .send()
        .await?;
    Ok((res.status().as_u16(), res.json().await?))
}
