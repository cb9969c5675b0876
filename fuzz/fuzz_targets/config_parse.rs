//! The config loader: any text, with any `${NAME}` expansions, gives a
//! config or a list of problems, never a panic.

#![no_main]

use chorus::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Some variables are set, some are not; values may hold TOML syntax.
    let env = |name: &str| match name.len() % 3 {
        0 => None,
        1 => Some(format!("value-of-{name}")),
        _ => Some("\"]} ${X} \\".to_owned()),
    };
    if let Err(error) = Config::parse(text, "fuzz.toml", env) {
        assert!(!error.problems.is_empty(), "an error with no problem");
        // Rendering every problem must not panic either.
        let _ = error.to_string();
    }
});
