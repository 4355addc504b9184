//! Errors that point at a place in a plan file: `plan.toml:12:5: message`, the line, a caret.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a plan, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The plan file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// The offending line and a caret under the span, ready to print.
    pub snippet: Option<String>,
}

impl Located {
    /// A problem at byte range `span` of `source`, or at the file as a whole when `span` is None.
    pub fn new(file: &Path, source: &str, span: Option<Range<usize>>, message: String) -> Self {
        let Some(span) = span else {
            return Located {
                file: file.to_owned(),
                line: None,
                column: None,
                message,
                snippet: None,
            };
        };
        let start = span.start.min(source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let line_no = source[..start].matches('\n').count() + 1;
        let column = source[line_start..start].chars().count() + 1;
        let text = &source[line_start..line_end];
        let width = source[start..span.end.clamp(start, line_end)]
            .chars()
            .count()
            .max(1);
        let gutter = line_no.to_string().len();
        let snippet = format!(
            "{blank:gutter$} |\n{line_no} | {text}\n{blank:gutter$} | {pad}{carets}",
            blank = "",
            pad = " ".repeat(column - 1),
            carets = "^".repeat(width),
        );
        Located {
            file: file.to_owned(),
            line: Some(line_no),
            column: Some(column),
            message,
            snippet: Some(snippet),
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        Ok(())
    }
}

/// Every problem found in a plan (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanError {
    /// The problems, in file order.
    pub problems: Vec<Located>,
}

impl PlanError {
    pub(crate) fn one(problem: Located) -> Self {
        PlanError {
            problems: vec![problem],
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Problems found while validating one plan file, collected so that all are reported at once.
pub(crate) struct Problems<'a> {
    file: &'a Path,
    source: &'a str,
    found: Vec<(usize, Located)>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(file: &'a Path, source: &'a str) -> Self {
        Problems {
            file,
            source,
            found: Vec::new(),
        }
    }

    /// A problem at byte range `span`, or at the file as a whole.
    pub(crate) fn add(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let at = span.as_ref().map_or(0, |s| s.start);
        self.found.push((
            at,
            Located::new(self.file, self.source, span, message.into()),
        ));
    }

    /// `Ok` if nothing was found, else every problem in file order.
    pub(crate) fn finish(mut self) -> Result<(), PlanError> {
        if self.found.is_empty() {
            return Ok(());
        }
        self.found.sort_by_key(|(at, _)| *at);
        Err(PlanError {
            problems: self.found.into_iter().map(|(_, p)| p).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_line_and_column_with_a_caret() {
        let source = "a = 1\nbb = \"x\"\n";
        let at = source.find("\"x\"").unwrap();
        let located = Located::new(Path::new("p.toml"), source, Some(at..at + 3), "bad".into());
        assert_eq!((located.line, located.column), (Some(2), Some(6)));
        let text = located.to_string();
        assert!(text.starts_with("p.toml:2:6: bad"), "{text}");
        assert!(text.contains("2 | bb = \"x\"\n  |      ^^^"), "{text}");
    }
}
