//! The project's service launchers (`scripts/local-aws/start`, `scripts/local-postgres/start`)
//! print `export KEY=VALUE` lines, quoted with bash's `printf %q`; this runs one and reads them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Runs `script` with `args` and returns the variables it exports. Panics, with the script's
/// stderr, if it fails: a test that needs the service must fail, never skip.
pub(crate) fn start(script: &Path, args: &[String], what: &str) -> BTreeMap<String, String> {
    let out = Command::new(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{what} did not start ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(key, value)| (key.to_owned(), unquote(value)))
        .collect()
}

/// Undoes `printf %q` quoting: `'...'` or `"..."` wrappers, or backslash escapes.
fn unquote(value: &str) -> String {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.replace("'\\''", "'");
    }
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return inner.to_owned();
    }
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unquote;

    #[test]
    fn printf_q_quoting_is_undone() {
        assert_eq!(unquote("http://127.0.0.1:4566"), "http://127.0.0.1:4566");
        assert_eq!(unquote(r"/tmp/a\ b"), "/tmp/a b");
        assert_eq!(unquote("'it'\\''s'"), "it's");
    }
}
