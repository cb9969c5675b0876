use super::*;

#[test]
fn too_deep_json_falls_back_to_raw_bytes() {
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert_eq!(canonical_json(deep.as_bytes(), &[]), None);
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert_eq!(
        canonical_json(ok.as_bytes(), &[]).as_deref(),
        Some(ok.as_bytes())
    );
    let huge = "[".repeat(1 << 20);
    assert_eq!(canonical_json(huge.as_bytes(), &[]), None);
}

#[test]
fn canonical_form_is_idempotent_and_preserves_the_document() {
    let ignore = ["user".to_owned(), "metadata".to_owned()];
    let docs = [
        "{}",
        "[]",
        " 0 ",
        r#""\u00e9t\u00E9 \"quoted\" \\ \/ \b\f\n\r\t \u001f""#,
        "-12.5e-3",
        r#"{"user":"u","z":[1,{"b":2,"a":[true,false,null]}],"a":"x"}"#,
        r#"{"model":"gpt","messages":[{"role":"system","content":"Be brief.\n"},
           {"role":"user","content":"Caf\u00e9 😀 \ud83d\ude00"}],
           "stream":true,"temperature":0.70,"max_tokens":1e3,"metadata":{"user":1}}"#,
        r#"{"é":1,"e":2,"Z":3,"":4,"\u0000":5}"#,
        r#"[{"user":1},{"b":{},"a":[]}]"#,
    ];
    for doc in docs {
        let once = canonical_json(doc.as_bytes(), &ignore).expect("canonical");
        let twice = canonical_json(&once, &ignore).expect("canonical twice");
        assert_eq!(once, twice, "not idempotent: {doc}");

        let mut expected: serde_json::Value = serde_json::from_str(doc).expect("valid JSON");
        if let Some(object) = expected.as_object_mut() {
            for field in &ignore {
                object.remove(field);
            }
        }
        let actual: serde_json::Value = serde_json::from_slice(&once).expect("canonical JSON");
        assert_eq!(actual, expected, "changed meaning: {doc}");
    }
}

#[test]
fn canonical_form_sorts_by_unescaped_bytes() {
    let out = canonical_json(r#"{"é":1,"e":2,"Z":3,"\u0041":4}"#.as_bytes(), &[]);
    assert_eq!(
        out.as_deref(),
        Some(r#"{"A":4,"Z":3,"e":2,"é":1}"#.as_bytes())
    );
}

#[test]
fn json_is_decided_by_the_grammar_as_serde_json_decides_it() {
    let inputs = [
        "0",
        "-0",
        "1.5",
        "1e5",
        "1E+5",
        "-1.25e-3",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "--1",
        "0x10",
        "true",
        "tru",
        "truee",
        "null",
        "nul",
        "false ",
        " [] ",
        "[1,]",
        "[,1]",
        "[1 2]",
        "{}",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{a:1}",
        "{\"a\":1}x",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\u12G4\"",
        "\"tab\there\"",
        "\"\\ud83d\\ude00\"",
        "\"\\u00e9\\/\\b\\f\\n\\r\\t\"",
        "[1]]",
        "[[1]",
        "{\"a\":[1,{\"b\":null}]}",
        "\"\u{7f}\"",
        "\u{feff}{}",
        "",
    ];
    for input in inputs {
        let serde = serde_json::from_str::<serde::de::IgnoredAny>(input).is_ok();
        let ours = canonical_json(input.as_bytes(), &[]).is_some();
        assert_eq!(ours, serde, "{input:?}: serde_json says {serde}");
    }
}

#[test]
fn escapes_are_rewritten_as_serde_json_writes_them() {
    let body = r#"{"s":"\u0041\/\u00e9\ud83d\ude00\u001f\u2028\"\\\n","t":["\t"]}"#;
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    let expected = serde_json::to_string(&value).unwrap();
    assert_eq!(
        canonical_json(body.as_bytes(), &[]).unwrap(),
        expected.as_bytes()
    );
}
