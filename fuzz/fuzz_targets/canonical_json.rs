//! The key canonicalizer: never panics, and whatever it returns is JSON,
//! canonicalizes to itself, and means what the input means (ignored
//! top-level fields removed).
//!
//! Input: the body; or names to ignore, comma-separated, then a NUL byte,
//! then the body (JSON never holds a raw NUL), so that seeds are plain files.

#![no_main]

use chorus::coalesce::canonical::canonical_json;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (ignore, body) = match data.iter().position(|&byte| byte == 0) {
        Some(nul) => {
            let names = String::from_utf8_lossy(&data[..nul]);
            let names: Vec<String> = names.split(',').map(str::to_owned).collect();
            (names, &data[nul + 1..])
        }
        None => (Vec::new(), data),
    };
    let Some(canonical) = canonical_json(body, &ignore) else {
        return;
    };
    // JSON by the grammar: numbers are kept as written, so one too large
    // for an f64 (`1e999`) is still JSON.
    if let Err(error) = serde_json::from_slice::<IgnoredAny>(&canonical) {
        panic!("canonical form is not JSON ({error}): {canonical:?}");
    }
    assert_eq!(
        canonical_json(&canonical, &ignore).as_deref(),
        Some(&canonical[..]),
        "not a fixed point"
    );
    // Same meaning, wherever serde_json can represent the values.
    if let Ok(mut original) = serde_json::from_slice::<Value>(body) {
        if let Value::Object(fields) = &mut original {
            for name in &ignore {
                fields.remove(name);
            }
        }
        let parsed: Value =
            serde_json::from_slice(&canonical).expect("its input parsed, so does it");
        assert_eq!(parsed, original, "the canonical form means something else");
    }
});
