//! `${NAME}` expansion over the parsed document: every string value, inside
//! arrays and sub-tables too, never keys (comments are gone once parsed).

use super::problem::{Problems, join_key};

/// Expands `${NAME}` in every string under `table`. A value that cannot be
/// expanded is reported and removed, so that nothing downstream trips on it.
pub(super) fn expand_table(
    table: &mut toml::Table,
    path: &str,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    let mut broken = Vec::new();
    for (name, value) in table.iter_mut() {
        let key = join_key(path, name);
        if !expand_value(value, &key, env, problems) {
            broken.push(name.clone());
            problems.dropped(key);
        }
    }
    for name in broken {
        table.remove(&name);
    }
}

/// Returns false when a string in `value` (outside sub-tables, which handle
/// their own) could not be expanded.
fn expand_value(
    value: &mut toml::Value,
    key: &str,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> bool {
    match value {
        toml::Value::String(text) => match expand_str(text, env) {
            Ok(expanded) => {
                *text = expanded;
                true
            }
            Err(messages) => {
                for message in messages {
                    problems.push(key, message);
                }
                false
            }
        },
        toml::Value::Array(items) => {
            let mut ok = true;
            for (i, item) in items.iter_mut().enumerate() {
                let item_key = format!("{key}[{i}]");
                if let toml::Value::Table(table) = item {
                    expand_table(table, &item_key, env, problems);
                } else {
                    ok &= expand_value(item, &item_key, env, problems);
                }
            }
            ok
        }
        toml::Value::Table(table) => {
            expand_table(table, key, env, problems);
            true
        }
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => true,
    }
}

/// Replaces `${NAME}` with `env(NAME)` and `$${` with `${`.
fn expand_str(text: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let tail = &rest[dollar..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                errors.push(
                    "unterminated \"${\" (write \"${NAME}\", or \"$${\" for a literal \"${\")"
                        .to_owned(),
                );
                rest = "";
                break;
            };
            let name = &after[..end];
            if !is_env_name(name) {
                errors.push(format!(
                    "\"${{{name}}}\" is not a valid environment variable reference \
                     (letters, digits and _, not starting with a digit)"
                ));
            } else if let Some(value) = env(name) {
                out.push_str(&value);
            } else {
                errors.push(format!("environment variable {name} is not set"));
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::*;

    #[test]
    fn env_expansion_in_nested_places() {
        let text = r#"
            [server]
            listen = "${HOST}:${PORT}"
            [[routes]]
            name = "r-${PORT}"
            upstream = "${UPSTREAM}"
            [routes.upstream_headers]
            authorization = "Bearer ${KEY}"
            [routes.coalesce]
            key_headers = ["authorization", "${TENANT_HEADER}"]
            json_ignore_fields = ["literal $${NOT_A_VAR}", "cost: $5"]
        "#;
        let env = |name: &str| {
            Some(
                match name {
                    "HOST" => "127.0.0.1",
                    "PORT" => "8081",
                    "UPSTREAM" => "http://10.0.0.1:7000",
                    "KEY" => "sk-1",
                    "TENANT_HEADER" => "X-Tenant",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let config = Config::parse(text, "test.toml", env).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8081".parse().unwrap());
        let route = &config.routes[0];
        assert_eq!(route.name, "r-8081");
        assert_eq!(route.upstream, "http://10.0.0.1:7000/");
        assert_eq!(route.upstream_headers[0].1.as_bytes(), b"Bearer sk-1");
        assert_eq!(route.coalesce.key_headers[1].as_str(), "x-tenant");
        assert_eq!(
            route.coalesce.json_ignore_fields,
            ["literal ${NOT_A_VAR}", "cost: $5"]
        );
    }

    #[test]
    fn env_expansion_leaves_comments_alone() {
        let text = format!("# token: ${{UNSET}}\n{MINIMAL}");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn missing_env_var_is_reported_once() {
        let line = rejects(
            &route_with("[routes.upstream_headers]\nauthorization = \"Bearer ${OPENAI_API_KEY}\""),
            "routes[0].upstream_headers.authorization",
        );
        assert!(line.contains("OPENAI_API_KEY"), "{line}");
        assert!(line.contains("not set"), "{line}");

        // A required value that failed to expand is not also "required".
        let line = rejects(
            &MINIMAL.replace("http://127.0.0.1:9000", "${UP}"),
            "routes[0].upstream",
        );
        assert!(line.contains("UP"), "{line}");

        let line = rejects(
            &route_with("[routes.coalesce]\nmethods = [\"GET\", \"${M}\"]"),
            "routes[0].coalesce.methods[1]",
        );
        assert!(line.contains("environment variable M"), "{line}");
    }

    #[test]
    fn unterminated_and_invalid_references_are_reported() {
        let line = rejects(
            &MINIMAL.replace("\"llm\"", "\"llm-${OOPS\""),
            "routes[0].name",
        );
        assert!(line.contains("unterminated"), "{line}");
        let line = rejects(&MINIMAL.replace("\"llm\"", "\"${1X}\""), "routes[0].name");
        assert!(line.contains("not a valid environment variable"), "{line}");
    }
}
