//! What ships in `deploy/` and the `Dockerfile` agrees with the code: every
//! config it carries passes `chorus check`, versions match the crate, the
//! Kubernetes grace period covers the drain, the dashboard asks only for
//! metrics that exist, and the image's health check and missing-config
//! message work. (The manifests' schemas, the Dockerfile lint and the Compose
//! file are checked by `deploy/check.sh`.)

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;

use chorus::config::Config;

use crate::support::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Runs the `chorus` binary built for these tests.
async fn chorus(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
    command.args(args).env_remove("CHORUS_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("chorus did not exit in time")
        .expect("cannot run chorus")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The block scalar under `key: |` in a YAML file, dedented: enough YAML for
/// a ConfigMap's data entry.
fn yaml_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines();
    let header = format!("{key}: |");
    lines
        .by_ref()
        .find(|line| line.trim() == header)
        .unwrap_or_else(|| panic!("no `{header}` block"));
    let body: Vec<&str> = lines
        .take_while(|line| line.trim().is_empty() || line.starts_with("    "))
        .collect();
    let indent = body
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|line| line.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the first `key: value` line (after trimming) in a YAML file.
fn yaml_scalar<'a>(yaml: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}:");
    yaml.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.split('#').next().unwrap_or("").trim())
        .unwrap_or_else(|| panic!("no `{key}:` line"))
}

/// Writes `toml` to a temporary file and runs `chorus check` on it.
async fn check_toml(name: &str, toml: &str) {
    let path = std::env::temp_dir().join(format!("chorus-deploy-{}-{name}", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let path_text = path.display().to_string();
    let output = chorus(&["check", "--config", &path_text], &[]).await;
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "{name} fails `chorus check`:\n{}",
        stderr(&output)
    );
}

fn configmap_toml() -> String {
    yaml_block(&read("deploy/kubernetes/configmap.yaml"), "chorus.toml")
}

#[tokio::test]
async fn every_shipped_config_passes_check() {
    check_toml("configmap.toml", &configmap_toml()).await;
    // Mounted by deploy/compose.yaml.
    check_toml("compose.toml", &read("deploy/compose/chorus.toml")).await;
    // The file the README mounts into the image (which ships none itself).
    check_toml("example.toml", &read("config/chorus.toml")).await;
}

#[test]
fn configs_in_containers_listen_beyond_loopback() {
    for (name, toml) in [
        ("configmap", configmap_toml()),
        ("compose", read("deploy/compose/chorus.toml")),
    ] {
        let config = Config::parse(&toml, name, |_| None).unwrap();
        assert!(config.server.listen.ip().is_unspecified(), "{name}");
        // Probes and Prometheus come from outside the container.
        let admin = config.admin.expect(name);
        assert!(admin.listen.ip().is_unspecified(), "{name}");
        assert_eq!(admin.listen.port(), 9090, "{name}");
    }
}

#[test]
fn versions_agree_with_the_crate() {
    let dockerfile = read("Dockerfile");
    let default = dockerfile
        .lines()
        .find_map(|line| line.trim().strip_prefix("ARG CHORUS_VERSION="))
        .expect("the Dockerfile has no `ARG CHORUS_VERSION=` default");
    assert_eq!(default, VERSION, "Dockerfile CHORUS_VERSION");
    assert!(dockerfile.contains("org.opencontainers.image.version=\"${CHORUS_VERSION}\""));

    let deployment = read("deploy/kubernetes/deployment.yaml");
    assert_eq!(
        yaml_scalar(&deployment, "image"),
        format!("chorus:{VERSION}")
    );
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    assert_eq!(yaml_scalar(&kustomization, "newTag"), VERSION);
}

#[test]
fn the_image_builds_like_ci() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("ENV CHORUS_CONFIG=/etc/chorus/chorus.toml"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["chorus"]"#));
    assert!(dockerfile.contains(r#"CMD ["chorus", "health"]"#));
}

#[test]
fn kubernetes_grace_period_covers_prestop_and_drain() {
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let grace: u64 = yaml_scalar(&deployment, "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    let prestop: u64 = {
        let after = deployment
            .split("preStop:")
            .nth(1)
            .expect("no preStop hook");
        yaml_scalar(after, "seconds").parse().unwrap()
    };
    let config = Config::parse(&configmap_toml(), "configmap", |_| None).unwrap();
    let needed = Duration::from_secs(prestop) + config.server.shutdown_grace;
    assert!(
        Duration::from_secs(grace) > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop {prestop}s + shutdown_grace {:?}",
        config.server.shutdown_grace
    );
}

#[test]
fn compose_stop_grace_covers_drain() {
    let compose = read("deploy/compose.yaml");
    let stop = humantime::parse_duration(yaml_scalar(&compose, "stop_grace_period")).unwrap();
    let config = Config::parse(&read("deploy/compose/chorus.toml"), "compose", |_| None).unwrap();
    assert!(stop > config.server.shutdown_grace);
}

/// Every `chorus_*` name in a PromQL expression of the dashboard.
fn dashboard_metric_names() -> Vec<String> {
    fn walk(value: &serde_json::Value, exprs: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => exprs.push(expr.clone()),
                        _ => walk(value, exprs),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, exprs)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/chorus.json")).unwrap();
    let mut exprs = Vec::new();
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("chorus_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn the_dashboard_queries_metrics_that_exist() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    // chorus_responses_total has a series once a response was counted.
    let request = post(
        &gateway.url("/v1/chat/completions"),
        chat("hi", json!({"tokens": 2, "interval_ms": 1})),
    );
    text(send(&http1(), request).await).await;
    gateway
        .wait_metric("chorus_requests_active", |v| v == 0.0)
        .await;

    let exported: Vec<String> = gateway
        .metrics()
        .await
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let names = dashboard_metric_names();
    for wanted in [
        "chorus_requests_total",
        "chorus_upstream_requests_total",
        "chorus_upstream_cancelled_total",
        "chorus_upstream_broken_total",
        "chorus_flights_active",
        "chorus_subscribers_active",
        "chorus_upstream_first_byte_seconds_bucket",
        "chorus_responses_total",
        "chorus_buffered_bytes",
        "chorus_tunnels_active",
        "chorus_tunnel_bytes_total",
    ] {
        assert!(names.iter().any(|name| name == wanted), "{wanted} unused");
    }
    for name in &names {
        assert!(
            exported.contains(name),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}

#[tokio::test]
async fn health_exits_zero_only_on_200() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let url = |path: &str| format!("http://{}{path}", gateway.admin);

    let ok = chorus(&["health", "--url", &url("/healthz")], &[]).await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ready = chorus(&["health", "--url", &url("/readyz")], &[]).await;
    assert!(ready.status.success(), "{}", stderr(&ready));

    let missing = chorus(&["health", "--url", &url("/nope")], &[]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));

    // Nobody listens on a port just released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let refused = chorus(
        &["health", "--url", &format!("http://{closed}/healthz")],
        &[],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("cannot connect"));

    // A listener that never answers: the timeout, not a hang.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let stalled = chorus(&["health", "--url", &silent_url, "--timeout", "300ms"], &[]).await;
    assert_eq!(stalled.status.code(), Some(1));
    assert!(stderr(&stalled).contains("no answer within 300ms"));
}

#[tokio::test]
async fn a_missing_config_says_what_to_mount() {
    let output = chorus(&[], &[("CHORUS_CONFIG", "/nonexistent/chorus.toml")]).await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("/nonexistent/chorus.toml: cannot read the config file"),
        "{message}"
    );
    assert!(
        message.contains("-v \"$PWD/chorus.toml:/nonexistent/chorus.toml\""),
        "{message}"
    );
    assert!(message.contains("chorus demo"), "{message}");
}
