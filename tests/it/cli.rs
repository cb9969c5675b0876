//! The `chorus` binary: `check`, refusing a bad config, `$CHORUS_CONFIG`,
//! the drain on SIGTERM, `demo` and `mock-upstream`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::support::*;

const CHORUS: &str = env!("CARGO_BIN_EXE_chorus");

/// A directory of config files, removed at the end of the test.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "chorus-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `chorus` to completion; (exit status, stdout, stderr).
pub async fn chorus(args: &[&str], env: &[(&str, &Path)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(CHORUS);
    command
        .args(args)
        .env_remove("CHORUS_CONFIG")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("chorus did not exit")
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn good_config(upstream: &str, grace: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "{grace}"

[admin]
listen = "127.0.0.1:0"

[[routes]]
name = "llm"
upstream = "{upstream}"
"#
    )
}

/// Six problems at once, each in a different key.
const BAD_CONFIG: &str = r#"
[server]
listen = "not-an-address"
max_request_body_bytes = 0
listne = "127.0.0.1:8080"

[[routes]]
name = "llm"
upstream = "ftp://127.0.0.1:21"

[routes.upstream_headers]
authorization = "Bearer ${CHORUS_TEST_SURELY_UNSET}"

[[routes]]
name = "llm"
path_prefix = "/v1/"
upstream = "http://127.0.0.1:9000"
"#;

/// The keys BAD_CONFIG gets wrong, and a word of each reason.
const BAD_KEYS: [(&str, &str); 6] = [
    ("server.listen", "not-an-address"),
    ("server.max_request_body_bytes", "0"),
    ("server.listne", "unknown"),
    ("routes[0].upstream", "ftp://"),
    (
        "routes[0].upstream_headers.authorization",
        "CHORUS_TEST_SURELY_UNSET",
    ),
    ("routes[1].name", "duplicate"),
];

fn assert_names_every_problem(output: &str, file: &Path) {
    let file = file.display().to_string();
    for (key, why) in BAD_KEYS {
        let prefix = format!("{file}: {key}: ");
        assert!(
            output
                .lines()
                .any(|line| line.starts_with(&prefix) && line[prefix.len()..].contains(why)),
            "no `{prefix}...{why}...` line in:\n{output}"
        );
    }
}

#[tokio::test]
async fn check_accepts_good_configs() {
    let dir = Dir::new();
    let good = dir.file("good.toml", &good_config("http://127.0.0.1:9000", "5s"));
    let (status, _, stderr) = chorus(&["check", "--config", good.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The shipped examples are valid as they stand.
    for shipped in ["config/chorus.toml", "config/minimal.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped);
        let (status, _, stderr) = chorus(&["check", "--config", path.to_str().unwrap()], &[]).await;
        assert_eq!(status.code(), Some(0), "{shipped}: {stderr}");
    }
}

#[tokio::test]
async fn check_names_the_file_and_key_of_every_problem_and_exits_2() {
    let dir = Dir::new();
    let bad = dir.file("bad.toml", BAD_CONFIG);
    let (status, stdout, stderr) = chorus(&["check", "--config", bad.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2));
    assert_names_every_problem(&format!("{stdout}{stderr}"), &bad);
}

#[tokio::test]
async fn a_bad_config_never_starts() {
    let dir = Dir::new();
    let bad = dir.file("bad.toml", BAD_CONFIG);
    for args in [
        vec!["--config", bad.to_str().unwrap()],
        vec!["run", "--config", bad.to_str().unwrap()],
    ] {
        let (status, stdout, stderr) = chorus(&args, &[]).await;
        assert_eq!(status.code(), Some(2), "{args:?}");
        assert!(!stderr.contains("chorus is ready"), "{stderr}");
        assert_names_every_problem(&format!("{stdout}{stderr}"), &bad);
    }
    let missing = dir.0.join("missing.toml");
    let (status, _, stderr) = chorus(&["--config", missing.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

/// `demo`, `mock-upstream` and `health` run on their own settings: a
/// `--config` given to them is refused rather than silently ignored.
#[tokio::test]
async fn commands_that_read_no_config_refuse_one() {
    let dir = Dir::new();
    let good = dir.file("good.toml", &good_config("http://127.0.0.1:9000", "5s"));
    let good = good.to_str().unwrap();
    for command in ["demo", "mock-upstream", "health"] {
        for args in [[command, "--config", good], ["--config", good, command]] {
            let (status, _, stderr) = chorus(&args, &[]).await;
            assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains("--config"), "{args:?}: {stderr}");
        }
        // Nor does their help offer one.
        let (status, help, _) = chorus(&[command, "--help"], &[]).await;
        assert!(status.success());
        assert!(!help.contains("--config"), "{command} --help: {help}");
    }
    for command in ["run", "check"] {
        let (_, help, _) = chorus(&[command, "--help"], &[]).await;
        assert!(help.contains("--config"), "{command} --help: {help}");
    }
}

#[tokio::test]
async fn chorus_config_names_the_config_when_no_flag_does() {
    let dir = Dir::new();
    let good = dir.file("good.toml", &good_config("http://127.0.0.1:9000", "5s"));
    let bad = dir.file("bad.toml", BAD_CONFIG);
    let (status, _, stderr) = chorus(&["check"], &[("CHORUS_CONFIG", &good)]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (status, stdout, stderr) = chorus(&["check"], &[("CHORUS_CONFIG", &bad)]).await;
    assert_eq!(status.code(), Some(2));
    assert_names_every_problem(&format!("{stdout}{stderr}"), &bad);
    let (status, _, stderr) = chorus(&[], &[("CHORUS_CONFIG", &bad)]).await;
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("bad.toml"), "{stderr}");
    // Without either (an empty variable counts as none), config/chorus.toml
    // in the working directory.
    std::fs::create_dir_all(dir.0.join("config")).unwrap();
    dir.file("config/chorus.toml", BAD_CONFIG);
    for variable in [None, Some("")] {
        let mut command = Command::new(CHORUS);
        match variable {
            None => command.env_remove("CHORUS_CONFIG"),
            Some(value) => command.env("CHORUS_CONFIG", value),
        };
        let output = command
            .arg("check")
            .current_dir(&dir.0)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("config/chorus.toml: server.listen: "),
            "{variable:?}: {stderr}"
        );
    }
    // The flag wins over the variable.
    let (status, _, stderr) = chorus(
        &["check", "--config", good.to_str().unwrap()],
        &[("CHORUS_CONFIG", &bad)],
    )
    .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

// ---------------------------------------------------------------------------
// A running binary

/// A `chorus` process whose output lines are collected as they come.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line so far, stdout and stderr together.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        Self::spawn(Command::new(CHORUS).args(args))
    }

    /// Starts `chorus` with `args` under a soft limit of `soft` open files.
    fn start_with_open_files(soft: u64, args: &[&str]) -> Self {
        let script = format!("ulimit -Sn {soft} && exec \"$0\" \"$@\"");
        Self::spawn(Command::new("sh").args(["-c", &script, CHORUS]).args(args))
    }

    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .env_remove("CHORUS_CONFIG")
            .env("RUST_LOG", "info,chorus=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        collect(
            child.stdout.take().unwrap(),
            sender.clone(),
            Arc::clone(&seen),
        );
        collect(child.stderr.take().unwrap(), sender, Arc::clone(&seen));
        Self { child, lines, seen }
    }

    /// Waits for the first line that `pick` accepts, and returns what it picked.
    async fn wait_line<T>(&mut self, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no such line in:\n{}", self.output()))
                .unwrap_or_else(|| panic!("chorus exited; it said:\n{}", self.output()));
            if let Some(picked) = pick(&line) {
                return picked;
            }
        }
    }

    /// The `fields` of the first JSON log line whose message is `message`.
    async fn wait_log(&mut self, message: &str) -> Value {
        self.wait_line(|line| {
            let log: Value = serde_json::from_str(line).ok()?;
            (log["fields"]["message"] == message).then(|| {
                let mut fields = log["fields"].clone();
                fields["level"] = log["level"].clone();
                fields
            })
        })
        .await
    }

    fn terminate(&self) {
        self.signal("TERM");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("chorus already exited");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn exit(&mut self) -> ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("chorus did not exit; it said:\n{}", self.output()))
            .unwrap()
    }

    fn output(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    sender: mpsc::UnboundedSender<String>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.lock().unwrap().push(line.clone());
            let _ = sender.send(line);
        }
    });
}

fn addr(fields: &Value, name: &str) -> SocketAddr {
    fields[name]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no address {name} in {fields}"))
}

/// Starts `chorus --config` on ephemeral ports; returns it and its
/// gateway and admin addresses, learnt from its "chorus is ready" line.
async fn start_gateway(config: &Path) -> (Running, SocketAddr, SocketAddr) {
    let mut running =
        Running::start(&["--config", config.to_str().unwrap(), "--log-format", "json"]);
    let ready = running.wait_log("chorus is ready").await;
    let (listen, admin) = (addr(&ready, "listen"), addr(&ready, "admin"));
    assert_ne!(listen.port(), 0);
    (running, listen, admin)
}

/// Connects until the listener refuses; panics if it never does.
async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_streams_in_flight_then_exits_0() {
    let upstream = Upstream::start().await;
    let dir = Dir::new();
    let config = dir.file("drain.toml", &good_config(&upstream.url(), "20s"));
    let (mut running, listen, admin) = start_gateway(&config).await;
    let gateway = format!("http://{listen}");

    // An idle keep-alive connection, which the drain closes.
    let mut idle = TcpStream::connect(listen).await.unwrap();
    idle.write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 1024];
    let read = idle.read(&mut head).await.unwrap();
    assert!(head[..read].starts_with(b"HTTP/1.1 200"));

    // Two streams of about 4 s, over HTTP/1.1 and HTTP/2.
    let mut streams = Vec::new();
    for (client, content) in [(http1(), "drain h1 words"), (http2(), "drain h2 words")] {
        let body = chat(content, json!({"tokens": 40, "interval_ms": 100}));
        let mut request = post(
            &format!("{gateway}/v1/chat/completions?key=query-secret"),
            body,
        );
        request
            .headers_mut()
            .insert("authorization", "Bearer sk-log-secret".parse().unwrap());
        let response = send(&client, request).await;
        assert_eq!(response.status(), 200);
        let mut stream = EventReader::new(response);
        stream.next().await.unwrap().expect("a first event");
        streams.push(stream);
    }

    running.terminate();
    wait_refused(listen).await;
    let readyz = get(&format!("http://{admin}/readyz")).await;
    assert_eq!(readyz.status(), 503);
    let healthz = get(&format!("http://{admin}/healthz")).await;
    assert_eq!(healthz.status(), 200);
    assert_eq!(
        upstream.stats.completed(),
        0,
        "the stream ended before the drain"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle keep-alive connection stayed open");

    for mut stream in streams {
        let events = stream.rest().await.expect("the stream was cut");
        assert_eq!(events.len(), 40 + 2);
        assert_eq!(events.last().unwrap(), "[DONE]");
    }
    assert_eq!(upstream.stats.completed(), 2);
    assert_eq!(running.exit().await.code(), Some(0), "{}", running.output());
    let output = running.output();
    assert!(!output.contains("cutting"), "{output}");
    // One line per request, and no secrets: bodies, key headers, queries.
    let logged: Vec<Value> = request_logs(&output)
        .into_iter()
        .filter(|fields| fields["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(logged.len(), 2, "{output}");
    for fields in logged {
        assert_eq!(fields["route"], "llm");
        assert_eq!(fields["status"], 200);
        assert!(fields["bytes"].as_u64().unwrap() > 1000, "{fields}");
        assert!(fields["upstream_ms"].is_number(), "{fields}");
    }
    for secret in [
        "drain h1 words",
        "drain h2 words",
        "sk-log-secret",
        "query-secret",
    ] {
        assert!(!output.contains(secret), "{secret} logged:\n{output}");
    }
}

/// The fields of each request's log line in JSON log output.
fn request_logs(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|log| log["fields"]["message"] == "request")
        .map(|log| log["fields"].clone())
        .collect()
}

/// A gateway with `shutdown_grace = grace`, and a stream of about 20 s on
/// it, its first event read.
async fn streaming(grace: &str) -> (Upstream, Dir, Running, EventReader) {
    let upstream = Upstream::start().await;
    let dir = Dir::new();
    let config = dir.file("streaming.toml", &good_config(&upstream.url(), grace));
    let (running, listen, _) = start_gateway(&config).await;
    let body = chat("long", json!({"tokens": 200, "interval_ms": 100}));
    let response = send(
        &http1(),
        post(&format!("http://{listen}/v1/chat/completions"), body),
    )
    .await;
    let mut stream = EventReader::new(response);
    stream.next().await.unwrap().expect("a first event");
    (upstream, dir, running, stream)
}

#[tokio::test]
async fn sigterm_cuts_streams_still_open_after_the_grace_and_says_how_many() {
    // The stream is far longer than the grace.
    let (upstream, _dir, mut running, mut stream) = streaming("1s").await;
    let signalled = Instant::now();
    running.terminate();
    let warning = running
        .wait_log("shutdown grace ran out: cutting the streams still open")
        .await;
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["streams"], 1);
    assert_eq!(running.exit().await.code(), Some(0));
    assert!(signalled.elapsed() >= Duration::from_millis(900));
    assert!(stream.rest().await.is_err(), "a cut stream ended cleanly");
    assert!(upstream.wait_for(|s| s.disconnects() >= 1).await);
    // Logged as the gateway's cut, not as a client that left (499).
    let output = running.output();
    let logged = request_logs(&output);
    assert_eq!(logged.len(), 1, "{output}");
    assert_eq!(logged[0]["status"], 200, "{output}");
    assert_eq!(logged[0]["outcome"], "cut at shutdown");
}

/// Requests still waiting for their response heads when the grace runs out
/// (a leader and a follower of one flight) are answered 503, not left with
/// a closed connection they could not tell from a failure, and logged as cut.
#[tokio::test]
async fn requests_waiting_for_a_head_when_the_grace_runs_out_get_a_503() {
    let upstream = Upstream::start().await;
    let dir = Dir::new();
    let config = dir.file("waiting.toml", &good_config(&upstream.url(), "1s"));
    let (mut running, listen, _) = start_gateway(&config).await;
    let body = chat("slow head", json!({"first_byte_delay_ms": 60_000}));
    let url = format!("http://{listen}/v1/chat/completions");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let request = post(&url, body.clone());
            tokio::spawn(async move { send(&http1(), request).await })
        })
        .collect();
    assert!(upstream.wait_for(|s| s.requests() == 1).await);

    running.terminate();
    for response in waiting {
        let response = response.await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(error_type(response).await, "interrupted");
    }
    assert_eq!(running.exit().await.code(), Some(0));
    let output = running.output();
    let logged = request_logs(&output);
    assert_eq!(logged.len(), 2, "{output}");
    for fields in logged {
        assert_eq!(fields["status"], 503, "{output}");
        assert_eq!(fields["outcome"], "cut at shutdown", "{output}");
    }
}

/// A second SIGTERM (or Ctrl-C) during a drain ends it at once, as the
/// grace running out would.
#[tokio::test]
async fn a_second_sigterm_cuts_at_once_what_the_drain_would_wait_for() {
    let (_upstream, _dir, mut running, mut stream) = streaming("60s").await;
    let signalled = Instant::now();
    running.terminate();
    running
        .wait_log("draining: no new connections, streams in flight go on")
        .await;
    running.terminate();
    let warning = running
        .wait_log("told again to stop: cutting the streams still open")
        .await;
    assert_eq!(warning["streams"], 1);
    assert_eq!(running.exit().await.code(), Some(0));
    // The stream had 20 s to go and the grace was 60 s.
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert!(stream.rest().await.is_err(), "a cut stream ended cleanly");
}

#[tokio::test]
async fn demo_prints_a_curl_line_that_works() {
    let mut running =
        Running::start(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let curl = running
        .wait_line(|line| {
            line.trim_start()
                .starts_with("curl -N ")
                .then(|| line.to_owned())
        })
        .await;
    let url = curl.split_whitespace().nth(2).unwrap().to_owned();
    let body = curl
        .split_once(" -d '")
        .and_then(|(_, rest)| rest.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no -d '...' in {curl}"))
        .to_owned();
    // Printed before the curl line.
    let metrics = running
        .output()
        .split_whitespace()
        .find(|word| word.ends_with("/metrics"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no metrics URL in:\n{}", running.output()));
    assert!(!url.contains(":0/"), "{curl}");

    let response = send(&http1(), post(&url, body)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    let events = EventReader::new(response).rest().await.unwrap();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.len() > 2);
    let metrics = text(get(&metrics).await).await;
    assert!(metrics.contains("chorus_requests_total"), "{metrics}");

    running.terminate();
    assert_eq!(running.exit().await.code(), Some(0));
}

#[tokio::test]
async fn mock_upstream_serves_streams_and_stats() {
    let mut running = Running::start(&[
        "mock-upstream",
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        "3",
        "--interval",
        "10ms",
        "--log-format",
        "json",
    ]);
    let ready = running.wait_log("mock upstream is ready").await;
    let listen = addr(&ready, "listen");
    assert_ne!(listen.port(), 0);

    let body = json!({"model": "mock", "stream": true, "messages": []}).to_string();
    let response = send(
        &http1(),
        post(&format!("http://{listen}/v1/chat/completions"), body),
    )
    .await;
    assert_eq!(response.status(), 200);
    let events = EventReader::new(response).rest().await.unwrap();
    assert_eq!(events.len(), 3 + 3, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let stats = json(&body_bytes(get(&format!("http://{listen}/stats")).await).await);
    assert_eq!(stats["requests"], 1);

    running.terminate();
    assert_eq!(running.exit().await.code(), Some(0));
}

async fn body_bytes(response: http::Response<hyper::body::Incoming>) -> bytes::Bytes {
    body(response).await.unwrap()
}

/// (soft, hard) limits on open files of a process, from /proc.
fn open_files(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Services are often started with a low soft limit under a high hard one
/// (systemd: 1,024 and 524,288): chorus raises the soft limit to the hard one
/// rather than refuse clients at the thousandth, and warns when even that
/// cannot hold `max_connections`.
#[tokio::test]
async fn the_open_files_limit_is_raised_to_the_hard_one() {
    let (_, hard) = open_files("self");
    assert!(
        hard > 256,
        "this test needs a hard limit above 256, not {hard}"
    );
    let nothing = closed_port().await;
    let dir = Dir::new();
    for (max_connections, warned) in [(100, false), (hard, true)] {
        let config = good_config(&format!("http://{nothing}"), "1s").replace(
            "[server]\n",
            &format!("[server]\nmax_connections = {max_connections}\n"),
        );
        let config = dir.file("files.toml", &config);
        let mut running = Running::start_with_open_files(
            256,
            &["--config", config.to_str().unwrap(), "--log-format", "json"],
        );
        running.wait_log("chorus is ready").await;
        let pid = running.child.id().unwrap().to_string();
        assert_eq!(open_files(&pid), (hard, hard));
        let warning = "the open files limit is below server.max_connections";
        assert_eq!(
            running.output().contains(warning),
            warned,
            "max_connections {max_connections}: {}",
            running.output()
        );
        running.terminate();
        assert_eq!(running.exit().await.code(), Some(0));
    }
}

/// CPU seconds a process has used, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the whole line, in clock ticks (100 a second).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Out of file descriptors, each listener waits the spell out, 50 ms at a
/// time, with one warning when it starts and a line when it ends: retried
/// at once, `accept` fails at once (the connection stays queued), and the
/// admin listener did just that, on a whole core, for as long as a probe
/// waited. Both serve again once descriptors are free.
#[tokio::test]
async fn out_of_file_descriptors_the_listeners_wait_rather_than_spin() {
    let nothing = closed_port().await;
    let dir = Dir::new();
    let config = dir.file("fds.toml", &good_config(&format!("http://{nothing}"), "1s"));
    let script = "ulimit -n 64 && exec \"$0\" \"$@\"";
    let mut running = Running::spawn(Command::new("sh").args([
        "-c",
        script,
        CHORUS,
        "--config",
        config.to_str().unwrap(),
        "--log-format",
        "json",
    ]));
    let ready = running.wait_log("chorus is ready").await;
    let (listen, admin) = (addr(&ready, "listen"), addr(&ready, "admin"));
    let pid = running.child.id().unwrap().to_string();

    // More connections than the process can take: the rest wait queued.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(listen).await.unwrap());
    }
    let failing = "accept failed; retrying every 50 ms until it works";
    let mut probe = None;
    for listener in ["gateway", "admin"] {
        running
            .wait_line(|line| {
                let log: Value = serde_json::from_str(line).ok()?;
                (log["fields"]["message"] == failing && log["fields"]["listener"] == listener)
                    .then_some(())
            })
            .await;
        // Out of descriptors now: the admin listener's turn.
        probe.get_or_insert(TcpStream::connect(admin).await.unwrap());
    }
    let mut probe = probe.unwrap();
    let before = cpu_seconds(&pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_seconds(&pid) - before;
    assert!(spent < 0.5, "{spent} CPU-s in 1 s out of descriptors");

    drop(held);
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (closed, answer) = read_to_close(&mut probe, Instant::now() + PATIENCE).await;
    assert!(closed, "the admin listener never answered");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let response = get(&format!("http://{listen}/v1/models")).await;
    assert_eq!(response.status(), 502);
    let output = running.output();
    assert_eq!(output.matches(failing).count(), 2, "{output}");
    assert_eq!(output.matches("accepting again").count(), 2, "{output}");
    running.terminate();
    assert_eq!(running.exit().await.code(), Some(0));
}

/// jemalloc gives freed memory back from its background thread, so that an
/// idle gateway does not keep what a burst took (README, Allocator).
#[tokio::test]
async fn freed_memory_is_given_back_by_a_background_thread() {
    let nothing = closed_port().await;
    let dir = Dir::new();
    let config = dir.file("bg.toml", &good_config(&format!("http://{nothing}"), "1s"));
    let (running, _, _) = start_gateway(&config).await;
    let pid = running.child.id().unwrap();
    let threads = || -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    };
    // The thread names itself once it runs.
    let deadline = Instant::now() + PATIENCE;
    while !threads().iter().any(|name| name == "jemalloc_bg_thd") {
        assert!(Instant::now() < deadline, "threads: {:?}", threads());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_signal_right_after_ready_exits_0_without_waiting_for_idle_connections() {
    let nothing = closed_port().await;
    let dir = Dir::new();
    let config = dir.file(
        "early.toml",
        &good_config(&format!("http://{nothing}"), "60s"),
    );
    for signal in ["TERM", "INT"] {
        let (mut running, listen, admin) = start_gateway(&config).await;
        // SIGHUP reloads certificates: it never ends the process.
        running.signal("HUP");
        let readyz = get(&format!("http://{admin}/readyz")).await;
        assert_eq!(readyz.status(), 200);
        // Connections with no request in flight do not hold the drain up:
        // one that never sends a request, one that has had its answer, and
        // an HTTP/2 client that never reads (so never answers the GOAWAY's
        // ping); the grace is 60 s, the wait for the exit 20 s.
        let _silent = TcpStream::connect(listen).await.unwrap();
        let mut deaf = TcpStream::connect(listen).await.unwrap();
        deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let idle = http2();
        let request = Request::get(format!("http://{listen}/none"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&idle, request).await.status(), 502);
        running.signal(signal);
        let status = running.exit().await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal}: {status:?}: {}",
            running.output()
        );
        assert!(TcpStream::connect(listen).await.is_err());
    }
}
