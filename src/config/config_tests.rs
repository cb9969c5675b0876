use super::*;
use crate::config::test_support::*;

#[test]
fn example_config_parses() {
    let config = Config::parse(
        include_str!("../../config/chorus.toml"),
        "config/chorus.toml",
        no_env,
    )
    .unwrap();
    assert_eq!(
        config.server,
        ServerConfig::new("0.0.0.0:8080".parse().unwrap())
    );
    assert_eq!(config.admin, Some(AdminConfig::default()));
    let route = RouteConfig::new("llm", "/", Uri::from_static("http://127.0.0.1:9000"));
    assert_eq!(config.routes, vec![route]);
}

#[test]
fn minimal_example_parses() {
    let config = Config::parse(
        include_str!("../../config/minimal.toml"),
        "config/minimal.toml",
        no_env,
    )
    .unwrap();
    assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.admin, None);
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].name, "llm");
}

#[test]
fn defaults_are_as_documented() {
    let config = parse(MINIMAL).unwrap();
    let server = &config.server;
    assert_eq!(server.max_request_body_bytes, 1_048_576);
    assert_eq!(server.max_header_bytes, 65_536);
    assert_eq!(server.max_connections, 16_384);
    assert_eq!(server.header_read_timeout, Duration::from_secs(30));
    assert_eq!(server.request_body_timeout, Duration::from_secs(60));
    assert_eq!(server.send_timeout, Duration::from_secs(60));
    assert_eq!(server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(server.http2_max_concurrent_streams, 256);
    assert_eq!(server.max_buffered_bytes, 536_870_912);
    assert_eq!(server.tls, None);
    assert_eq!(config.admin, None);

    let route = &config.routes[0];
    assert_eq!(route.path_prefix, "/");
    assert_eq!(route.upstream_ca_file, None);
    assert_eq!(route.upstream_client_cert, None);
    assert_eq!(route.upstream_client_key, None);
    assert_eq!(route.connect_timeout, Duration::from_secs(5));
    assert_eq!(route.first_byte_timeout, Duration::from_secs(60));
    assert_eq!(route.idle_timeout, Duration::from_secs(60));
    assert!(route.upstream_headers.is_empty());
    assert!(!route.websocket);

    let coalesce = &route.coalesce;
    assert!(coalesce.enabled);
    assert_eq!(coalesce.methods, vec![Method::GET, Method::POST]);
    let key_headers: Vec<&str> = coalesce.key_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(
        key_headers,
        ["authorization", "x-api-key", "api-key", "cookie"]
    );
    assert!(coalesce.json_ignore_fields.is_empty());
    assert_eq!(coalesce.linger, Duration::ZERO);
    assert_eq!(coalesce.cancel_grace, Duration::ZERO);
    assert_eq!(coalesce.max_replay_bytes, 8_388_608);
    assert_eq!(coalesce.max_subscribers, 10_000);

    assert_eq!(
        *route,
        RouteConfig::new("llm", "/", Uri::from_static("http://127.0.0.1:9000"))
    );
    assert_eq!(
        config.server,
        ServerConfig::new("127.0.0.1:8080".parse().unwrap())
    );
}

#[test]
fn every_key_can_be_set() {
    let ca = temp_file("every-ca.pem");
    let cert = temp_file("every-cert.pem");
    let key = temp_file("every-key.pem");
    let text = format!(
        r#"
        [server]
        listen = "[::]:8443"
        max_request_body_bytes = 10
        max_header_bytes = 20
        max_connections = 30
        header_read_timeout = "1s"
        request_body_timeout = "2s"
        send_timeout = "2500ms"
        shutdown_grace = "0s"
        http2_max_concurrent_streams = 40
        max_buffered_bytes = 50
        [server.tls]
        cert = {cert:?}
        key = {key:?}

        [admin]
        listen = "0.0.0.0:9191"

        [[routes]]
        name = "openai"
        path_prefix = "/v1"
        upstream = "https://api.example.com/base/"
        upstream_ca_file = {ca:?}
        upstream_client_cert = {cert:?}
        upstream_client_key = {key:?}
        connect_timeout = "250ms"
        first_byte_timeout = "5m"
        idle_timeout = "1h"
        websocket = true
        [routes.upstream_headers]
        Authorization = "Bearer sk-1"
        x-org = "acme"
        [routes.coalesce]
        enabled = false
        methods = ["post", "Put"]
        key_headers = ["Authorization"]
        json_ignore_fields = ["user", "request_id"]
        linger = "2s"
        cancel_grace = "3s"
        max_replay_bytes = 60
        max_subscribers = 70
        "#
    );
    let config = parse(&text).unwrap();
    let server = &config.server;
    assert_eq!(server.listen, "[::]:8443".parse().unwrap());
    assert_eq!(server.max_request_body_bytes, 10);
    assert_eq!(server.max_header_bytes, 20);
    assert_eq!(server.max_connections, 30);
    assert_eq!(server.header_read_timeout, Duration::from_secs(1));
    assert_eq!(server.request_body_timeout, Duration::from_secs(2));
    assert_eq!(server.send_timeout, Duration::from_millis(2500));
    assert_eq!(server.shutdown_grace, Duration::ZERO);
    assert_eq!(server.http2_max_concurrent_streams, 40);
    assert_eq!(server.max_buffered_bytes, 50);
    assert_eq!(
        server.tls,
        Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone()
        })
    );
    assert_eq!(
        config.admin.unwrap().listen,
        "0.0.0.0:9191".parse().unwrap()
    );

    let route = &config.routes[0];
    assert_eq!(route.name, "openai");
    assert_eq!(route.path_prefix, "/v1");
    assert_eq!(route.upstream, "https://api.example.com/base");
    assert_eq!(route.upstream.path(), "/base");
    assert_eq!(route.upstream_ca_file.as_ref(), Some(&ca));
    assert_eq!(route.upstream_client_cert.as_ref(), Some(&cert));
    assert_eq!(route.upstream_client_key.as_ref(), Some(&key));
    assert_eq!(route.connect_timeout, Duration::from_millis(250));
    assert_eq!(route.first_byte_timeout, Duration::from_secs(300));
    assert_eq!(route.idle_timeout, Duration::from_secs(3600));
    assert!(route.websocket);
    let headers: Vec<(&str, &[u8])> = route
        .upstream_headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    assert_eq!(
        headers,
        [("authorization", &b"Bearer sk-1"[..]), ("x-org", b"acme")]
    );
    let coalesce = &route.coalesce;
    assert!(!coalesce.enabled);
    assert_eq!(coalesce.methods, vec![Method::POST, Method::PUT]);
    assert_eq!(coalesce.key_headers, vec![http::header::AUTHORIZATION]);
    assert_eq!(coalesce.json_ignore_fields, ["user", "request_id"]);
    assert_eq!(coalesce.linger, Duration::from_secs(2));
    assert_eq!(coalesce.cancel_grace, Duration::from_secs(3));
    assert_eq!(coalesce.max_replay_bytes, 60);
    assert_eq!(coalesce.max_subscribers, 70);
    for path in [ca, cert, key] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn load_names_the_file() {
    let path = std::env::temp_dir().join(format!(
        "chorus-config-test-{}-load.toml",
        std::process::id()
    ));
    std::fs::write(&path, "[server]\nlisten = \"bad\"\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    let _ = std::fs::remove_file(&path);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}: server.listen: ", path.display())),
        "{text}"
    );
    assert!(text.contains("routes: at least one"), "{text}");

    let err = Config::load(Path::new("/nonexistent/chorus.toml")).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/chorus.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn constructors_use_the_defaults() {
    let route = RouteConfig::new("r", "/x", Uri::from_static("http://h"));
    assert_eq!(route.coalesce, CoalesceConfig::default());
    assert_eq!(route.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(
        AdminConfig::default().listen,
        "127.0.0.1:9090".parse().unwrap()
    );
}
