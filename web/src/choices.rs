//! What a submission chooses besides its files: the `pipeline` JSON field, or the form's fields
//! (`form=1`, `task`, `<task>.<param>`), and whether a logo came. One parser for the upload
//! (`upload.rs`) and the preview (`preview.rs`), so that a preview shows exactly what a batch
//! with the same choices gets.

use serde_json::{Map, Value};

use jobs::tasks::{self, Pipeline};

use crate::error::AppError;

/// Everything a submission carries besides its files.
#[derive(Debug, Default)]
pub struct Choices {
    pipeline_json: Option<String>,
    from_form: bool,
    form_tasks: Vec<String>,
    form_params: Vec<(String, String)>,
    /// A logo file was sent.
    pub logo: bool,
}

impl Choices {
    /// Whether a part named `name` is a choice sent as text (`pipeline`, `form`, `task`, or a
    /// task's parameter `<task>.<param>`); see [`Choices::set`].
    pub fn is_text(name: &str) -> bool {
        matches!(name, "pipeline" | "form" | "task") || name.contains('.')
    }

    /// Whether a part named `name` is a choice (one of [`Choices::is_text`], or the logo).
    pub fn is_choice(name: &str) -> bool {
        name == "logo" || Self::is_text(name)
    }

    /// Records the text part `name` (one that [`Choices::is_text`] accepts) and its value.
    pub fn set(&mut self, name: &str, value: String) {
        match name {
            "pipeline" => self.pipeline_json = Some(value),
            "form" => self.from_form = true,
            "task" => self.form_tasks.push(value),
            _ => self.form_params.push((name.to_owned(), value)),
        }
    }

    /// The stored form of the pipeline when the choices received so far settle it: a `pipeline`
    /// field or the form's marker came, and what came makes a valid pipeline. Otherwise the
    /// choices are read at the end of the body, as they always were (and their errors told then).
    pub fn settled(&self) -> Option<Value> {
        if self.pipeline_json.is_none() && !self.from_form {
            return None;
        }
        let pipeline = self.pipeline().ok()?;
        Some(self.with_logo(pipeline).ok()?.to_json())
    }

    /// See [`Pipeline::with_logo`].
    pub fn with_logo(&self, pipeline: Pipeline) -> Result<Pipeline, AppError> {
        pipeline.with_logo(self.logo).map_err(AppError::BadRequest)
    }

    /// The pipeline: the `pipeline` JSON field, else the form's choices, else the default.
    pub fn pipeline(&self) -> Result<Pipeline, AppError> {
        let bad = |e: String| AppError::BadRequest(format!("invalid pipeline: {e}"));
        if let Some(json) = &self.pipeline_json {
            if !json.trim().is_empty() {
                let value: Value =
                    serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON ({e})")))?;
                return Pipeline::parse(&value).map_err(bad);
            }
        }
        if !self.from_form {
            return Ok(tasks::default_pipeline());
        }
        if self.form_tasks.is_empty() {
            return Err(AppError::BadRequest(
                "choose at least one kind of processing".into(),
            ));
        }
        let mut steps = Vec::new();
        for name in &self.form_tasks {
            let task = tasks::find(name).ok_or_else(|| bad(format!("unknown task {name:?}")))?;
            let mut step = Map::new();
            step.insert("task".into(), Value::String(name.clone()));
            for spec in task.params() {
                let key = format!("{name}.{}", spec.name);
                let value = match self.form_params.iter().find(|(k, _)| *k == key) {
                    Some((_, text)) => tasks::form_value(spec, text),
                    // An unticked checkbox sends nothing.
                    None if matches!(spec.kind, tasks::ParamKind::Bool { .. }) => {
                        Value::Bool(false)
                    }
                    None => Value::Null,
                };
                step.insert(spec.name.into(), value);
            }
            steps.push(Value::Object(step));
        }
        Pipeline::parse(&Value::Array(steps)).map_err(bad)
    }

    /// The pipeline with the logo taken into account: what a batch with these choices runs.
    pub fn resolve(&self) -> Result<Pipeline, AppError> {
        self.with_logo(self.pipeline()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_the_json_and_nothing_make_the_same_kinds_of_pipeline() {
        let mut form = Choices::default();
        for (name, value) in [
            ("form", "1"),
            ("task", "watermark"),
            ("watermark.opacity", "0.8"),
            ("watermark.position", "bottom-right"),
        ] {
            assert!(Choices::is_text(name));
            form.set(name, value.into());
        }
        let pipeline = form.resolve().expect("a valid pipeline").to_json();
        assert_eq!(pipeline[0]["task"], "watermark");
        assert_eq!(pipeline[0]["opacity"], 0.8);
        assert_eq!(pipeline[0]["position"], "bottom-right");
        assert!(form.settled().is_some());

        let mut json = Choices::default();
        json.set("pipeline", r#"[{"task":"grayscale"}]"#.into());
        assert_eq!(
            json.resolve().expect("valid").to_json()[0]["task"],
            "grayscale"
        );

        let nothing = Choices::default();
        assert!(nothing.settled().is_none(), "read at the end");
        assert_eq!(
            nothing.resolve().expect("the default").to_json()[0]["task"],
            "watermark"
        );

        let mut none_ticked = Choices::default();
        none_ticked.set("form", "1".into());
        let err = none_ticked.resolve().expect_err("no task");
        assert!(err.to_string().contains("at least one"), "{err}");

        let mut bad = Choices::default();
        bad.set("pipeline", "[{".into());
        assert!(bad
            .resolve()
            .expect_err("not JSON")
            .to_string()
            .contains("not valid JSON"));
        assert!(!Choices::is_text("files") && Choices::is_choice("logo"));
    }
}
