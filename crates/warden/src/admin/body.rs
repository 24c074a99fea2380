//! Request bodies from `-f FILE` (JSON or TOML) and `--set FIELD=VALUE`.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Args, Default)]
pub struct BodyArgs {
    /// The body: a JSON file, TOML when the name ends in `.toml`, `-` for standard
    /// input (JSON or TOML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A field to set, as a dotted path (`tls.mode=disable`,
    /// `policies.masking=["pii"]`, `description=null`); repeatable. The value is
    /// JSON when it parses as JSON, else a string. Applied after `-f`.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub set: Vec<String>,
}

impl BodyArgs {
    /// The body; an error when neither `-f` nor `--set` gave anything.
    pub fn body(&self) -> Result<Value> {
        let mut body = match &self.file {
            Some(path) => read_file(path)?,
            None => Value::Object(Map::new()),
        };
        if !body.is_object() {
            bail!("the body must be an object (a JSON object or a TOML table)");
        }
        for assignment in &self.set {
            set(&mut body, assignment)?;
        }
        if body.as_object().is_some_and(Map::is_empty) {
            bail!("nothing given: pass -f FILE or --set FIELD=VALUE");
        }
        Ok(body)
    }
}

fn read_file(path: &Path) -> Result<Value> {
    let (text, toml_name) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        (text, None)
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        (text, Some(path.extension().is_some_and(|e| e == "toml")))
    };
    match toml_name {
        Some(true) => from_toml(&text).with_context(|| format!("{} (TOML)", path.display())),
        Some(false) => {
            serde_json::from_str(&text).with_context(|| format!("{} (JSON)", path.display()))
        }
        None => serde_json::from_str(&text)
            .or_else(|_| from_toml(&text))
            .context("standard input is neither JSON nor TOML"),
    }
}

fn from_toml(text: &str) -> Result<Value> {
    let table: toml::Table = toml::from_str(text)?;
    Ok(serde_json::to_value(table)?)
}

/// Applies `a.b.c=value`, creating objects on the way.
fn set(body: &mut Value, assignment: &str) -> Result<()> {
    let Some((path, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected FIELD=VALUE");
    };
    if path.is_empty() || path.split('.').any(str::is_empty) {
        bail!("--set {assignment}: the field is a dotted path such as tls.mode");
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut at = body;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = at else {
            bail!("--set {assignment}: `{part}` is inside a value that is not an object");
        };
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return Ok(());
        }
        at = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_builds_nested_fields_with_json_or_string_values() {
        let args = BodyArgs {
            file: None,
            set: vec![
                "tls.mode=disable".into(),
                "policies.masking=[\"pii\"]".into(),
                "description=null".into(),
                "access.max_hours=8".into(),
                "target=db:5432/app".into(),
            ],
        };
        assert_eq!(
            args.body().unwrap(),
            json!({"tls": {"mode": "disable"}, "policies": {"masking": ["pii"]},
                   "description": null, "access": {"max_hours": 8}, "target": "db:5432/app"})
        );
        let bad = BodyArgs {
            file: None,
            set: vec!["target".into()],
        };
        assert!(bad.body().is_err());
        assert!(BodyArgs::default().body().is_err());
    }
}
