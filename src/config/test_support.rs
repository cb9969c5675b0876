//! What the config tests share: a minimal valid file, parsing with no
//! environment, and assertions on the problems reported.

use std::path::PathBuf;

use super::{Config, ConfigError, Problem};

pub(super) const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:8080"

        [[routes]]
        name = "llm"
        upstream = "http://127.0.0.1:9000"
    "#;

pub(super) fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", no_env)
}

pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(err) => err.problems,
    }
}

/// Asserts the text is rejected with exactly one problem, at `key`, and
/// returns its displayed line.
pub(super) fn rejects(text: &str, key: &str) -> String {
    let found = problems(text);
    assert_eq!(
        found.len(),
        1,
        "expected one problem at {key}, got {found:#?}"
    );
    assert_eq!(found[0].key, key, "{found:#?}");
    let line = found[0].to_string();
    assert!(line.contains(key), "{line}");
    line
}

/// MINIMAL with `extra` lines added to the single route.
pub(super) fn route_with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

/// MINIMAL with `extra` lines added to [server].
pub(super) fn server_with(extra: &str) -> String {
    MINIMAL.replacen(
        "listen = \"127.0.0.1:8080\"",
        &format!("listen = \"127.0.0.1:8080\"\n{extra}"),
        1,
    )
}

/// A file that exists, unique to this test.
pub(super) fn temp_file(name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("chorus-config-test-{}-{name}", std::process::id()));
    std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n").unwrap();
    path
}
