//! Problems in a config file: what is reported ([`Problem`], [`ConfigError`]),
//! and the collector the loading steps report into.

use std::collections::BTreeSet;
use std::fmt;

use super::TlsFiles;

/// Every problem found in a config file, not just the first. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, grouped by section in file order: the top level (and
    /// syntax errors), then `server`, `admin`, `routes[0]`, `routes[1]`, ...
    pub problems: Vec<Problem>,
    /// The TLS files the config names whose keys were valid, for their own
    /// checks ([`crate::tls::check_files`]).
    pub tls_files: TlsFiles,
}

impl ConfigError {
    /// Adds problems found elsewhere (in the files the config names), each
    /// in its section.
    pub fn add(&mut self, more: Vec<Problem>) {
        self.problems.extend(more);
        self.problems
            .sort_by_key(|problem| section_order(&problem.key));
    }
}

impl fmt::Display for ConfigError {
    /// One problem per line, as `FILE: KEY: why`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One thing wrong with a config file. Displays as `FILE: KEY: why` (or
/// `FILE: why` when it concerns the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file, as it was named.
    pub file: String,
    /// Where in the file: a dotted key path such as `routes[0].upstream`, a
    /// `line L, column C` for a syntax error, or empty for the whole file.
    pub key: String,
    /// What is wrong, for a human; a single line.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// The problems found so far, and the keys whose values were already
/// reported and dropped (so that "is required" is not said about them too).
pub(super) struct Problems {
    file: String,
    list: Vec<Problem>,
    reported: BTreeSet<String>,
    /// The TLS files named by valid keys, whatever else is wrong.
    pub(super) tls_files: TlsFiles,
}

impl Problems {
    pub(super) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            list: Vec::new(),
            reported: BTreeSet::new(),
            tls_files: TlsFiles::default(),
        }
    }

    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let message: String = message.into();
        self.list.push(Problem {
            file: self.file.clone(),
            key: key.into(),
            message: message.replace(['\n', '\r'], " "),
        });
    }

    /// Records that the value at `key` was reported and removed.
    pub(super) fn dropped(&mut self, key: String) {
        self.reported.insert(key);
    }

    fn was_dropped(&self, key: &str) -> bool {
        self.reported.contains(key)
    }

    /// Reports a missing required key, unless its value was already reported.
    pub(super) fn required(&mut self, key: &str, message: &str) {
        if !self.was_dropped(key) {
            self.push(key, message);
        }
    }

    /// Passes `value` on; when it is absent, first reports the key as
    /// required (see [`Problems::required`]).
    pub(super) fn require<T>(&mut self, key: &str, value: Option<T>, message: &str) -> Option<T> {
        if value.is_none() {
            self.required(key, message);
        }
        value
    }

    /// A TOML syntax error, under the key it is at where the text tells
    /// (`server.listen`, `routes[1].coalesce`), else under its position.
    pub(super) fn syntax(&mut self, text: &str, err: &toml::de::Error) {
        let Some(span) = err.span() else {
            return self.push("", format!("invalid TOML: {}", err.message()));
        };
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |tail| tail.chars().count())
            + 1;
        let position = format!("line {line}, column {column}");
        match key_at(before, text) {
            Some(key) => self.push(
                &key,
                format!("invalid TOML at {position}: {}", err.message()),
            ),
            None => self.push(&position, format!("invalid TOML: {}", err.message())),
        }
    }

    /// `value` when nothing was reported, else every problem.
    pub(super) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(value) if self.list.is_empty() => Ok(value),
            Some(_) | None => Err(self.into_error()),
        }
    }

    /// The problems, grouped by section in file order (the top level, then
    /// `server`, `admin`, `routes[0]`, `routes[1]`, ...).
    pub(super) fn into_error(mut self) -> ConfigError {
        if self.list.is_empty() {
            // Only reachable through a bug in this module; still no panic.
            self.push("", "the configuration is incomplete");
        }
        self.list.sort_by_key(|problem| section_order(&problem.key));
        ConfigError {
            problems: self.list,
            tls_files: self.tls_files,
        }
    }
}

/// Where the section a key belongs to comes in the file, for sorting.
fn section_order(key: &str) -> (u8, usize) {
    let section = key.split(['.', '[']).next().unwrap_or_default();
    match section {
        "server" => (1, 0),
        "admin" => (2, 0),
        "routes" => {
            let index = key
                .strip_prefix("routes[")
                .and_then(|rest| rest.split(']').next())
                .and_then(|index| index.parse().ok())
                .unwrap_or(0);
            (3, index)
        }
        _ => (0, 0),
    }
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub(super) fn join_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The key, as problems name keys, of the line `before` ends in: the table
/// headers above it (`[[routes]]` counted, so the second is `routes[1]`),
/// and the line's own key or header. None where the line is neither (inside
/// a multi-line value, say).
fn key_at(before: &str, text: &str) -> Option<String> {
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let mut arrays: Vec<(String, usize)> = Vec::new();
    let mut table = String::new();
    for line in before[..line_start].lines() {
        if let Some(header) = table_header(line, &mut arrays) {
            table = header;
        }
    }
    let line = text[line_start..].lines().next().unwrap_or_default();
    if let Some(header) = table_header(line, &mut arrays) {
        return Some(header);
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches(['"', '\'']);
    let plain = |byte: u8| byte.is_ascii_alphanumeric() || b"_-.".contains(&byte);
    if key.is_empty() || !key.bytes().all(plain) {
        return None;
    }
    Some(match table.as_str() {
        "" => key.to_owned(),
        table => format!("{table}.{key}"),
    })
}

/// The key of a table header line (`[server]`, `[[routes]]`,
/// `[routes.coalesce]`), arrays of tables indexed by their count so far.
fn table_header(line: &str, arrays: &mut Vec<(String, usize)>) -> Option<String> {
    let line = line.trim();
    let (name, is_array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.split("]]").next()?, true),
        None => (line.strip_prefix('[')?.split(']').next()?, false),
    };
    let name = name.trim();
    if is_array {
        match arrays.iter_mut().find(|(array, _)| array == name) {
            Some((_, count)) => *count += 1,
            None => arrays.push((name.to_owned(), 1)),
        }
    }
    let mut key = String::new();
    let mut prefix = String::new();
    for part in name.split('.') {
        let part = part.trim();
        prefix = if prefix.is_empty() {
            part.to_owned()
        } else {
            format!("{prefix}.{part}")
        };
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(part);
        if let Some((_, count)) = arrays.iter().find(|(array, _)| *array == prefix) {
            key.push_str(&format!("[{}]", count - 1));
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn several_problems_are_all_reported() {
        let text = r#"
            [server]
            listen = "nowhere"
            [[routes]]
            name = "llm"
            upstream = "http://127.0.0.1:9000"
            idle_timeout = "soon"
            [[routes]]
            name = "llm"
            path_prefix = "/b"
            upstream = "http://127.0.0.1:9001"
        "#;
        let err = parse(text).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(err.problems.len(), 3, "{err}");
        for key in ["server.listen", "routes[0].idle_timeout", "routes[1].name"] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(err.to_string().lines().count(), 3);
        assert_eq!(
            keys,
            ["server.listen", "routes[0].idle_timeout", "routes[1].name"]
        );
    }

    #[test]
    fn structural_and_semantic_problems_are_reported_together() {
        let text = r#"
            bogus = true
            [server]
            listen = "nowhere"
            bogus = 1
            max_connections = "many"
            [[routes]]
            name = "a"
            upstream = "ftp://x"
            [routes.coalesce]
            methods = ["GET", "NOT A METHOD"]
            key_headers = ["bad header"]
            bogus = 2
        "#;
        let err = parse(text).unwrap_err();
        let mut keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "bogus",
                "routes[0].coalesce.bogus",
                "routes[0].coalesce.key_headers[0]",
                "routes[0].coalesce.methods[1]",
                "routes[0].upstream",
                "server.bogus",
                "server.listen",
                "server.max_connections",
            ],
            "{err}"
        );
    }

    #[test]
    fn syntax_error_is_one_problem_with_its_key_and_position() {
        let found = problems("[server]\nlisten = \"0.0.0.0:8080\"\nlisten = \"again\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "server.listen");
        assert!(found[0].message.contains("line 3, column 1"), "{found:?}");
        assert!(found[0].message.contains("duplicate key"), "{found:?}");
        assert!(!found[0].message.contains('\n'));
        let routes = "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\n\
                      [routes.coalesce]\nmax_replay_bytes = 99999999999999999999\n";
        let found = problems(routes);
        assert_eq!(
            found[0].key, "routes[1].coalesce.max_replay_bytes",
            "{found:?}"
        );
        let found = problems("[server]\n[admin]\n[server]\n");
        assert_eq!(found[0].key, "server", "{found:?}");
        let found = problems("[server\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "server", "{found:?}");
        assert!(found[0].message.contains("line 1, column"), "{found:?}");
        let found = problems("a = \"\"\"\n= nonsense\n");
        assert!(found[0].key.starts_with("line "), "{found:?}");
    }

    #[test]
    fn problems_display_as_file_key_why() {
        let problem = Problem {
            file: "config/chorus.toml".to_owned(),
            key: "routes[0].upstream".to_owned(),
            message: "must be an http:// or https:// URL, got \"ftp://x\"".to_owned(),
        };
        assert_eq!(
            problem.to_string(),
            "config/chorus.toml: routes[0].upstream: must be an http:// or https:// URL, got \"ftp://x\""
        );
    }
}
