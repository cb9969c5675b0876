//! The load generator of `bench/run.sh`, for what wrk cannot measure: many
//! concurrent SSE streams, per-event delivery latency, cancellation and start-up.
//!
//! Every simulated client is its own TCP connection driven by a hyper HTTP/1.1
//! client connection (or raw bytes where closing at an exact instant matters);
//! all of them run as tasks on one current-thread runtime, so the generator
//! stays on the one core `bench/run.sh` gives it. Each command prints one JSON
//! object on stdout.
//!
//! Delivery latency is the wall-clock time from the mock upstream producing an
//! event (`"chorus_sent_ns"`, stamped because the request asks `"stamp": true`)
//! to this process reading it; both run on the same machine and clock. Events
//! stamped before the client sent its request are replays (a late joiner's
//! catch-up), counted apart and left out of the latency figures.
//!
//! `broadcast` is the other end: the fan-out scenario's `floor`, a server
//! that does only what no fan-out proxy can avoid (see [`broadcast`]).
//!
//! ```text
//! cargo build --release --example loadgen
//! target/release/examples/loadgen stream --addr 127.0.0.1:8080 --clients 1000 --identical
//! ```

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(about = "Load generator for chorus benchmarks (see bench/run.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Concurrent streaming requests: completion, identical bodies, delivery latency.
    Stream(StreamArgs),
    /// Sequential streaming requests on one kept-alive connection: time to first event.
    Ttft(TtftArgs),
    /// Clients leave mid-stream: time until the upstream sees its last request closed.
    Cancel(CancelArgs),
    /// Starts a command, times until its port accepts, reads its idle RSS, stops it.
    Startup(StartupArgs),
    /// The fan-out floor: a bare broadcaster that serves `stream --identical`
    /// clients one stream written to every socket in turn.
    Broadcast(BroadcastArgs),
    /// Waits until a port accepts connections.
    Wait {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

#[derive(Args, Clone)]
struct Target {
    /// Where to send requests (direct to the mock, or a proxy in front of it).
    #[arg(long)]
    addr: SocketAddr,
    /// The request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Extra request header, `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
}

#[derive(Args)]
struct StreamArgs {
    #[command(flatten)]
    target: Target,
    /// Concurrent clients, one connection each.
    #[arg(long)]
    clients: usize,
    /// All clients send the same body (coalescible); otherwise every body differs.
    #[arg(long)]
    identical: bool,
    /// Content tokens per stream (the mock paces them at its interval).
    #[arg(long, default_value_t = 40)]
    tokens: usize,
    /// The mock holds the response head this long, so every client has joined
    /// before the first event.
    #[arg(long, default_value_t = 2000)]
    first_byte_delay_ms: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Gives up on streams still open after this long.
    #[arg(long, default_value_t = 90)]
    timeout_s: u64,
    /// Tells this run's bodies apart from other runs'.
    #[arg(long, default_value = "run")]
    tag: String,
}

#[derive(Args)]
struct TtftArgs {
    #[command(flatten)]
    target: Target,
    /// Measured requests.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Requests sent first and not measured.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    #[arg(long, default_value = "run")]
    tag: String,
}

#[derive(Args)]
struct CancelArgs {
    #[command(flatten)]
    target: Target,
    /// The mock upstream, for `GET /stats`.
    #[arg(long)]
    mock: SocketAddr,
    /// Clients per round, all with the same body.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Events every client reads before they all leave.
    #[arg(long, default_value_t = 2)]
    events: usize,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    #[arg(long, default_value = "run")]
    tag: String,
}

#[derive(Args)]
struct StartupArgs {
    /// The port the command serves on once ready.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Idle time before RSS is read.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct BroadcastArgs {
    #[arg(long)]
    listen: SocketAddr,
    /// Serves this many clients (one request each), then exits.
    #[arg(long)]
    clients: usize,
    /// Content tokens per stream, as the mock's `--tokens`.
    #[arg(long, default_value_t = 40)]
    tokens: usize,
    /// Pause between events, as the mock's `--interval`.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// From the first request to the response head, as the mock's.
    #[arg(long, default_value_t = 2000)]
    first_byte_delay_ms: u64,
    /// Stays this long after the stream, so that its CPU time and memory can
    /// still be read (the runner stops it sooner).
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = match cli.command {
        Cmd::Stream(args) => runtime.block_on(stream(args))?,
        Cmd::Ttft(args) => runtime.block_on(ttft(args))?,
        Cmd::Cancel(args) => runtime.block_on(cancel(args))?,
        Cmd::Startup(args) => startup(&args)?,
        Cmd::Broadcast(args) => broadcast(&args)?,
        Cmd::Wait { addr, timeout_ms } => {
            let waited = wait_port(addr, Duration::from_millis(timeout_ms))
                .ok_or_else(|| format!("{addr} did not accept within {timeout_ms} ms"))?;
            json!({ "waited_ms": ms(waited) })
        }
    };
    println!("{report}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Measuring

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// CPU seconds (user + system) this process has used, from /proc.
fn own_cpu_seconds() -> f64 {
    proc_cpu_seconds("self").unwrap_or(0.0)
}

fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI chorus targets.
    Some(ticks as f64 / 100.0)
}

/// Percentiles of nanosecond samples, in milliseconds.
fn summary_ms(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return json!({ "n": 0 });
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index] as f64 / 1e6
    };
    let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64 / 1e6;
    json!({
        "n": samples.len(),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": at(1.0),
        "mean": mean,
    })
}

// ---------------------------------------------------------------------------
// Requests

/// A chat-completion request body; `client` None gives the body every client
/// of a run shares.
fn chat_body(tag: &str, client: Option<usize>, mock: &Value) -> Bytes {
    let who = client.map_or_else(
        || "everyone".to_owned(),
        |client| format!("client {client}"),
    );
    let body = json!({
        "model": "mock",
        "stream": true,
        "messages": [
            {"role": "system", "content": "You are a benchmark."},
            {"role": "user", "content": format!("Say hello to {who} of {tag}.")},
        ],
        "mock": mock,
    });
    Bytes::from(body.to_string())
}

fn request(target: &Target, body: Bytes) -> Result<Request<Full<Bytes>>, Error> {
    let mut builder = Request::post(target.path.as_str())
        .header("host", target.addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    for header in &target.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header {header:?}: expected `name: value`"))?;
        builder = builder.header(name.trim(), value.trim());
    }
    Ok(builder.body(Full::new(body))?)
}

/// One client connection; its driver task ends when the connection does.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// Splits a byte stream into SSE events and takes the stamps out of them.
#[derive(Default)]
struct Events {
    /// The start of an event whose end has not arrived yet.
    partial: Vec<u8>,
    count: u32,
    done: bool,
}

const STAMP: &[u8] = br#"data: {"chorus_sent_ns":"#;

impl Events {
    /// Feeds one chunk read at `now`; calls `stamped` with each complete
    /// event's stamp.
    fn feed(&mut self, chunk: &[u8], mut stamped: impl FnMut(u64)) {
        let joined;
        let data: &[u8] = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(chunk);
            joined = std::mem::take(&mut self.partial);
            &joined
        };
        let mut start = 0;
        while let Some(end) = find_blank_line(&data[start..]) {
            let event = &data[start..start + end];
            self.count += 1;
            if event == b"data: [DONE]" {
                self.done = true;
            } else if let Some(rest) = event.strip_prefix(STAMP) {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                if let Some(stamp) = std::str::from_utf8(&rest[..digits])
                    .ok()
                    .and_then(|digits| digits.parse().ok())
                {
                    stamped(stamp);
                }
            }
            start += end + 2;
        }
        self.partial = data[start..].to_vec();
    }
}

fn find_blank_line(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|pair| pair == b"\n\n")
}

// ---------------------------------------------------------------------------
// stream

/// What one client of `stream` saw.
struct Outcome {
    status: u16,
    role: Option<String>,
    complete: bool,
    error: Option<String>,
    hash: Option<[u8; 32]>,
    events: u32,
    replayed: u32,
    first_event_ns: Option<u64>,
    latencies_ns: Vec<u64>,
}

async fn stream(args: StreamArgs) -> Result<Value, Error> {
    let cpu_start = own_cpu_seconds();
    let started = Instant::now();
    let mock = json!({
        "tokens": args.tokens,
        "first_byte_delay_ms": args.first_byte_delay_ms,
        "stamp": true,
    });
    let shared_body = chat_body(&args.tag, None, &mock);

    // Phase 1: every connection open before any request, so that the requests
    // arrive together rather than at the pace of connection set-up.
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut opening = JoinSet::new();
    for index in 0..args.clients {
        let gate = Arc::clone(&gate);
        let addr = args.target.addr;
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (index, connect(addr).await)
        });
    }
    let mut senders: Vec<Option<SendRequest<Full<Bytes>>>> = Vec::new();
    senders.resize_with(args.clients, || None);
    let mut connect_errors = Vec::new();
    while let Some(joined) = opening.join_next().await {
        let (index, result) = joined?;
        match result {
            Ok(send) => senders[index] = Some(send),
            Err(error) => connect_errors.push(error.to_string()),
        }
    }
    let connected = started.elapsed();

    // Phase 2: every request at once, then read every stream to its end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_s);
    let mut clients = JoinSet::new();
    let requests_start = Instant::now();
    for (index, send) in senders.into_iter().enumerate() {
        let Some(send) = send else { continue };
        let body = if args.identical {
            shared_body.clone()
        } else {
            chat_body(&args.tag, Some(index), &mock)
        };
        let request = request(&args.target, body)?;
        clients.spawn(async move {
            match tokio::time::timeout_at(deadline, client(send, request)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::failed("timed out"),
            }
        });
    }
    let sent_all = requests_start.elapsed();

    let mut outcomes = Vec::with_capacity(args.clients);
    while let Some(joined) = clients.join_next().await {
        outcomes.push(joined?);
    }
    let elapsed = started.elapsed();

    let mut latencies: Vec<u64> = Vec::new();
    let mut first_events: Vec<u64> = Vec::new();
    let mut hashes = std::collections::HashSet::new();
    let mut roles = std::collections::BTreeMap::<String, usize>::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let (mut complete, mut events, mut replayed) = (0, 0u64, 0u64);
    for outcome in &mut outcomes {
        complete += usize::from(outcome.complete);
        events += u64::from(outcome.events);
        replayed += u64::from(outcome.replayed);
        latencies.append(&mut outcome.latencies_ns);
        first_events.extend(outcome.first_event_ns);
        if let Some(hash) = outcome.hash {
            hashes.insert(hash);
        }
        *statuses.entry(outcome.status).or_default() += 1;
        if let Some(role) = &outcome.role {
            *roles.entry(role.clone()).or_default() += 1;
        }
        if let Some(error) = &outcome.error {
            *errors.entry(error.clone()).or_default() += 1;
        }
    }
    for error in connect_errors {
        *errors.entry(format!("connect: {error}")).or_default() += 1;
    }
    Ok(json!({
        "clients": args.clients,
        "identical": args.identical,
        "complete": complete,
        "distinct_bodies": hashes.len(),
        "statuses": statuses,
        "roles": roles,
        "errors": errors,
        "events": events,
        "replayed_events": replayed,
        "delivery_ms": summary_ms(&mut latencies),
        "first_event_ms": summary_ms(&mut first_events),
        "connect_all_ms": ms(connected),
        "send_all_ms": ms(sent_all),
        "elapsed_s": elapsed.as_secs_f64(),
        "loadgen_cpu_s": own_cpu_seconds() - cpu_start,
    }))
}

impl Outcome {
    fn failed(error: &str) -> Self {
        Self {
            status: 0,
            role: None,
            complete: false,
            error: Some(error.to_owned()),
            hash: None,
            events: 0,
            replayed: 0,
            first_event_ns: None,
            latencies_ns: Vec::new(),
        }
    }
}

async fn client(mut send: SendRequest<Full<Bytes>>, request: Request<Full<Bytes>>) -> Outcome {
    if let Err(error) = send.ready().await {
        return Outcome::failed(&format!("connection: {error}"));
    }
    let sent_ns = wall_ns();
    let response = match send.send_request(request).await {
        Ok(response) => response,
        Err(error) => return Outcome::failed(&format!("request: {error}")),
    };
    let status = response.status();
    let role = response
        .headers()
        .get("x-chorus-role")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut body = response.into_body();
    let mut hasher = blake3::Hasher::new();
    let mut events = Events::default();
    let mut outcome = Outcome::failed("");
    outcome.error = None;
    outcome.status = status.as_u16();
    outcome.role = role;
    outcome.latencies_ns.reserve(64);
    loop {
        match body.frame().await {
            None => break,
            Some(Err(error)) => {
                outcome.error = Some(format!("body: {error}"));
                break;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let now = wall_ns();
                if outcome.first_event_ns.is_none() && !data.is_empty() {
                    outcome.first_event_ns = Some(now.saturating_sub(sent_ns));
                }
                hasher.update(&data);
                let latencies = &mut outcome.latencies_ns;
                let replayed = &mut outcome.replayed;
                events.feed(&data, |stamp| {
                    if stamp < sent_ns {
                        *replayed += 1;
                    } else {
                        latencies.push(now.saturating_sub(stamp));
                    }
                });
            }
        }
    }
    outcome.events = events.count;
    outcome.hash = Some(*hasher.finalize().as_bytes());
    outcome.complete = outcome.error.is_none() && status == StatusCode::OK && events.done;
    if outcome.error.is_none() && !outcome.complete {
        outcome.error = Some(format!("incomplete: status {status}, done {}", events.done));
    }
    outcome
}

// ---------------------------------------------------------------------------
// broadcast

/// The least work any fan-out proxy can do on its core, for the fan-out
/// scenario's `floor` column: one thread, blocking sockets, and no HTTP past
/// finding each request's end. The stream is one append-only buffer (events
/// framed as chunks once, at their time); the thread sweeps the clients in
/// turn, sending each everything it has not had yet in one `send`, so a client
/// the sweep reaches late gets its events together, as chorus's subscribers
/// do. What is left is what the machine's TCP stack costs per delivery.
fn broadcast(args: &BroadcastArgs) -> Result<Value, Error> {
    let listener = std::net::TcpListener::bind(args.listen)?;
    // Every connection first: the load generator opens them all before it
    // sends any request.
    let mut clients = Vec::with_capacity(args.clients);
    while clients.len() < args.clients {
        clients.push(accept_nodelay(&listener)?);
    }
    // A connection that closes without a request (a readiness probe) gives
    // its place to the next one.
    let mut first_request = None;
    for client in &mut clients {
        while !read_request(client)? {
            *client = accept_nodelay(&listener)?;
        }
        first_request.get_or_insert_with(Instant::now);
    }
    let start = first_request.unwrap_or_else(Instant::now)
        + Duration::from_millis(args.first_byte_delay_ms);
    std::thread::sleep(start.saturating_duration_since(Instant::now()));

    let cpu_start = own_cpu_seconds();
    let mut log = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        .to_vec();
    // The mock's events: a role delta, the content tokens, a stop; then the end.
    let events = args.tokens + 2;
    let due = |index: usize| start + Duration::from_millis(args.interval_ms) * index as u32;
    let mut produced = 0;
    let mut sent = vec![0; clients.len()];
    let (mut writes, mut failed) = (0u64, 0usize);
    loop {
        let mut behind = false;
        for (client, sent) in clients.iter_mut().zip(&mut sent) {
            while produced < events && due(produced) <= Instant::now() {
                append_event(&mut log, produced, events);
                produced += 1;
            }
            if *sent < log.len() {
                writes += 1;
                if std::io::Write::write_all(client, &log[*sent..]).is_err() {
                    failed += 1;
                    *sent = usize::MAX;
                    continue;
                }
                *sent = log.len();
                behind = true;
            }
        }
        if !behind {
            if produced == events {
                break;
            }
            std::thread::sleep(due(produced).saturating_duration_since(Instant::now()));
        }
    }
    let cpu_s = own_cpu_seconds() - cpu_start;
    std::thread::sleep(Duration::from_millis(args.linger_ms));
    Ok(json!({
        "served": clients.len() - failed,
        "failed": failed,
        "writes": writes,
        "streaming_cpu_s": cpu_s,
        "cpu_us_per_write": cpu_s * 1e6 / writes.max(1) as f64,
    }))
}

fn accept_nodelay(listener: &std::net::TcpListener) -> Result<StdTcpStream, Error> {
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Appends event `index` of `events`, stamped now and framed as a chunk; the
/// last one carries `[DONE]` and the body's end as well.
fn append_event(log: &mut Vec<u8>, index: usize, events: usize) {
    let delta = match index {
        0 => r#"{"role":"assistant","content":""},"finish_reason":null"#.to_owned(),
        _ if index + 1 == events => r#"{},"finish_reason":"stop""#.to_owned(),
        _ => format!(r#"{{"content":"token{index} "}},"finish_reason":null"#),
    };
    let event = format!(
        "data: {{\"chorus_sent_ns\":{},\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\
         \"model\":\"floor\",\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}\n\n",
        wall_ns()
    );
    log.extend_from_slice(format!("{:X}\r\n{event}\r\n", event.len()).as_bytes());
    if index + 1 == events {
        log.extend_from_slice(b"E\r\ndata: [DONE]\n\n\r\n0\r\n\r\n");
    }
}

/// Reads one request (head and `Content-Length` body) and ignores it; false
/// if the connection closed first.
fn read_request(stream: &mut StdTcpStream) -> Result<bool, Error> {
    let mut received = Vec::with_capacity(2048);
    let mut chunk = [0; 4096];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(false);
        }
        received.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head) = request.parse(&received)? {
            let length = request
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("content-length"))
                .and_then(|header| std::str::from_utf8(header.value).ok()?.parse().ok())
                .unwrap_or(0);
            if received.len() >= head + length {
                return Ok(true);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// ttft

async fn ttft(args: TtftArgs) -> Result<Value, Error> {
    let mut send = connect(args.target.addr).await?;
    // One token with no pause: the whole stream follows its first event at
    // once, so the next request can go on the same connection right away.
    let mock = json!({ "tokens": 1, "interval_ms": 0 });
    let mut samples = Vec::with_capacity(args.requests);
    let mut failures = 0usize;
    for index in 0..args.warmup + args.requests {
        let body = chat_body(&args.tag, Some(index), &mock);
        let request = request(&args.target, body)?;
        send.ready().await?;
        let sent = Instant::now();
        let response = send.send_request(request).await?;
        let ok = response.status() == StatusCode::OK;
        let mut body = response.into_body();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if first.is_none() && frame.data_ref().is_some_and(|data| !data.is_empty()) {
                first = Some(sent.elapsed());
            }
        }
        match (ok, first) {
            (true, Some(first)) if index >= args.warmup => {
                samples.push(u64::try_from(first.as_nanos()).unwrap_or(u64::MAX));
            }
            (true, Some(_)) => {}
            _ => failures += 1,
        }
    }
    Ok(json!({
        "requests": args.requests,
        "failures": failures,
        "first_event_ms": summary_ms(&mut samples),
    }))
}

// ---------------------------------------------------------------------------
// cancel

async fn cancel(args: CancelArgs) -> Result<Value, Error> {
    let mut stats = connect(args.mock).await?;
    let mut samples: Vec<i64> = Vec::new();
    let mut failures = Vec::new();
    for round in 0..args.rounds {
        let before = mock_stats(&mut stats, args.mock).await?;
        if before["active"] != 0 {
            return Err(format!("the mock is busy before round {round}: {before}").into());
        }
        // A stream far longer than the round, so only a cancel ends it.
        let mock = json!({ "tokens": 100_000 });
        let body = chat_body(&format!("{} round {round}", args.tag), None, &mock);
        let head = raw_head(&args.target, body.len())?;
        let mut opened = JoinSet::new();
        for _ in 0..args.clients {
            let (addr, head, body) = (args.target.addr, head.clone(), body.clone());
            let events = args.events;
            opened.spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
                read_events(&mut stream, events).await?;
                Ok::<_, Error>(stream)
            });
        }
        let mut streams = Vec::new();
        while let Some(joined) = opened.join_next().await {
            match joined? {
                Ok(stream) => streams.push(stream),
                Err(error) => failures.push(error.to_string()),
            }
        }
        // Every client leaves; the clock starts when the last one has closed.
        // Dropping a tokio stream closes its socket there and then.
        drop(streams);
        let left = wall_ns();
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let now = mock_stats(&mut stats, args.mock).await?;
                if now["active"] == 0 {
                    return Ok::<_, Error>(now);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        match gone {
            Ok(Ok(after)) => {
                let seen = after["last_disconnect_ns"].as_u64().unwrap_or(0);
                samples.push(seen as i64 - left as i64);
            }
            Ok(Err(error)) => return Err(error),
            Err(_) => failures.push(format!("round {round}: upstream still active after 5 s")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let negative = samples.iter().filter(|&&sample| sample < 0).count();
    let mut positive: Vec<u64> = samples.iter().map(|&s| s.max(0) as u64).collect();
    Ok(json!({
        "rounds": args.rounds,
        "clients": args.clients,
        "failures": failures,
        "closed_before_last_client_left": negative,
        "cancel_ms": summary_ms(&mut positive),
    }))
}

fn raw_head(target: &Target, length: usize) -> Result<String, Error> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {length}\r\n",
        target.path, target.addr
    );
    for header in &target.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header {header:?}: expected `name: value`"))?;
        head.push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
    }
    head.push_str("\r\n");
    Ok(head)
}

/// Reads until `events` SSE `data:` lines have arrived.
async fn read_events(stream: &mut TcpStream, events: usize) -> Result<(), Error> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while count(&seen, b"data: ") < events {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            return Err(format!(
                "closed early: {}",
                String::from_utf8_lossy(&seen[..seen.len().min(200)])
            )
            .into());
        }
        seen.extend_from_slice(&buf[..read]);
    }
    Ok(())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

async fn mock_stats(send: &mut SendRequest<Full<Bytes>>, mock: SocketAddr) -> Result<Value, Error> {
    let request = Request::get("/stats")
        .header("host", mock.to_string())
        .body(Full::new(Bytes::new()))?;
    send.ready().await?;
    let response = send.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

// ---------------------------------------------------------------------------
// startup

fn startup(args: &StartupArgs) -> Result<Value, Error> {
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..args.runs {
        if StdTcpStream::connect(args.addr).is_ok() {
            return Err(format!("{} is already taken", args.addr).into());
        }
        let started = Instant::now();
        let mut child = Command::new(&args.command[0])
            .args(&args.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let waited = wait_port(args.addr, Duration::from_secs(10));
        let Some(_) = waited else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{:?} never accepted on {}", args.command, args.addr).into());
        };
        ready.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        let pid = child.id();
        let tree = process_tree(pid);
        let kib: u64 = tree
            .iter()
            .filter_map(|&pid| status_kib(pid, "VmRSS"))
            .sum();
        rss.push(kib);
        stop(&mut child);
        // The port is free again before the next run.
        let freed = Instant::now();
        while StdTcpStream::connect(args.addr).is_ok() && freed.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    rss.sort_unstable();
    Ok(json!({
        "runs": args.runs,
        "ready_ms": summary_ms(&mut ready),
        "idle_rss_kib_median": rss.get(rss.len() / 2),
        "idle_rss_kib_max": rss.last(),
    }))
}

/// Polls a connect every millisecond; the time it took, if it succeeded in time.
fn wait_port(addr: SocketAddr, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if StdTcpStream::connect(addr).is_ok() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// SIGTERM, then SIGKILL if it has not exited in 5 s.
fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `pid` and its children (nginx's workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let mut stat = String::new();
            let parent = std::fs::File::open(format!("/proc/{child}/stat"))
                .and_then(|mut file| file.read_to_string(&mut stat))
                .ok()
                .and_then(|_| {
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                });
            if parent == Some(pid) {
                tree.push(child);
            }
        }
    }
    tree
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
