//! Where a value of a step's `config` is written in the plan file, for error messages.

use std::ops::Range;

/// The span of the value at JSON `pointer` inside step `index`'s `config` table, or of the
/// closest enclosing value that exists (a missing key is reported at its table).
pub(crate) fn config_span(
    doc: &toml::de::DeTable<'_>,
    index: usize,
    pointer: &str,
) -> Option<Range<usize>> {
    use toml::de::DeValue;
    let steps = doc.get("steps")?;
    let step = steps.get_ref().get(index)?;
    let mut node = step.get_ref().get("config")?;
    for segment in pointer.split('/').skip(1) {
        let key = segment.replace("~1", "/").replace("~0", "~");
        let next = match node.get_ref() {
            DeValue::Array(_) => key
                .parse::<usize>()
                .ok()
                .and_then(|i| node.get_ref().get(i)),
            _ => node.get_ref().get(key.as_str()),
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    Some(node.span())
}
