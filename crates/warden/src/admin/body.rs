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
    /// A field to set, as a dotted path; repeatable, applied after `-f`.
    /// `FIELD=TEXT` sets a string, always (`tls.mode=disable`, `secret=12345`);
    /// `FIELD:=JSON` sets a JSON value (`policies.masking:='["pii"]'`,
    /// `access.approvals:=2`, `description:=null`).
    #[arg(long = "set", value_name = "FIELD=TEXT|FIELD:=JSON")]
    pub set: Vec<String>,
    /// A string field read from a file (`-`: standard input), one trailing newline
    /// dropped: `--set-file secret=/run/secrets/db`, so a secret is neither in the
    /// command line (other users can read it) nor in the shell's history.
    #[arg(long = "set-file", value_name = "FIELD=FILE")]
    pub set_file: Vec<String>,
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
            let (path, value) = match assignment.split_once('=') {
                Some((path, json)) if path.ends_with(':') => {
                    let value = serde_json::from_str(json).with_context(|| {
                        format!("--set {path}=: the value after := must be JSON")
                    })?;
                    (&path[..path.len() - 1], value)
                }
                Some((path, text)) => (path, Value::String(text.to_string())),
                None => bail!("--set {assignment}: expected FIELD=TEXT or FIELD:=JSON"),
            };
            set(&mut body, path, value)?;
        }
        for assignment in &self.set_file {
            let Some((path, file)) = assignment.split_once('=') else {
                bail!("--set-file {assignment}: expected FIELD=FILE");
            };
            let mut text = if file == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .read_to_string(&mut t)
                    .context("reading standard input")?;
                t
            } else {
                std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
            };
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            set(&mut body, path, Value::String(text))?;
        }
        if body.as_object().is_some_and(Map::is_empty) {
            bail!("nothing given: pass -f FILE, --set FIELD=TEXT or --set FIELD:=JSON");
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

/// Sets `a.b.c` to `value`, creating objects on the way.
fn set(body: &mut Value, path: &str, value: Value) -> Result<()> {
    let assignment = path;
    if path.is_empty() || path.split('.').any(str::is_empty) {
        bail!("--set {path}: the field is a dotted path such as tls.mode");
    }
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
                "policies.masking:=[\"pii\"]".into(),
                "description:=null".into(),
                "access.max_hours:=8".into(),
                "target=db:5432/app".into(),
                // Text stays text, whatever it looks like.
                "secret=12345".into(),
                "username=null".into(),
                "name=\"quoted\"".into(),
            ],
            set_file: vec![],
        };
        assert_eq!(
            args.body().unwrap(),
            json!({"tls": {"mode": "disable"}, "policies": {"masking": ["pii"]},
                   "description": null, "access": {"max_hours": 8}, "target": "db:5432/app",
                   "secret": "12345", "username": "null", "name": "\"quoted\""})
        );
        for wrong in ["target", "x:=not json", "a..b=1"] {
            let bad = BodyArgs {
                file: None,
                set: vec![wrong.into()],
                set_file: vec![],
            };
            assert!(bad.body().is_err(), "{wrong}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret with spaces\n").unwrap();
        let from_file = BodyArgs {
            file: None,
            set: vec![],
            set_file: vec![format!("secret={}", file.display())],
        };
        assert_eq!(
            from_file.body().unwrap(),
            json!({"secret": "s3cret with spaces"})
        );
        assert!(BodyArgs::default().body().is_err());
    }
}
