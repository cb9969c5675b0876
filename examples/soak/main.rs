//! The soak: runs the release `chorus` gateway and its mock upstream as two
//! processes, drives a bounded mixed load through the gateway — coalesced
//! herds, distinct streams, clients leaving before the head and mid-body,
//! upstream error statuses, streams that break or go silent, slow readers,
//! bypass requests, over HTTP/1.1 and HTTP/2, and WebSocket tunnels over both
//! (to an echo upstream in this process) — and samples the gateway's
//! RSS, open file descriptors, and active flights, subscribers, requests and
//! connections from its admin `/metrics`.
//!
//! It passes when
//! - every request ended the way its scenario says it must (a herd's bodies
//!   identical, a stream complete, a break abnormal, an error status passed on);
//! - after the load, flights, subscribers, requests, connections and
//!   buffered bytes return to 0 and open file descriptors to their count
//!   before the load (pooled upstream connections close after 90 to 180 s
//!   idle, so this waits up to 4 minutes);
//! - RSS does not grow: after a warm-up (the first 10% of the run, at least
//!   30 s), the median RSS of the last third of the samples is within 10% of
//!   the median of the first third.
//!
//! `soak/run.sh` builds and runs it; see `--help`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

mod load;
mod tunnel;
mod verdict;

use load::{Tally, worker};
use verdict::{judge, write_csv};

#[derive(Parser)]
#[command(about = "Soak test of the chorus gateway: bounded mixed load, resource samples, verdict")]
struct Args {
    /// The chorus binary (a release build).
    #[arg(long, default_value = "target/release/chorus")]
    chorus: PathBuf,
    /// How long the load runs, e.g. "10m", "90s".
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients, each running one scenario after another.
    #[arg(long, default_value_t = 48)]
    workers: usize,
    /// Time between samples.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Where the samples (CSV), the summary and the processes' logs go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One sample of the gateway process and its metrics.
#[derive(Clone, Debug, Default)]
struct Sample {
    at: f64,
    rss_kib: u64,
    fds: usize,
    flights: f64,
    subscribers: f64,
    requests_active: f64,
    connections: f64,
    buffered: f64,
    requests_total: f64,
}

impl Sample {
    /// Whether the gateway is back to idle: every series in [`IDLE_SERIES`]
    /// at 0, and no more open file descriptors than in `baseline`.
    fn is_idle(&self, baseline: &Sample) -> bool {
        self.flights == 0.0
            && self.subscribers == 0.0
            && self.requests_active == 0.0
            && self.connections == 0.0
            && self.buffered == 0.0
            && self.fds <= baseline.fds
    }
}

/// The idle values that must come back.
const IDLE_SERIES: [&str; 5] = [
    "chorus_flights_active{route=\"llm\"}",
    "chorus_subscribers_active{route=\"llm\"}",
    "chorus_requests_active",
    "chorus_connections_active",
    "chorus_buffered_bytes",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match soak(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

async fn wait_listening(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr} after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn spawn(chorus: &Path, args: &[&str], log: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(chorus)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", chorus.display()))
}

async fn soak(args: Args) -> Result<bool, String> {
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let (mock, gateway, admin) = (free_port()?, free_port()?, free_port()?);
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let echo_addr = echo.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(tunnel::echo_upstream(echo));
    let config = format!(
        r#"[server]
listen = "{gateway}"
shutdown_grace = "5s"
header_read_timeout = "10s"

[admin]
listen = "{admin}"

[[routes]]
name = "llm"
path_prefix = "/"
upstream = "http://{mock}"
first_byte_timeout = "10s"
idle_timeout = "2s"

[routes.coalesce]
linger = "200ms"

[[routes]]
name = "ws"
path_prefix = "/ws"
upstream = "http://{echo_addr}"
websocket = true
idle_timeout = "2s"
"#
    );
    let config_path = args.out.join("chorus.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let mock_addr = mock.to_string();
    let mut mock_child = spawn(
        &args.chorus,
        &[
            "mock-upstream",
            "--listen",
            &mock_addr,
            "--interval",
            "20ms",
        ],
        &args.out.join("mock.log"),
    )?;
    let config_arg = config_path.display().to_string();
    let mut gateway_child = spawn(
        &args.chorus,
        &["--config", &config_arg],
        &args.out.join("gateway.log"),
    )?;
    wait_listening(mock).await?;
    wait_listening(gateway).await?;
    wait_listening(admin).await?;
    let pid = gateway_child.id().ok_or("the gateway exited at once")?;

    let admin_client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let metrics_url = format!("http://{admin}/metrics");
    // Settle, then the idle values before any load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = sample(pid, &admin_client, &metrics_url, 0.0).await?;
    println!(
        "soak: gateway pid {pid} on {gateway}, mock on {mock}; idle: RSS {} KiB, {} fds; \
         {} workers for {:?}",
        baseline.rss_kib, baseline.fds, args.workers, args.duration
    );

    // The load.
    let started = Instant::now();
    let deadline = started + args.duration;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let base = format!("http://{gateway}");
    let h1: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let workers: Vec<_> = (0..args.workers)
        .map(|index| {
            let (h1, h2, base, tally) = (h1.clone(), h2.clone(), base.clone(), Arc::clone(&tally));
            tokio::spawn(worker(index as u64, h1, h2, base, deadline, tally))
        })
        .collect();

    // Samples while the load runs.
    let mut samples = vec![baseline.clone()];
    let mut next = Instant::now();
    while Instant::now() < deadline {
        next += args.sample;
        tokio::time::sleep_until(next.min(deadline)).await;
        let at = started.elapsed().as_secs_f64();
        samples.push(sample(pid, &admin_client, &metrics_url, at).await?);
    }
    let load_samples = samples.len();
    for worker in workers {
        let _ = worker.await;
    }
    // The clients leave: their pooled connections close.
    drop((h1, h2));

    // Back to idle: every series to 0, file descriptors to their count
    // before the load. Pooled upstream connections close once idle for 90 s,
    // found by a sweep that itself runs every 90 s: up to 3 minutes.
    let idle_deadline = Instant::now() + Duration::from_secs(240);
    let ended = Instant::now();
    let mut last;
    loop {
        let at = started.elapsed().as_secs_f64();
        last = sample(pid, &admin_client, &metrics_url, at).await?;
        samples.push(last.clone());
        if last.is_idle(&baseline) || Instant::now() > idle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let to_idle = ended.elapsed();

    // Drain and stop.
    let stopped = terminate(&mut gateway_child).await;
    let _ = terminate(&mut mock_child).await;

    let verdict = judge(
        &args,
        &baseline,
        &samples[..load_samples],
        &last,
        to_idle,
        &*tally.lock().await,
        stopped,
    );
    write_csv(&args.out.join("samples.csv"), &samples)?;
    let warnings = std::fs::read_to_string(args.out.join("gateway.log"))
        .map(|log| log.lines().filter(|line| line.contains("WARN")).count())
        .unwrap_or(0);
    let summary = format!(
        "{}\ngateway warnings logged: {warnings} (see {})\nsamples: {}\n",
        verdict.0,
        args.out.join("gateway.log").display(),
        args.out.join("samples.csv").display()
    );
    print!("{summary}");
    std::fs::write(args.out.join("summary.txt"), &summary).map_err(|e| e.to_string())?;
    Ok(verdict.1)
}

async fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    let pid = child.id()?;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

async fn sample(pid: u32, client: &HttpClient, url: &str, at: f64) -> Result<Sample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("the gateway is gone: {e}"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    let request = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "/metrics did not answer in 10 s".to_owned())?
        .map_err(|e| format!("/metrics: {e}"))?;
    let text = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    // Counted after the scrape, so that the sampler's own admin connection
    // is open at every count, the first one included.
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| e.to_string())?
        .count();
    let value = |series: &str| {
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    };
    let requests_total = text
        .lines()
        .filter(|line| line.starts_with("chorus_requests_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    Ok(Sample {
        at,
        rss_kib,
        fds,
        flights: value(IDLE_SERIES[0]),
        subscribers: value(IDLE_SERIES[1]),
        requests_active: value(IDLE_SERIES[2]),
        connections: value(IDLE_SERIES[3]),
        buffered: value(IDLE_SERIES[4]),
        requests_total,
    })
}
