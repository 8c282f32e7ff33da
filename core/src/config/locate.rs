//! Error locations: where a key stands in the text (for checks made after parsing, which
//! serde cannot place), serde_yaml errors turned into ours at the offending key, and the
//! "did you mean" hint for unknown keys.

use super::ConfigError;

/// Finds where a key stands in the text, for errors found after parsing (cross-field
/// checks), which serde cannot locate.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl Locator<'_> {
    /// An error at the `skip`-th line (0-based) that has `key:` followed by `value`
    /// (any value when `value` is empty); unlocated when no such line exists.
    pub(super) fn key(&self, path: &str, key: &str, value: &str, skip: usize, message: &str) -> ConfigError {
        let found = self
            .text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                let col = line.find(&format!("{key}:"))?;
                let rest = &line[col + key.len() + 1..];
                (value.is_empty() || rest.contains(value)).then_some((i + 1, col + 1))
            })
            .nth(skip);
        match found {
            Some((line, column)) => ConfigError::Invalid {
                file: self.origin.into(),
                line,
                column,
                path: path.into(),
                message: message.into(),
            },
            None => ConfigError::Unlocated { file: self.origin.into(), path: path.into(), message: message.into() },
        }
    }
}

impl Locator<'_> {
    /// Turns a serde_yaml error (with the full key path tracked by serde_path_to_error)
    /// into ours. serde_yaml places a value error at the start of the enclosing map, so
    /// the position is moved forward to the offending key itself.
    pub(super) fn yaml(&self, e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
        let path = e.path().to_string();
        let inner = e.inner();
        let mut message = inner.to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        // serde_yaml prefixes its own (shorter) path: drop it, ours is complete.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.contains(' ') && path.starts_with(prefix.trim_start_matches('.')) {
                message = rest.to_owned();
            }
        }
        if let Some(hint) = did_you_mean(&message) {
            message = format!("{message} (did you mean `{hint}`?)");
        }
        let Some(loc) = inner.location() else {
            return ConfigError::Unlocated { file: self.origin.into(), path, message };
        };
        let leaf = path.rsplit('.').next().filter(|k| !k.ends_with(']') && !k.is_empty());
        let (line, column) =
            leaf.and_then(|k| self.find_key_after(k, loc.line(), loc.column())).unwrap_or((loc.line(), loc.column()));
        ConfigError::Invalid { file: self.origin.into(), line, column, path, message }
    }

    /// The first `key:` at or after (line, column), 1-based.
    fn find_key_after(&self, key: &str, line: usize, column: usize) -> Option<(usize, usize)> {
        let needle = format!("{key}:");
        self.text.lines().enumerate().skip(line.saturating_sub(1)).find_map(|(i, text)| {
            let from = if i + 1 == line { column.saturating_sub(1).min(text.len()) } else { 0 };
            let at = text.get(from..)?.find(&needle)? + from;
            let boundary = at == 0 || !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            boundary.then_some((i + 1, at + 1))
        })
    }
}

/// For serde's "unknown field `x`, expected `a`, `b`" finds the expected name closest to
/// `x` (edit distance ≤ 2).
pub(super) fn did_you_mean(message: &str) -> Option<String> {
    if !message.starts_with("unknown field") && !message.starts_with("unknown variant") {
        return None;
    }
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    quoted
        .map(|c| (edit_distance(unknown, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
