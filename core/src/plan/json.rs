//! A step's `config` table as JSON, the form plugins and their schemas read.
//!
//! JSON has no NaN or infinity, and serde_json would silently turn them into `null` (a missing
//! value, for a plugin): such floats are reported, with where they are, instead.

use serde_json::Value;

/// `value` as JSON; the JSON pointers of floats JSON cannot hold are pushed to `non_finite`.
pub(crate) fn toml_to_json(
    value: &toml::Value,
    pointer: &str,
    non_finite: &mut Vec<String>,
) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) if !f.is_finite() => {
            non_finite.push(pointer.to_owned());
            Value::Null
        }
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| toml_to_json(v, &format!("{pointer}/{i}"), non_finite))
                .collect(),
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| {
                    let child = format!("{pointer}/{}", escape(k));
                    (k.clone(), toml_to_json(v, &child, non_finite))
                })
                .collect(),
        ),
    }
}

/// A key as one JSON pointer segment.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Every string inside a JSON value, with its JSON pointer.
pub(crate) fn strings_with_pointers(
    value: &Value,
    pointer: String,
    out: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(s) => out.push((pointer, s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                strings_with_pointers(v, format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                strings_with_pointers(v, format!("{pointer}/{}", escape(k)), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_infinity_are_reported_not_turned_into_null() {
        let table: toml::Table =
            toml::from_str("a = nan\n[b]\nc = [1.5, inf]\n\"x/y\" = -inf\n").unwrap();
        let mut bad = Vec::new();
        let json = toml_to_json(&toml::Value::Table(table), "", &mut bad);
        assert_eq!(bad, ["/a", "/b/c/1", "/b/x~1y"]);
        assert_eq!(json["b"]["c"][0], 1.5);
    }
}
