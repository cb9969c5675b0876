//! The `chorus` command line: run the gateway, check a config, run the demo,
//! or run the built-in mock upstream. Parses, loads, binds, and hands over to
//! [`chorus::run`].

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use http::Uri;
use tokio::net::TcpListener;
use tokio::signal::unix::SignalKind;
use tokio_util::sync::CancellationToken;

use chorus::config::{AdminConfig, Config, ConfigError, RouteConfig, ServerConfig};
use chorus::mock::{self, MockOptions, MockStats};
use chorus::{Listeners, RunOptions, StartError};

mod cli;

use cli::health::health;
use cli::process::{
    raise_open_files_limit, return_memory_in_the_background, warn_if_few_open_files,
};
use cli::signals::{Signals, listen_for, reload_on_sighup};

/// jemalloc, for numbers measured side by side with the system allocator and
/// mimalloc (README, Allocator): less CPU per request and per stream than
/// either, and less memory per streaming client.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for a configuration that cannot start.
const EXIT_CONFIG: u8 = 2;
/// Exit status for a command line that cannot be carried out, as clap's.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "chorus",
    version,
    about = "A streaming gateway that coalesces identical in-flight LLM requests"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigOption,
    /// Log format on stderr.
    #[arg(long, global = true, env = "CHORUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--config`, which only the commands that read a config take (given
/// before the command, the others refuse it).
#[derive(clap::Args, Default)]
struct ConfigOption {
    /// The config file (default: $CHORUS_CONFIG, else config/chorus.toml).
    // Read by `config_path`, not by clap: clap takes a set but empty
    // variable for a missing value, where an unset one is meant.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway (the default).
    Run(ConfigOption),
    /// Validates the config: exit 0, or every problem and exit 2.
    Check(ConfigOption),
    /// Starts the mock upstream and the gateway in front of it, to try things.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin endpoints listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Runs the built-in mock OpenAI-compatible SSE upstream alone.
    MockUpstream(MockOptions),
    /// GETs an admin endpoint: exit 0 on 200 OK, else 1 (a container health check).
    Health {
        /// The URL to ask (plain http://).
        #[arg(long, default_value = DEFAULT_HEALTH_URL)]
        url: Uri,
        /// How long the whole check may take, e.g. "2s".
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Where `chorus health` asks by default: the admin listener of the example
/// config and of `chorus demo`.
const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:9090/healthz";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // The work-stealing scheduler even on one core: a task woken by its own
    // worker runs next (the LIFO slot), so a flight's pump appends a new chunk
    // while the subscribers woken for the last one are still queued, and they
    // send both in one write. The single-threaded scheduler's strict FIFO puts
    // the pump behind all of them: one write per chunk per subscriber, and a
    // 10,000-client fan-out fell seconds behind (bench/run.sh, README).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chorus: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Run(ConfigOption::default()));
    let own_settings = match command {
        Command::Demo { .. } => Some("demo"),
        Command::MockUpstream(_) => Some("mock-upstream"),
        Command::Health { .. } => Some("health"),
        Command::Run(_) | Command::Check(_) => None,
    };
    if let (Some(name), Some(_)) = (own_settings, &cli.config.config) {
        // Ignored, it would look as if the file were in use.
        eprintln!("chorus: `{name}` reads no config file; drop --config");
        return ExitCode::from(EXIT_USAGE);
    }
    if matches!(
        command,
        Command::Run(_) | Command::Demo { .. } | Command::MockUpstream(_)
    ) {
        raise_open_files_limit();
        return_memory_in_the_background();
    }
    match command {
        Command::Run(own) => runtime.block_on(run(config_path(own, cli.config))),
        Command::Check(own) => check(&config_path(own, cli.config)),
        Command::Demo { listen, admin } => runtime.block_on(demo(listen, admin)),
        Command::MockUpstream(options) => runtime.block_on(mock_upstream(options)),
        Command::Health { url, timeout } => runtime.block_on(health(url, timeout)),
    }
}

/// `--config` (the command's own, else the one before it), else
/// `$CHORUS_CONFIG` unless empty, else `config/chorus.toml`.
fn config_path(own: ConfigOption, before: ConfigOption) -> PathBuf {
    own.config
        .or(before.config)
        .or_else(|| {
            std::env::var_os("CHORUS_CONFIG")
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("config/chorus.toml"))
}

/// `RUST_LOG` if set and not empty (empty would log nothing), else `info`;
/// dependencies that print parts of requests held to `info` whatever it says.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(chorus::logging::dependency_cap())
        .with(lines)
        .init();
}

/// A valid config whose TLS files are usable; else every problem with
/// either, printed, and the exit code.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let file = path.display().to_string();
    let error = match Config::load(path) {
        Ok(config) => {
            let problems = chorus::tls::check(&config, &file);
            if problems.is_empty() {
                return Ok(config);
            }
            ConfigError {
                problems,
                tls_files: Default::default(),
            }
        }
        // The files named by valid keys are read all the same, so that one
        // run of `chorus check` reports everything.
        Err(mut error) => {
            error.add(chorus::tls::check_files(&error.tls_files, &file));
            error
        }
    };
    eprintln!("{error}");
    Err(ExitCode::from(EXIT_CONFIG))
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn run(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(config) => config,
        Err(code) => {
            if let Ok(false) = path.try_exists() {
                eprintln!("{}", missing_config_hint(&path));
            }
            return code;
        }
    };
    warn_if_few_open_files(config.server.max_connections);
    let listeners = match bind(&config) {
        Ok(listeners) => listeners,
        Err(code) => return code,
    };
    let signals = Signals::listen();
    let (listen, admin) = bound(&config, &listeners);
    tracing::info!(
        listen = %listen,
        admin = admin.map_or_else(|| "none".to_owned(), |admin| admin.to_string()),
        routes = config.routes.len(),
        "chorus is ready"
    );
    serve(config, listeners, signals).await
}

/// The addresses actually listened on: a configured port 0 becomes the
/// port the system picked.
fn bound(config: &Config, listeners: &Listeners) -> (SocketAddr, Option<SocketAddr>) {
    let listen = listeners
        .gateway
        .local_addr()
        .unwrap_or(config.server.listen);
    let admin = match (&listeners.admin, &config.admin) {
        (Some(listener), Some(admin)) => Some(listener.local_addr().unwrap_or(admin.listen)),
        (Some(listener), None) => listener.local_addr().ok(),
        (None, _) => None,
    };
    (listen, admin)
}

async fn serve(config: Config, listeners: Listeners, signals: Signals) -> ExitCode {
    let (reload, requests) = chorus::tls::reload_channel();
    tokio::spawn(reload_on_sighup(signals.hangup, reload));
    let (drain, hurry) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(Signals::drain_then_hurry(
        signals.terminate,
        signals.interrupt,
        drain.clone(),
        hurry.clone(),
    ));
    let options = RunOptions {
        reload: Some(requests),
        hurry: Some(hurry),
        ..RunOptions::default()
    };
    match chorus::run_with(config, listeners, drain.cancelled_owned(), options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ (StartError::UpstreamTls { .. } | StartError::ServerTls(_))) => {
            eprintln!("chorus: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn bind(config: &Config) -> Result<Listeners, ExitCode> {
    let gateway = bind_one("server.listen", config.server.listen)?;
    let admin = match &config.admin {
        Some(admin) => Some(bind_one("admin.listen", admin.listen)?),
        None => None,
    };
    Ok(Listeners { gateway, admin })
}

fn bind_one(key: &str, address: SocketAddr) -> Result<TcpListener, ExitCode> {
    listener(address).map_err(|error| {
        eprintln!("chorus: {key}: cannot listen on {address}: {error}");
        ExitCode::FAILURE
    })
}

/// Pending connections the kernel may queue (capped by `net.core.somaxconn`):
/// a herd of clients arriving at once must not overflow the queue into SYN
/// retransmits (a second each), as the default of 128 would.
const LISTEN_BACKLOG: u32 = 4096;

fn listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn demo(listen: SocketAddr, admin: SocketAddr) -> ExitCode {
    let upstream = match listener(SocketAddr::from(([127, 0, 0, 1], 0))) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("chorus: cannot start the mock upstream: {error}");
            return ExitCode::FAILURE;
        }
    };
    let upstream_addr = match upstream.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("chorus: cannot start the mock upstream: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = MockOptions {
        listen: upstream_addr,
        ..MockOptions::default()
    };
    tokio::spawn(mock::serve(
        upstream,
        options,
        Arc::new(MockStats::default()),
        std::future::pending(),
    ));

    let upstream_url = format!("http://{upstream_addr}");
    let route = match upstream_url.parse() {
        Ok(uri) => RouteConfig::new("llm".to_owned(), "/".to_owned(), uri),
        Err(error) => {
            eprintln!("chorus: bad mock upstream address {upstream_url}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        server: ServerConfig::new(listen),
        admin: Some(AdminConfig { listen: admin }),
        routes: vec![route],
    };
    let listeners = match bind(&config) {
        Ok(listeners) => listeners,
        Err(code) => return code,
    };
    let signals = Signals::listen();
    // With port 0 asked for, print the ports actually picked.
    let (listen, bound_admin) = bound(&config, &listeners);
    let admin = bound_admin.unwrap_or(admin);
    println!(
        r#"chorus demo
  gateway    http://{listen}   (route "llm" -> mock upstream {upstream_url}, coalescing on)
  metrics    http://{admin}/metrics
  upstream   {upstream_url}/stats   (what the mock upstream actually received)

Stream a chat completion (run it in three terminals at once: three streams, one upstream request):
  curl -N http://{listen}/v1/chat/completions -H 'content-type: application/json' -d '{{"model":"mock","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

Ctrl-C drains and stops."#
    );
    serve(config, listeners, signals).await
}

async fn mock_upstream(options: MockOptions) -> ExitCode {
    let listener = match listener(options.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("chorus: cannot listen on {}: {error}", options.listen);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = Signals::shutdown(
        listen_for(SignalKind::terminate(), "SIGTERM"),
        listen_for(SignalKind::interrupt(), "SIGINT"),
    );
    let listen = listener.local_addr().unwrap_or(options.listen);
    tracing::info!(listen = %listen, "mock upstream is ready");
    let stats = Arc::new(MockStats::default());
    match mock::serve(listener, options, stats, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chorus: mock upstream failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What to do when the config file is not there (above all: a container
/// started without its config mounted).
fn missing_config_hint(path: &std::path::Path) -> String {
    let absolute = path.is_absolute();
    let path = path.display();
    let mount = if absolute {
        format!(
            "mount yours there (docker run -v \"$PWD/chorus.toml:{path}\" ...; in Kubernetes a ConfigMap), "
        )
    } else {
        String::new()
    };
    format!(
        "chorus: there is no config file at {path}: {mount}name one with --config or \
         $CHORUS_CONFIG, or try `chorus demo`. config/chorus.toml in the source \
         documents every key."
    )
}
