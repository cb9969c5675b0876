//! Tests of the validation rules, each through [`Config::parse`]: the
//! message names the key.

use http::Method;

use crate::config::test_support::*;

#[test]
fn empty_admin_table_uses_default_listen() {
    let config = parse(&format!("[admin]\n{MINIMAL}")).unwrap();
    assert_eq!(
        config.admin.unwrap().listen,
        "127.0.0.1:9090".parse().unwrap()
    );
}

#[test]
fn methods_are_case_insensitive() {
    let config = parse(&route_with(
        "[routes.coalesce]\nmethods = [\"post\", \"get\", \"Propfind\"]",
    ))
    .unwrap();
    let methods = &config.routes[0].coalesce.methods;
    assert_eq!(methods[0], Method::POST);
    assert_eq!(methods[1], Method::GET);
    assert_eq!(methods[2].as_str(), "PROPFIND");
}

#[test]
fn header_names_are_lowercased() {
    let config = parse(&route_with(
        "[routes.upstream_headers]\nX-Api-Key = \"k\"\n\
         [routes.coalesce]\nkey_headers = [\"X-Tenant\", \"Cookie\"]",
    ))
    .unwrap();
    let route = &config.routes[0];
    assert_eq!(route.upstream_headers[0].0.as_str(), "x-api-key");
    let names: Vec<&str> = route
        .coalesce
        .key_headers
        .iter()
        .map(|h| h.as_str())
        .collect();
    assert_eq!(names, ["x-tenant", "cookie"]);
}

#[test]
fn upstream_header_values_are_not_printed() {
    let config = parse(&route_with(
        "[routes.upstream_headers]\nauthorization = \"Bearer sk-secret\"",
    ))
    .unwrap();
    let (_, value) = &config.routes[0].upstream_headers[0];
    assert!(value.is_sensitive());
    assert!(!format!("{config:?}").contains("sk-secret"));
}

#[test]
fn listen_is_required() {
    let line = rejects(
        &MINIMAL.replace("listen = \"127.0.0.1:8080\"", ""),
        "server.listen",
    );
    assert!(line.contains("required"), "{line}");
    let line = rejects(
        &MINIMAL
            .replace("[server]\n", "")
            .replace("listen = \"127.0.0.1:8080\"", ""),
        "server",
    );
    assert!(line.contains("[server]"), "{line}");
}

#[test]
fn admin_must_not_clash_with_server() {
    let line = rejects(
        &format!("[admin]\nlisten = \"0.0.0.0:8080\"\n{MINIMAL}"),
        "admin.listen",
    );
    assert!(line.contains("server.listen"), "{line}");
    // Port 0 picks a free port each time: no clash.
    let text = MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:0");
    assert!(parse(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}")).is_ok());
}

#[test]
fn upstream_is_required() {
    let line = rejects(
        &MINIMAL.replace("upstream = \"http://127.0.0.1:9000\"", ""),
        "routes[0].upstream",
    );
    assert!(line.contains("required"), "{line}");
}

#[test]
fn route_names_must_be_present_non_empty_and_unique() {
    rejects(&MINIMAL.replace("name = \"llm\"", ""), "routes[0].name");
    rejects(&MINIMAL.replace("\"llm\"", "\"\""), "routes[0].name");
    rejects(&MINIMAL.replace("\"llm\"", "\"  \""), "routes[0].name");
    let text = format!(
        "{MINIMAL}\n[[routes]]\nname = \"llm\"\npath_prefix = \"/v2\"\nupstream = \"http://h\""
    );
    let line = rejects(&text, "routes[1].name");
    assert!(
        line.contains("duplicate") && line.contains("routes[0]"),
        "{line}"
    );
}

#[test]
fn path_prefixes_must_start_with_slash_and_be_unique() {
    let line = rejects(&route_with("path_prefix = \"v1\""), "routes[0].path_prefix");
    assert!(line.contains("\"v1\""), "{line}");
    rejects(
        &route_with("path_prefix = \"/v1?x\""),
        "routes[0].path_prefix",
    );
    // Both default to "/".
    let text = format!("{MINIMAL}\n[[routes]]\nname = \"other\"\nupstream = \"http://h\"");
    let line = rejects(&text, "routes[1].path_prefix");
    assert!(line.contains("duplicate"), "{line}");
}

#[test]
fn at_least_one_route_is_required() {
    let line = rejects("[server]\nlisten = \"127.0.0.1:8080\"", "routes");
    assert!(
        line.contains("at least one [[routes]] is required"),
        "{line}"
    );
    rejects(
        "routes = []\n[server]\nlisten = \"127.0.0.1:8080\"",
        "routes",
    );
    rejects(
        "routes = 3\n[server]\nlisten = \"127.0.0.1:8080\"",
        "routes",
    );
}

#[test]
fn bad_methods_are_rejected() {
    let line = rejects(
        &route_with("[routes.coalesce]\nmethods = [\"GET\", \"P O S T\"]"),
        "routes[0].coalesce.methods[1]",
    );
    assert!(line.contains("\"P O S T\""), "{line}");
    rejects(
        &route_with("[routes.coalesce]\nmethods = [\"post\", \"POST\"]"),
        "routes[0].coalesce.methods[1]",
    );
    rejects(
        &route_with("[routes.coalesce]\nmethods = []"),
        "routes[0].coalesce.methods",
    );
    let off = route_with("[routes.coalesce]\nenabled = false\nmethods = []");
    assert!(parse(&off).is_ok());
}

#[test]
fn bad_key_headers_are_rejected() {
    rejects(
        &route_with("[routes.coalesce]\nkey_headers = [\"x-ok\", \"bad:name\"]"),
        "routes[0].coalesce.key_headers[1]",
    );
    rejects(
        &route_with("[routes.coalesce]\nkey_headers = [\"Cookie\", \"cookie\"]"),
        "routes[0].coalesce.key_headers[1]",
    );
    rejects(
        &route_with("[routes.coalesce]\njson_ignore_fields = [\"user\", \"user\"]"),
        "routes[0].coalesce.json_ignore_fields[1]",
    );
}

#[test]
fn bad_upstream_headers_are_rejected() {
    rejects(
        &route_with("[routes.upstream_headers]\n\"bad header\" = \"v\""),
        "routes[0].upstream_headers.\"bad header\"",
    );
    let line = rejects(
        &route_with("[routes.upstream_headers]\nx-key = \"sk-secret\\n\""),
        "routes[0].upstream_headers.x-key",
    );
    assert!(
        !line.contains("sk-secret"),
        "the value is never quoted: {line}"
    );
    let line = rejects(
        &route_with("[routes.upstream_headers]\nHost = \"example.com\""),
        "routes[0].upstream_headers.Host",
    );
    assert!(line.contains("managed by the gateway"), "{line}");
    rejects(
        &route_with("[routes.upstream_headers]\nX-A = \"1\"\nx-a = \"2\""),
        "routes[0].upstream_headers.x-a",
    );
}

#[test]
fn tls_needs_both_cert_and_key() {
    let cert = temp_file("pair-cert.pem");
    let line = rejects(
        &format!("{MINIMAL}\n[server.tls]\ncert = {cert:?}"),
        "server.tls.key",
    );
    assert!(line.contains("required"), "{line}");
    rejects(
        &format!("{MINIMAL}\n[server.tls]\nkey = {cert:?}"),
        "server.tls.cert",
    );
    let _ = std::fs::remove_file(cert);
}

#[test]
fn client_cert_and_key_go_together() {
    let cert = temp_file("client-pair.pem");
    let https = MINIMAL.replace("http://", "https://");
    let line = rejects(
        &format!("{https}\nupstream_client_cert = {cert:?}"),
        "routes[0].upstream_client_key",
    );
    assert!(line.contains("upstream_client_cert"), "{line}");
    rejects(
        &format!("{https}\nupstream_client_key = {cert:?}"),
        "routes[0].upstream_client_cert",
    );
    let both = format!("{https}\nupstream_client_cert = {cert:?}\nupstream_client_key = {cert:?}");
    assert!(parse(&both).is_ok());
    let _ = std::fs::remove_file(cert);
}

#[test]
fn upstream_tls_files_need_an_https_upstream() {
    let ca = temp_file("http-ca.pem");
    let line = rejects(
        &route_with(&format!("upstream_ca_file = {ca:?}")),
        "routes[0].upstream_ca_file",
    );
    assert!(line.contains("https://"), "{line}");
    let _ = std::fs::remove_file(ca);
}

#[test]
fn empty_file_reports_what_is_missing() {
    let mut keys: Vec<String> = problems("").into_iter().map(|p| p.key).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["routes", "server"]);
}

#[test]
fn max_connections_is_at_most_what_a_semaphore_holds() {
    let most = tokio::sync::Semaphore::MAX_PERMITS;
    let config = parse(&server_with(&format!("max_connections = {most}"))).unwrap();
    assert_eq!(config.server.max_connections, most);
    let line = rejects(
        &server_with(&format!("max_connections = {}", most + 1)),
        "server.max_connections",
    );
    assert!(line.contains(&format!("must be at most {most}")), "{line}");
}

#[test]
fn sizes_and_counts_are_said_to_be_greater_than_0() {
    for (line, key) in [
        ("max_connections = -1", "server.max_connections"),
        ("max_buffered_bytes = -1", "server.max_buffered_bytes"),
        (
            "http2_max_concurrent_streams = -1",
            "server.http2_max_concurrent_streams",
        ),
    ] {
        let message = rejects(&server_with(line), key);
        assert!(
            !message.contains(">= 0") && !message.contains("from 0"),
            "{message}"
        );
    }
}

#[test]
fn a_path_prefix_no_request_could_be_routed_by_is_refused() {
    for (prefix, hint) in [
        ("/a/../dd", "use \"/dd\""),
        ("/p%31", "use \"/p1\""),
        ("/v1//chat", "use \"/v1/chat\""),
        ("/../v1", "is never matched"),
    ] {
        let toml = MINIMAL.replacen(
            "name = \"llm\"",
            &format!("name = \"llm\"\npath_prefix = {prefix:?}"),
            1,
        );
        let line = rejects(&toml, "routes[0].path_prefix");
        assert!(line.contains(hint), "{line}");
    }
    for prefix in ["/", "/v1", "/v1/", "/v1/chat-completions", "/%20x"] {
        let toml = MINIMAL.replacen(
            "name = \"llm\"",
            &format!("name = \"llm\"\npath_prefix = {prefix:?}"),
            1,
        );
        assert_eq!(parse(&toml).unwrap().routes[0].path_prefix, prefix);
    }
}
