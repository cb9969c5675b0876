//! The raw layer: what serde reads, before validation. Each section is
//! deserialized on its own into structs with `deny_unknown_fields`; a serde
//! error is reported under its full key, and the section is read again
//! without the offending key, so that every structural problem is reported.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::problem::{Problems, join_key};

/// The document split into its sections. Every field of the raw structs is
/// optional: defaults and "is required" are decided in `validate`.
pub(super) struct RawConfig {
    pub(super) server: Option<RawServer>,
    pub(super) admin: Option<RawAdmin>,
    /// Each `[[routes]]` element that deserialized, with its index in the file.
    pub(super) routes: Vec<(usize, RawRoute)>,
    /// Whether the file has any `[[routes]]` element at all.
    pub(super) routes_given: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) max_request_body_bytes: Option<u64>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_read_timeout: Option<RawDuration>,
    pub(super) request_body_timeout: Option<RawDuration>,
    pub(super) send_timeout: Option<RawDuration>,
    pub(super) shutdown_grace: Option<RawDuration>,
    pub(super) http2_max_concurrent_streams: Option<u32>,
    pub(super) max_buffered_bytes: Option<u64>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) upstream_ca_file: Option<String>,
    pub(super) upstream_client_cert: Option<String>,
    pub(super) upstream_client_key: Option<String>,
    pub(super) connect_timeout: Option<RawDuration>,
    pub(super) first_byte_timeout: Option<RawDuration>,
    pub(super) idle_timeout: Option<RawDuration>,
    pub(super) upstream_headers: Option<BTreeMap<String, String>>,
    pub(super) websocket: Option<bool>,
    pub(super) coalesce: Option<RawCoalesce>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCoalesce {
    pub(super) enabled: Option<bool>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) key_headers: Option<Vec<String>>,
    pub(super) json_ignore_fields: Option<Vec<String>>,
    pub(super) linger: Option<RawDuration>,
    pub(super) cancel_grace: Option<RawDuration>,
    pub(super) max_replay_bytes: Option<u64>,
    pub(super) max_subscribers: Option<usize>,
}

/// A duration as written; parsed in `validate` so a bad one can be quoted.
#[derive(Debug)]
pub(super) struct RawDuration(pub(super) String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"30s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(text.to_owned()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl RawConfig {
    /// Deserializes each section on its own, so that a mistake in one does
    /// not hide the others.
    pub(super) fn from_table(doc: toml::Table, problems: &mut Problems) -> Self {
        let mut raw = RawConfig {
            server: None,
            admin: None,
            routes: Vec::new(),
            routes_given: false,
        };
        for (name, value) in doc {
            match name.as_str() {
                "server" => raw.server = table_section(value, "server", "[server]", problems),
                "admin" => raw.admin = table_section(value, "admin", "[admin]", problems),
                "routes" => match value {
                    toml::Value::Array(items) => {
                        raw.routes_given = !items.is_empty();
                        for (i, item) in items.into_iter().enumerate() {
                            let key = format!("routes[{i}]");
                            if let Some(route) = table_section(item, &key, "[[routes]]", problems) {
                                raw.routes.push((i, route));
                            }
                        }
                    }
                    other => {
                        raw.routes_given = true;
                        problems.push(
                            "routes",
                            format!(
                                "must be an array of tables written [[routes]], got {}",
                                other.type_str()
                            ),
                        );
                    }
                },
                _ => problems.push(
                    join_key("", &name),
                    "unknown key; the top level has only [server], [admin] and [[routes]]",
                ),
            }
        }
        raw
    }
}

/// Deserializes one table section. Each serde error (unknown key, wrong type)
/// is reported with its full key, the offending key is removed and the rest
/// deserialized again, so every structural problem is reported.
fn table_section<T: DeserializeOwned>(
    value: toml::Value,
    key: &str,
    written: &str,
    problems: &mut Problems,
) -> Option<T> {
    let mut value = match value {
        toml::Value::Table(table) => toml::Value::Table(table),
        other => {
            problems.push(
                key,
                format!(
                    "must be a table written {written}, got {}",
                    other.type_str()
                ),
            );
            problems.dropped(key.to_owned());
            return None;
        }
    };
    loop {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(section) => return Some(section),
            Err(err) => {
                let segments: Vec<_> = err.path().iter().cloned().collect();
                problems.push(
                    segments_key(key, &segments),
                    humanize_serde(err.inner().message()),
                );
                // Drop the innermost key holding the bad value and try again.
                let last_key = segments
                    .iter()
                    .rposition(|s| matches!(s, serde_path_to_error::Segment::Map { .. }))?;
                let holder = &segments[..=last_key];
                if !remove_at(&mut value, holder) {
                    return None;
                }
                problems.dropped(segments_key(key, holder));
            }
        }
    }
}

/// The dotted key of a serde path below the section `prefix`.
fn segments_key(prefix: &str, segments: &[serde_path_to_error::Segment]) -> String {
    let mut key = prefix.to_owned();
    for segment in segments {
        match segment {
            serde_path_to_error::Segment::Map { key: name } => key = join_key(&key, name),
            serde_path_to_error::Segment::Seq { index } => key = format!("{key}[{index}]"),
            serde_path_to_error::Segment::Enum { variant } => key = join_key(&key, variant),
            serde_path_to_error::Segment::Unknown => key = join_key(&key, "?"),
        }
    }
    key
}

/// Removes the value at `path` (whose last segment is a map key).
fn remove_at(value: &mut toml::Value, path: &[serde_path_to_error::Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        let next = match (segment, current) {
            (serde_path_to_error::Segment::Map { key }, toml::Value::Table(table)) => {
                table.get_mut(key)
            }
            (serde_path_to_error::Segment::Seq { index }, toml::Value::Array(items)) => {
                items.get_mut(*index)
            }
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match (last, current) {
        (serde_path_to_error::Segment::Map { key }, toml::Value::Table(table)) => {
            table.remove(key).is_some()
        }
        _ => false,
    }
}

/// Serde's wording, in the words of a TOML file.
fn humanize_serde(message: &str) -> String {
    let message = message
        .replacen("unknown field", "unknown key", 1)
        .replacen("expected a map", "expected a table", 1)
        .replacen("expected a sequence", "expected an array", 1)
        // Every integer key is a count or a size greater than 0.
        .replacen(
            "expected u32",
            "expected an integer from 1 to 4294967295",
            1,
        )
        .replacen("expected u64", "expected an integer greater than 0", 1)
        .replacen("expected usize", "expected an integer greater than 0", 1);
    match message.find("expected struct Raw") {
        Some(at) => format!("{}expected a table", &message[..at]),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn wrong_types_name_the_full_key() {
        let text = format!(
            "{MINIMAL}\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"http://h\"\n\
             [routes.coalesce]\nlinger = 5"
        );
        let line = rejects(&text, "routes[1].coalesce.linger");
        assert!(line.contains("duration"), "{line}");
        let line = rejects(
            &server_with("max_connections = -1"),
            "server.max_connections",
        );
        assert!(line.contains("-1"), "{line}");
        rejects(
            &server_with("http2_max_concurrent_streams = 5000000000"),
            "server.http2_max_concurrent_streams",
        );
        rejects(
            &MINIMAL.replace("\"127.0.0.1:8080\"", "8080"),
            "server.listen",
        );
        let line = rejects(&route_with("coalesce = 3"), "routes[0].coalesce");
        assert!(line.contains("expected a table"), "{line}");
        rejects(
            &route_with("[routes.coalesce]\nmethods = [\"GET\", 2]"),
            "routes[0].coalesce.methods[1]",
        );
        rejects(
            &route_with("[routes.upstream_headers]\nx-n = 1"),
            "routes[0].upstream_headers.x-n",
        );
        let line = rejects(
            &route_with("upstream_headers = [\"authorization\"]"),
            "routes[0].upstream_headers",
        );
        assert!(line.contains("expected a table"), "{line}");
        let line = rejects(
            "server = 1\n[[routes]]\nname = \"llm\"\nupstream = \"http://h\"",
            "server",
        );
        assert!(line.contains("must be a table"), "{line}");
        rejects(
            "[[routes]]\nname = \"llm\"\nupstream = \"http://h\"\n[server]\nlisten = \"127.0.0.1:1\"\ntls = \"yes\"",
            "server.tls",
        );
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        let line = rejects(&format!("bogus = 1\n{MINIMAL}"), "bogus");
        assert!(line.contains("unknown key"), "{line}");
        let line = rejects(&server_with("bogus = 1"), "server.bogus");
        assert!(
            line.contains("unknown key") && line.contains("listen"),
            "{line}"
        );
        rejects(&format!("[admin]\nbogus = 1\n{MINIMAL}"), "admin.bogus");
        rejects(&route_with("bogus = 1"), "routes[0].bogus");
        rejects(
            &route_with("[routes.coalesce]\nbogus = 1"),
            "routes[0].coalesce.bogus",
        );
        let cert = temp_file("unknown-cert.pem");
        let tls = format!("[server.tls]\ncert = {cert:?}\nkey = {cert:?}\nbogus = 1");
        rejects(&format!("{MINIMAL}\n{tls}"), "server.tls.bogus");
        let _ = std::fs::remove_file(cert);
        rejects(&format!("[\"a.b\"]\n{MINIMAL}"), "\"a.b\"");
    }
}
