//! The API described: an OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! annotations and the types they answer (`GET /api/openapi.json`), and a page that reads it
//! (`GET /api/docs`), rendered here, with no script and nothing from elsewhere.

use std::sync::LazyLock;

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::pages::render;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Watermark API",
        description = "Submit images, choose what to do to them, follow the batch and download one zip. Every error under /api (unknown paths and methods included) is JSON `{\"error\": {\"code\", \"message\"}}` (`ErrorBody`); a `503` says when to try again in `Retry-After`."
    ),
    paths(
        crate::api::submit,
        crate::open::create,
        crate::open::put_file,
        crate::open::close,
        crate::api::status,
        crate::open::images,
        crate::api::events,
        crate::api::cancel,
        crate::live::stream,
        crate::preview::preview,
        crate::api::tasks,
        crate::api::usage,
        crate::monitor::stats_api,
        crate::monitor::monitor_api,
        crate::pages::download,
        crate::api::healthz,
        crate::api::readyz,
        crate::api::metrics,
    ),
    components(schemas(crate::api::ErrorBody, crate::api::ErrorDetail)),
    modifiers(&MonitorToken),
    tags(
        (name = "batches", description = "Submit a batch, follow it, download its zip"),
        (name = "preview", description = "The processing drawn on one small image"),
        (name = "tasks", description = "What a pipeline can do"),
        (name = "monitoring", description = "Statistics and the monitor's data (MONITOR_TOKEN)"),
        (name = "health", description = "Liveness, readiness and metrics"),
    )
)]
struct ApiDoc;

/// The bearer token of `/api/stats` and `/api/monitor`, and the API keys.
struct MonitorToken;

impl Modify for MonitorToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "monitor token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("MONITOR_TOKEN, as `Authorization: Bearer <token>`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`wm_…`, made by the operator with `web keys create`), as \
                         `Authorization: Bearer <key>`; the scheme in any case",
                    ))
                    .build(),
            ),
        );
    }
}

/// The fields of `POST /api/batches` (multipart/form-data). Documentation only: the upload is
/// parsed as it streams (`upload.rs`, `choices.rs`). The form-style `<task>.<param>` fields
/// are added from the task registry.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchForm {
    /// The images, one part per file (repeat the field); JPEG, PNG, WebP, GIF, BMP or TIFF,
    /// recognised from their content.
    #[schema(value_type = Vec<String>, content_media_type = "application/octet-stream")]
    files: Vec<Vec<u8>>,
    /// The processing (filled in from the task registry).
    pipeline: Option<String>,
    /// `1`: the processing comes as the form's fields (`task`, `<task>.<param>`) rather than
    /// `pipeline`.
    form: Option<String>,
    /// Form-style: a task to run, in order (repeat the field); its parameters are the
    /// `<task>.<param>` fields.
    task: Option<Vec<String>>,
    /// An image (2 MiB at most) that every watermark step without text draws instead of ours.
    #[schema(value_type = Option<String>, content_media_type = "application/octet-stream")]
    logo: Option<Vec<u8>>,
    /// Where the batch's status JSON is POSTed, signed, once it is `done` or `failed`: an
    /// absolute http/https URL of at most 2048 characters, not a loopback or private address.
    callback_url: Option<String>,
}

/// The fields of `POST /api/preview` (multipart/form-data): the choices as for a batch, and
/// the image to draw on.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PreviewForm {
    /// The image to draw on (4 MiB and 4 MP at most); a 640 × 427 sample photo without one.
    #[schema(value_type = Option<String>, content_media_type = "application/octet-stream")]
    image: Option<Vec<u8>>,
    /// The processing (filled in from the task registry).
    pipeline: Option<String>,
    /// `1`: the processing comes as the form's fields (`task`, `<task>.<param>`).
    form: Option<String>,
    /// Form-style: a task to run, in order (repeat the field).
    task: Option<Vec<String>>,
    /// An image (2 MiB at most) that every watermark step without text draws.
    #[schema(value_type = Option<String>, content_media_type = "application/octet-stream")]
    logo: Option<Vec<u8>>,
}

/// The document, built once.
pub static DOCUMENT: LazyLock<Value> = LazyLock::new(build);

static DOCUMENT_JSON: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string_pretty(&*DOCUMENT).unwrap_or_default());

fn build() -> Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    let schemas = &mut doc["components"]["schemas"];
    let codes: Vec<String> = crate::error::CODES
        .iter()
        .map(|(code, status, meaning)| format!("- `{code}` ({status}): {meaning}"))
        .collect();
    schemas["ErrorBody"]["description"] = Value::String(format!(
        "The body of every error of the API. `error.code` is one of:\n{}",
        codes.join("\n")
    ));
    binary_bodies(&mut doc["paths"]);
    let schemas = &mut doc["components"]["schemas"];
    let catalogue = tasks_described();
    for form in ["BatchForm", "PreviewForm"] {
        let properties = &mut schemas[form]["properties"];
        properties["pipeline"]["description"] = Value::String(format!(
            "A JSON list of steps, run in order: `[{{\"task\": name, ...parameters}}]`; a \
             parameter left out takes its default; empty or absent means the default pipeline \
             (the watermark, tiled at 50 % opacity). The tasks:\n{catalogue}"
        ));
        properties["pipeline"]["example"] = json!(
            r#"[{"task":"resize","max_width":1280},{"task":"watermark","text":"© Me","position":"bottom-right","opacity":0.8}]"#
        );
        let files = if form == "BatchForm" {
            "files"
        } else {
            "image"
        };
        if let Some(field) = properties[files].as_object_mut() {
            // A file is a string of bytes (OpenAPI 3.1: `contentMediaType`), an array of them.
            let media = field.remove("contentMediaType");
            if field.get("type").and_then(Value::as_str) == Some("array") {
                field.insert(
                    "items".into(),
                    json!({"type": "string", "contentMediaType": media}),
                );
            } else if let Some(media) = media {
                field.insert("contentMediaType".into(), media);
            }
        }
        if let Some(properties) = properties.as_object_mut() {
            for (name, schema) in form_fields() {
                properties.insert(name, schema);
            }
        }
    }
    doc
}

/// Bodies that are bytes (an image, a zip): a string of that media type, not a list of numbers.
fn binary_bodies(paths: &mut Value) {
    let Some(paths) = paths.as_object_mut() else {
        return;
    };
    for op in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in op.values_mut() {
            if let Some(content) = op["requestBody"]["content"].as_object_mut() {
                for (media, body) in content.iter_mut() {
                    if media == "application/octet-stream" {
                        body["schema"] = json!({"type": "string", "contentMediaType": media});
                    }
                }
            }
            let Some(responses) = op["responses"].as_object_mut() else {
                continue;
            };
            for response in responses.values_mut() {
                let Some(content) = response["content"].as_object_mut() else {
                    continue;
                };
                for (media, body) in content.iter_mut() {
                    if media.starts_with("image/") || media == "application/zip" {
                        body["schema"] = json!({"type": "string", "contentMediaType": media});
                    }
                }
            }
        }
    }
}

/// The registry in words: each task, then each parameter with its type, range and default.
fn tasks_described() -> String {
    let mut out = String::new();
    for task in jobs::tasks::catalogue() {
        out.push_str(&format!(
            "- `{}` ({}): {}\n",
            task.name, task.label, task.description
        ));
        for param in task.params {
            out.push_str(&format!(
                "  - `{}`: {} ({})\n",
                param.name,
                param.help,
                kind_in_words(param)
            ));
        }
    }
    out
}

/// `float, min 0, max 1, default 0.5, step 0.05`, from the parameter's own declaration.
fn kind_in_words(param: &jobs::tasks::ParamSpec) -> String {
    let Ok(Value::Object(spec)) = serde_json::to_value(param) else {
        return String::new();
    };
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("value");
    let mut words = vec![kind.to_owned()];
    for (key, value) in &spec {
        if !matches!(key.as_str(), "type" | "name" | "label" | "help") {
            let value = match value {
                Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            words.push(format!("{} {value}", key.replace('_', " ")));
        }
    }
    words.join(", ")
}

/// The form-style fields, `<task>.<param>`, one per parameter of each task.
fn form_fields() -> Vec<(String, Value)> {
    let mut fields = Vec::new();
    for task in jobs::tasks::catalogue() {
        for param in task.params {
            fields.push((
                format!("{}.{}", task.name, param.name),
                json!({
                    "type": "string",
                    "description": format!(
                        "Form-style, with `form=1` and `task={}`: {} ({})",
                        task.name, param.help, kind_in_words(param)
                    ),
                }),
            ));
        }
    }
    fields
}

/// `GET /api/openapi.json`.
pub async fn document() -> Response {
    let mut response = DOCUMENT_JSON.as_str().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[derive(Template)]
#[template(path = "api_docs.html")]
struct DocsPage {
    title: String,
    version: String,
    description: String,
    operations: Vec<Operation>,
    schemas: Vec<SchemaView>,
}

struct Operation {
    anchor: String,
    method: String,
    path: String,
    summary: String,
    description: String,
    tag: String,
    security: String,
    params: Vec<Field>,
    body: Vec<BodyView>,
    responses: Vec<ResponseView>,
}

struct Field {
    name: String,
    place: String,
    kind: String,
    required: bool,
    description: String,
}

struct BodyView {
    content_type: String,
    schema: String,
    fields: Vec<Field>,
}

struct ResponseView {
    status: String,
    description: String,
    content: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

struct SchemaView {
    name: String,
    description: String,
    fields: Vec<Field>,
}

/// `GET /api/docs`: the document as a page.
pub async fn docs() -> Response {
    render(StatusCode::OK, &docs_page(&DOCUMENT))
}

/// A description as it reads: the line breaks of wrapped doc comments joined, those before a
/// list item kept.
fn text(value: &Value) -> String {
    let mut out = String::new();
    for line in value.as_str().unwrap_or_default().lines() {
        if !out.is_empty() {
            let item = line.trim_start().starts_with("- ");
            out.push(if item { '\n' } else { ' ' });
        }
        out.push_str(if line.trim_start().starts_with("- ") {
            line
        } else {
            line.trim_start()
        });
    }
    out
}

fn docs_page(doc: &Value) -> DocsPage {
    let mut operations = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                operations.push(operation(doc, path, method, op));
            }
        }
    }
    let schemas = doc["components"]["schemas"]
        .as_object()
        .map(|all| {
            all.iter()
                .map(|(name, schema)| SchemaView {
                    name: name.clone(),
                    description: text(&schema["description"]),
                    fields: fields_of(doc, schema),
                })
                .collect()
        })
        .unwrap_or_default();
    DocsPage {
        title: text(&doc["info"]["title"]),
        version: text(&doc["info"]["version"]),
        description: text(&doc["info"]["description"]),
        operations,
        schemas,
    }
}

fn operation(doc: &Value, path: &str, method: &str, op: &Value) -> Operation {
    let params = op["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| Field {
                    name: text(&p["name"]),
                    place: text(&p["in"]),
                    kind: type_of(&p["schema"]),
                    required: p["required"].as_bool().unwrap_or(false),
                    description: text(&p["description"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let body = op["requestBody"]["content"]
        .as_object()
        .map(|content| {
            content
                .iter()
                .map(|(content_type, media)| BodyView {
                    content_type: content_type.clone(),
                    schema: type_of(&media["schema"]),
                    fields: fields_of(doc, &media["schema"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let responses = op["responses"]
        .as_object()
        .map(|all| {
            all.iter()
                .map(|(status, r)| ResponseView {
                    status: status.clone(),
                    description: text(&r["description"]),
                    content: r["content"]
                        .as_object()
                        .map(|c| {
                            c.iter()
                                .map(|(t, media)| (t.clone(), type_of(&media["schema"])))
                                .collect()
                        })
                        .unwrap_or_default(),
                    headers: r["headers"]
                        .as_object()
                        .map(|h| {
                            h.iter()
                                .map(|(name, h)| (name.clone(), text(&h["description"])))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let security = op["security"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_object)
                .flat_map(Map::keys)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let anchor: String = format!("{method}{path}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Operation {
        anchor,
        method: method.to_uppercase(),
        path: path.to_owned(),
        summary: text(&op["summary"]),
        description: text(&op["description"]),
        tag: op["tags"][0].as_str().unwrap_or_default().to_owned(),
        security,
        params,
        body,
        responses,
    }
}

/// The schema `$ref` points at, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => r
            .strip_prefix("#/components/schemas/")
            .map(|name| &doc["components"]["schemas"][name])
            .unwrap_or(schema),
        None => schema,
    }
}

/// The properties of an object schema (after `$ref`).
fn fields_of(doc: &Value, schema: &Value) -> Vec<Field> {
    let schema = resolve(doc, schema);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, p)| Field {
                    name: name.clone(),
                    place: String::new(),
                    kind: type_of(p),
                    required: required.contains(&name.as_str()),
                    description: text(&p["description"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A schema in a few words: `BatchView`, `array of string (binary)`, `string | null`,
/// `one of: …`.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(parts) = schema[key].as_array() {
            let parts: Vec<String> = parts.iter().map(type_of).collect();
            return parts.join(" | ");
        }
    }
    let mut kind = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_owned(),
    };
    if kind.starts_with("array") {
        kind = kind.replacen(
            "array",
            &format!("array of {}", type_of(&schema["items"])),
            1,
        );
    }
    if let Some(format) = schema["format"].as_str() {
        kind.push_str(&format!(" ({format})"));
    }
    if let Some(media) = schema["contentMediaType"].as_str() {
        kind.push_str(&format!(" ({media})"));
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        kind.push_str(&format!(": {}", values.join(", ")));
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_read_as_prose_and_keep_their_lists() {
        let joined = text(&json!(
            "A wrapped\n  doc comment:\n- `a`: one\n  - `b`: two"
        ));
        assert_eq!(joined, "A wrapped doc comment:\n- `a`: one\n  - `b`: two");
    }

    #[test]
    fn the_page_has_every_operation_and_schema_of_the_document() {
        let page = docs_page(&DOCUMENT);
        let operations: usize = DOCUMENT["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(page.operations.len(), operations);
        assert!(page.operations.iter().all(|op| !op.responses.is_empty()));
        let schemas = DOCUMENT["components"]["schemas"].as_object().unwrap().len();
        assert_eq!(page.schemas.len(), schemas);
        let form = page.schemas.iter().find(|s| s.name == "BatchForm").unwrap();
        let files = form.fields.iter().find(|f| f.name == "files").unwrap();
        assert_eq!(files.kind, "array of string (application/octet-stream)");
        assert!(files.required);
    }
}
