//! References inside step configuration: `${steps.ID.outputs.KEY}`, `${run.id}`, `${plan.name}`,
//! `${plan.dir}`, `${state.dir}`, `${env.NAME}`; `$$` is a literal `$`.
//!
//! They are parsed when the plan is loaded (a malformed reference, or one to a step that does not
//! run before this one, is a plan error) and resolved when the step runs, because outputs exist
//! only then.

use std::collections::BTreeMap;

use serde_json::Value;

/// One `${...}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An output of an earlier step.
    StepOutput {
        /// The step's id.
        step: String,
        /// The output's key.
        key: String,
    },
    /// The current run's id.
    RunId,
    /// The plan's name.
    PlanName,
    /// The folder holding the plan file.
    PlanDir,
    /// backplan's local state folder (`--state-dir`, `$BACKPLAN_STATE_DIR`, ...).
    StateDir,
    /// An environment variable of the backplan process.
    Env(String),
}

enum Piece<'a> {
    Text(&'a str),
    Ref(Reference),
}

fn parse_reference(inner: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = inner.split('.').collect();
    match parts.as_slice() {
        ["steps", step, "outputs", key] if !step.is_empty() && !key.is_empty() => {
            Ok(Reference::StepOutput {
                step: (*step).to_owned(),
                key: (*key).to_owned(),
            })
        }
        ["run", "id"] => Ok(Reference::RunId),
        ["plan", "name"] => Ok(Reference::PlanName),
        ["plan", "dir"] => Ok(Reference::PlanDir),
        ["state", "dir"] => Ok(Reference::StateDir),
        ["env", name] if !name.is_empty() => Ok(Reference::Env((*name).to_owned())),
        _ => Err(format!(
            "unknown reference `${{{inner}}}`: use ${{steps.ID.outputs.KEY}}, ${{run.id}}, \
             ${{plan.name}}, ${{plan.dir}}, ${{state.dir}} or ${{env.NAME}} (write $$ for a \
             literal $)"
        )),
    }
}

fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push(Piece::Text("$"));
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed reference in {text:?}"))?;
            out.push(Piece::Ref(parse_reference(&body[..end])?));
            rest = &body[end + 1..];
        } else {
            out.push(Piece::Text("$"));
            rest = after;
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Every reference in `text`, or why one is malformed.
pub fn references(text: &str) -> Result<Vec<Reference>, String> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

/// What references resolve to while a step runs.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The run's id.
    pub run_id: String,
    /// The plan's name.
    pub plan_name: String,
    /// The plan's folder.
    pub plan_dir: String,
    /// The local state folder.
    pub state_dir: String,
    /// Outputs of the steps that finished, by id.
    pub outputs: BTreeMap<String, BTreeMap<String, Value>>,
    /// Leave every step reference as written (for `check`, which runs before any output
    /// exists). Otherwise only references to outputs that do not exist are left as written.
    pub keep_step_references: bool,
}

impl Scope {
    fn resolve(&self, reference: &Reference) -> Result<String, String> {
        Ok(match reference {
            Reference::StepOutput { step, key } => {
                if self.keep_step_references {
                    return Ok(format!("${{steps.{step}.outputs.{key}}}"));
                }
                // A config may hold fields for several actions (`command`, `restore_command`):
                // an output one action lacks may belong to a field it never reads, so it stays
                // as written and the plugin refuses it if it does use it (see
                // `Request::is_unresolved`).
                let Some(value) = self.outputs.get(step).and_then(|o| o.get(key)) else {
                    return Ok(format!("${{steps.{step}.outputs.{key}}}"));
                };
                match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            }
            Reference::RunId => self.run_id.clone(),
            Reference::PlanName => self.plan_name.clone(),
            Reference::PlanDir => self.plan_dir.clone(),
            Reference::StateDir => self.state_dir.clone(),
            Reference::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
        })
    }

    /// Resolves every reference in every string of `config`.
    pub fn resolve_config(&self, config: &Value) -> Result<Value, String> {
        Ok(match config {
            Value::String(text) => {
                let mut out = String::new();
                for piece in pieces(text)? {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Ref(r) => out.push_str(&self.resolve(&r)?),
                    }
                }
                Value::String(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.resolve_config(v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.resolve_config(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_kind_and_rejects_unknown_ones() {
        let refs = references("${steps.a.outputs.ip} ${run.id} $$x ${env.HOME}").unwrap();
        assert_eq!(
            refs,
            vec![
                Reference::StepOutput {
                    step: "a".into(),
                    key: "ip".into()
                },
                Reference::RunId,
                Reference::Env("HOME".into())
            ]
        );
        assert!(
            references("${steps.a.ip}")
                .unwrap_err()
                .contains("unknown reference")
        );
        assert!(references("${run.id").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn resolves_outputs_escapes_and_reports_missing_ones() {
        let mut scope = Scope {
            run_id: "r1".into(),
            ..Scope::default()
        };
        scope.outputs.insert(
            "launch".into(),
            [("ip".to_owned(), json!("10.0.0.9"))].into(),
        );
        let config =
            json!({"hosts": ["${steps.launch.outputs.ip}:8800"], "tag": "$${run.id}-${run.id}"});
        assert_eq!(
            scope.resolve_config(&config).unwrap(),
            json!({"hosts": ["10.0.0.9:8800"], "tag": "${run.id}-r1"})
        );
        let missing = scope.resolve_config(&json!("${steps.launch.outputs.nope}"));
        assert_eq!(missing.unwrap(), json!("${steps.launch.outputs.nope}"));
        assert!(
            scope
                .resolve_config(&json!("${env.BACKPLAN_SURELY_UNSET}"))
                .is_err()
        );
        scope.keep_step_references = true;
        assert_eq!(
            scope
                .resolve_config(&json!("${steps.x.outputs.y}"))
                .unwrap(),
            json!("${steps.x.outputs.y}")
        );
    }
}
