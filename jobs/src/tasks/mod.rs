//! The `ImageTask` trait, the typed parameters every task declares, and the registry.
//!
//! Adding a task is one new file in this folder and one line in the `register_tasks!` call
//! below; the upload form, the JSON API (`GET /api/tasks`), validation and the worker all read
//! from here.
//!
//! A task is used in two stages. [`ImageTask::prepare`] turns a step's parameters and the
//! batch's [`Assets`] (its uploaded logo) into a [`Prepared`] value, once per batch in each image
//! process, which caches it; [`Prepared::apply`] then runs on each image of the batch, in the
//! worker's image child process. Work that does not depend on the image (decoding a logo,
//! rasterising text) belongs in `prepare`; work that depends only on the image's size (sizing a
//! mark) is cached inside the prepared value.

use std::collections::BTreeMap;
use std::sync::Arc;

use image::{DynamicImage, RgbaImage};
use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::overlay::Overlay;

/// Declares each task's module and lists it in [`REGISTRY`], in the order the form shows them.
macro_rules! register_tasks {
    ($($module:ident :: $task:ident),* $(,)?) => {
        $(mod $module;)*
        /// Every task the system knows, in the order the form shows them.
        pub static REGISTRY: &[&dyn ImageTask] = &[$(&$module::$task),*];
    };
}

// Register a new task here: one line, `file_name::TypeName`.
register_tasks! {
    watermark::Watermark,
    resize::Resize,
    grayscale::Grayscale,
}

/// The pipeline a batch gets when it names none: the watermark with its defaults.
pub fn default_pipeline() -> Pipeline {
    Pipeline::parse(&Value::Array(vec![
        serde_json::json!({"task": "watermark"}),
    ]))
    .expect("the default pipeline is valid")
}

/// One kind of processing.
pub trait ImageTask: Send + Sync {
    /// Stable identifier, used in the API and stored with batches (`[a-z0-9_]+`).
    fn name(&self) -> &'static str;
    /// Human label for the form.
    fn label(&self) -> &'static str;
    /// One sentence for the form and the API.
    fn description(&self) -> &'static str;
    /// The parameters this task takes; validation and the form are derived from them.
    fn params(&self) -> &'static [ParamSpec];
    /// Checks that go beyond one parameter's type and range (optional).
    fn validate(&self, _params: &Params) -> Result<(), String> {
        Ok(())
    }
    /// Makes the step ready for a batch: `params` has passed validation and holds every
    /// declared parameter; `assets` holds what was uploaded with the batch. Runs once per batch
    /// in each image process; the result is applied to every image of the batch.
    fn prepare(&self, params: &Params, assets: &Assets) -> Result<Box<dyn Prepared>, TaskError>;
}

/// A step made ready for one batch: immutable, applied to image after image.
pub trait Prepared: Send + Sync {
    /// Applies the step to one decoded image, already upright from its EXIF orientation. It
    /// may return any kind of image; the pipeline encodes it in the input's format.
    fn apply(&self, image: DynamicImage) -> Result<DynamicImage, TaskError>;

    /// The size `apply` gives an image of `width × height` (the same size, by default). The
    /// pipeline checks it against the pixel limit before `apply` builds anything, so a step that
    /// changes the size must say so here, exactly.
    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        (width, height)
    }

    /// When the step does nothing but paint a mark over an image of `width × height`, that
    /// mark: fast paths (JPEG in YCbCr planes) then blend it without decoding to RGB. `None`
    /// (the default) when the step is anything else. It must paint exactly what `apply` does.
    fn overlay(&self, _width: u32, _height: u32) -> Option<Result<Arc<Overlay>, TaskError>> {
        None
    }
}

/// A prepared step that is a plain function of each image (for tasks with nothing to prepare);
/// it must keep the image's size (a step that changes it implements [`Prepared::output_size`]).
pub fn per_image<F>(f: F) -> Box<dyn Prepared>
where
    F: Fn(DynamicImage) -> Result<DynamicImage, TaskError> + Send + Sync + 'static,
{
    struct PerImage<F>(F);
    impl<F> Prepared for PerImage<F>
    where
        F: Fn(DynamicImage) -> Result<DynamicImage, TaskError> + Send + Sync,
    {
        fn apply(&self, image: DynamicImage) -> Result<DynamicImage, TaskError> {
            (self.0)(image)
        }
    }
    Box::new(PerImage(f))
}

/// What a batch brings besides its images and parameters.
#[derive(Default)]
pub struct Assets {
    /// The logo uploaded with the batch, decoded.
    pub logo: Option<Arc<RgbaImage>>,
}

/// A task that could not be applied to one image.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

/// The declaration of one parameter.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamSpec {
    pub name: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    #[serde(flatten)]
    pub kind: ParamKind,
}

/// A parameter's type, range and default.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ParamKind {
    Float {
        min: f64,
        max: f64,
        default: f64,
        step: f64,
    },
    Int {
        min: i64,
        max: i64,
        default: i64,
    },
    Bool {
        default: bool,
    },
    Choice {
        options: &'static [&'static str],
        default: &'static str,
    },
    Text {
        max_len: usize,
        default: &'static str,
    },
    /// `#rrggbb`.
    Color {
        default: &'static str,
    },
}

impl ParamKind {
    fn default_value(&self) -> ParamValue {
        match *self {
            ParamKind::Float { default, .. } => ParamValue::Float(default),
            ParamKind::Int { default, .. } => ParamValue::Int(default),
            ParamKind::Bool { default } => ParamValue::Bool(default),
            ParamKind::Choice { default, .. }
            | ParamKind::Text { default, .. }
            | ParamKind::Color { default } => ParamValue::Text(default.to_owned()),
        }
    }
}

/// A validated parameter value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Text(String),
}

/// The validated parameters of one step: every declared parameter is present.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Params(BTreeMap<&'static str, ParamValue>);

impl Params {
    pub fn float(&self, name: &str) -> f64 {
        match self.0.get(name) {
            Some(ParamValue::Float(v)) => *v,
            Some(ParamValue::Int(v)) => *v as f64,
            _ => panic!("parameter {name} is not a declared float"),
        }
    }

    pub fn int(&self, name: &str) -> i64 {
        match self.0.get(name) {
            Some(ParamValue::Int(v)) => *v,
            _ => panic!("parameter {name} is not a declared int"),
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        match self.0.get(name) {
            Some(ParamValue::Bool(v)) => *v,
            _ => panic!("parameter {name} is not a declared bool"),
        }
    }

    pub fn text(&self, name: &str) -> &str {
        match self.0.get(name) {
            Some(ParamValue::Text(v)) => v,
            _ => panic!("parameter {name} is not a declared text"),
        }
    }

    /// Validates raw values against `specs`: unknown names, wrong types and out-of-range values
    /// are errors that name the parameter; missing ones take their default.
    pub fn parse(
        task: &str,
        specs: &'static [ParamSpec],
        raw: &Map<String, Value>,
    ) -> Result<Self, String> {
        for key in raw.keys() {
            if !specs.iter().any(|s| s.name == key) {
                let known: Vec<_> = specs.iter().map(|s| s.name).collect();
                return Err(if known.is_empty() {
                    format!("{task}: takes no parameters, got {key:?}")
                } else {
                    format!(
                        "{task}: unknown parameter {key:?} (known: {})",
                        known.join(", ")
                    )
                });
            }
        }
        let mut out = BTreeMap::new();
        for spec in specs {
            let value = match raw.get(spec.name) {
                None | Some(Value::Null) => spec.kind.default_value(),
                Some(v) => check(spec, v).map_err(|e| format!("{task}.{}: {e}", spec.name))?,
            };
            out.insert(spec.name, value);
        }
        Ok(Self(out))
    }
}

fn check(spec: &ParamSpec, v: &Value) -> Result<ParamValue, String> {
    match spec.kind {
        ParamKind::Float { min, max, .. } => {
            let x = v.as_f64().ok_or("must be a number")?;
            if !(min..=max).contains(&x) {
                return Err(format!("must be between {min} and {max}, got {x}"));
            }
            Ok(ParamValue::Float(x))
        }
        ParamKind::Int { min, max, .. } => {
            let x = v
                .as_i64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                        .map(|f| f as i64)
                })
                .ok_or("must be a whole number")?;
            if !(min..=max).contains(&x) {
                return Err(format!("must be between {min} and {max}, got {x}"));
            }
            Ok(ParamValue::Int(x))
        }
        ParamKind::Bool { .. } => v
            .as_bool()
            .map(ParamValue::Bool)
            .ok_or_else(|| "must be true or false".into()),
        ParamKind::Choice { options, .. } => {
            let s = v.as_str().ok_or("must be a string")?;
            if options.contains(&s) {
                Ok(ParamValue::Text(s.to_owned()))
            } else {
                Err(format!("must be one of {}", options.join(", ")))
            }
        }
        ParamKind::Text { max_len, .. } => {
            let s = v.as_str().ok_or("must be a string")?;
            if s.chars().count() > max_len {
                return Err(format!("must be at most {max_len} characters"));
            }
            if s.chars().any(char::is_control) {
                return Err("must not contain control characters".into());
            }
            Ok(ParamValue::Text(s.to_owned()))
        }
        ParamKind::Color { .. } => {
            let s = v.as_str().ok_or("must be a string")?;
            parse_color(s).ok_or("must be a colour like #ff8800")?;
            Ok(ParamValue::Text(s.to_ascii_lowercase()))
        }
    }
}

/// Parses `#rrggbb`.
pub fn parse_color(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// Converts the text a form sends for one parameter into the JSON value it stands for.
pub fn form_value(spec: &ParamSpec, text: &str) -> Value {
    let text = text.trim();
    match spec.kind {
        ParamKind::Float { .. } | ParamKind::Int { .. } => match text.parse::<f64>() {
            Ok(x) if x.is_finite() => serde_json::Number::from_f64(x)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            _ if text.is_empty() => Value::Null,
            _ => Value::String(text.to_owned()),
        },
        ParamKind::Bool { .. } => Value::Bool(matches!(text, "on" | "true" | "1" | "yes")),
        _ => Value::String(text.to_owned()),
    }
}

pub fn find(name: &str) -> Option<&'static dyn ImageTask> {
    REGISTRY.iter().copied().find(|t| t.name() == name)
}

/// One step of a pipeline: a task with its validated parameters.
#[derive(Clone)]
pub struct Step {
    pub task: &'static dyn ImageTask,
    pub params: Params,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("task", &self.task.name())
            .field("params", &self.params)
            .finish()
    }
}

/// Most steps one pipeline may have.
pub const MAX_STEPS: usize = 8;

/// An ordered list of steps, validated.
#[derive(Debug, Clone)]
pub struct Pipeline(pub Vec<Step>);

impl Pipeline {
    /// Parses and validates `[{"task": name, ...params}, ...]`. Errors are meant for the user.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let items = value
            .as_array()
            .ok_or("pipeline must be a JSON list of steps like [{\"task\": \"watermark\"}]")?;
        if items.is_empty() {
            return Err("pipeline must have at least one step".into());
        }
        if items.len() > MAX_STEPS {
            return Err(format!("pipeline may have at most {MAX_STEPS} steps"));
        }
        let mut steps = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let obj = item.as_object().ok_or_else(|| {
                format!(
                    "step {}: must be an object like {{\"task\": \"watermark\"}}",
                    i + 1
                )
            })?;
            let name = obj
                .get("task")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("step {}: \"task\" must name a task", i + 1))?;
            let task = find(name).ok_or_else(|| {
                let known: Vec<_> = REGISTRY.iter().map(|t| t.name()).collect();
                format!(
                    "step {}: unknown task {name:?} (known: {})",
                    i + 1,
                    known.join(", ")
                )
            })?;
            let mut raw = obj.clone();
            raw.remove("task");
            let params = Params::parse(name, task.params(), &raw)
                .map_err(|e| format!("step {}: {e}", i + 1))?;
            task.validate(&params)
                .map_err(|e| format!("step {}: {name}: {e}", i + 1))?;
            steps.push(Step { task, params });
        }
        Ok(Self(steps))
    }

    /// The pipeline for a batch sent with (`logo` true) or without a logo file. With one, every
    /// watermark step without text draws it; a step that asks for the uploaded logo needs one,
    /// and a logo no step uses is a mistake worth saying. Errors are meant for the user.
    pub fn with_logo(&self, logo: bool) -> Result<Pipeline, String> {
        let mut steps = match self.to_json() {
            Value::Array(steps) => steps,
            _ => unreachable!("a pipeline is an array of steps"),
        };
        let mut uses = false;
        for step in &mut steps {
            if step["task"] != "watermark" {
                continue;
            }
            let text = step["text"].as_str().unwrap_or("").trim().is_empty();
            if logo && text {
                step["logo"] = Value::String("uploaded".into());
            }
            if step["logo"] == "uploaded" {
                if !logo {
                    return Err(
                        "watermark.logo: \"uploaded\" needs a logo file (the `logo` field)".into(),
                    );
                }
                uses = uses || text;
            }
        }
        if logo && !uses {
            return Err("a logo file was sent, but no watermark step draws a logo (remove its text, or the logo)".into());
        }
        Pipeline::parse(&Value::Array(steps)).map_err(|e| format!("invalid pipeline: {e}"))
    }

    /// The normalised form stored with a batch: every parameter spelled out.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|s| {
                    let mut obj = Map::new();
                    obj.insert("task".into(), Value::String(s.task.name().into()));
                    for (k, v) in &s.params.0 {
                        obj.insert((*k).into(), serde_json::to_value(v).unwrap_or(Value::Null));
                    }
                    Value::Object(obj)
                })
                .collect(),
        )
    }

    /// Short text for pages: "Watermark, then Grayscale".
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|s| s.task.label())
            .collect::<Vec<_>>()
            .join(", then ")
    }
}

/// A task's description as `GET /api/tasks` lists it.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskInfo {
    pub name: &'static str,
    pub label: &'static str,
    pub description: &'static str,
    pub params: &'static [ParamSpec],
}

pub fn catalogue() -> Vec<TaskInfo> {
    REGISTRY
        .iter()
        .map(|t| TaskInfo {
            name: t.name(),
            label: t.label(),
            description: t.description(),
            params: t.params(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
