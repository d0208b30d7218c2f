//! The `herald` binary: `herald serve` runs a node; `herald publish` and `herald subscribe`
//! are command-line clients of a running one.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use herald::{Config, Herald, Server};

/// jemalloc, with its background thread, gives the memory of closed streams and freed channels
/// back to the system (within about ten seconds, its decay time); glibc's malloc kept it, so a
/// node's RSS stayed at its highest point forever. The library leaves the choice to the
/// application; the figures are in docs/benchmarks.md ("Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tasks a runtime worker runs between two looks at the sockets (tokio's default is 61).
/// An event to a thousand streams wakes a thousand stream tasks, each a write; at 61, a reply
/// from Redis waited behind up to that many writes before its task was woken (0.33 ms, median,
/// in a traced fan-out), and so did the next publishes, and each stream's write carried fewer
/// events. At 15 the wait is 0.09 ms: on Redis 7 to 9% fewer write calls and 5 to 9% more
/// deliveries per CPU-second in that fan-out; the in-memory fan-out, the one-event-per-request
/// cases and latency unchanged within their noise (docs/benchmarks.md, issue 22's seventh
/// session). A look at the sockets with nothing new is one `epoll_wait` that returns at once.
const EVENT_INTERVAL: u32 = 15;

#[derive(Parser)]
#[command(name = "herald", version, about = "A real-time event hub: HTTP in, Server-Sent Events out.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
enum Command {
    /// Run a Herald node.
    Serve(ServeArgs),
    /// Publish an event (or a batch) to a running Herald; prints the event ids.
    Publish(cli::publish::PublishArgs),
    /// Follow channels of a running Herald and print their events; reconnects and resumes.
    Subscribe(cli::subscribe::SubscribeArgs),
}

/// Every flag is also read from the environment as `HERALD_<FLAG>`; flags win over the
/// environment, which wins over the config file, which wins over the defaults.
#[derive(Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<SocketAddr>,
    /// This node's id in status and logs.
    #[arg(long, env = "HERALD_NODE_ID")]
    node_id: Option<String>,
    /// Heartbeat interval on idle streams, like `15s` [default: 30s].
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Close streams that accept nothing for this long [default: 5m].
    #[arg(long, env = "HERALD_CLIENT_TIMEOUT", value_parser = humantime::parse_duration)]
    client_timeout: Option<Duration>,
    /// Events queued per connection before it is closed as a slow consumer [default: 256].
    #[arg(long, env = "HERALD_BUFFER_SIZE")]
    buffer_size: Option<usize>,
    /// Open connections per node; over it, 503 [default: 10000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Events kept per channel for resume [default: 100].
    #[arg(long, env = "HERALD_HISTORY_SIZE")]
    history_size: Option<usize>,
    /// How long events are kept for resume [default: 5m].
    #[arg(long, env = "HERALD_HISTORY_TTL", value_parser = humantime::parse_duration)]
    history_ttl: Option<Duration>,
    /// Time allowed to finish open requests on shutdown [default: 10s].
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS with HTTP/2.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Redis URL for several nodes (`redis://host:6379`, `rediss://` for TLS); absent means the
    /// in-memory engine.
    #[arg(long, env = "HERALD_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key and pub/sub channel [default: realtime].
    #[arg(long, env = "HERALD_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// PEM file of the CA of a `rediss://` server with a private CA.
    #[arg(long, env = "HERALD_REDIS_TLS_CA")]
    redis_tls_ca: Option<PathBuf>,
    /// The Redis URL names a Redis Cluster (seed nodes separated by commas).
    #[arg(long, env = "HERALD_REDIS_CLUSTER")]
    redis_cluster: bool,
    /// Send a run of a batch's events on one channel as one pub/sub batch message; only once
    /// every node runs a version that reads them (docs/configuration.md).
    #[arg(long, env = "HERALD_REDIS_BATCH_MESSAGES")]
    redis_batch_messages: bool,
    /// Redis Sentinels (`host:port`, separated by commas) to ask where the primary is, instead
    /// of --redis-url.
    #[arg(long, env = "HERALD_REDIS_SENTINELS", value_delimiter = ',')]
    redis_sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary by.
    #[arg(long, env = "HERALD_REDIS_SENTINEL_MASTER")]
    redis_sentinel_master: Option<String>,
    /// HS256 secret for user tokens (JWT).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A publisher API key with access to every channel (more, with scopes, in the config file).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Allow listening on a non-loopback address with no authentication configured.
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// Serve the demo page and its routes even with authentication configured (in dev mode
    /// they are served anyway).
    #[arg(long, env = "HERALD_DEMO")]
    demo: bool,
    /// Serve the WebSocket transport at `/api/ws` (docs/websocket.md).
    #[arg(long, env = "HERALD_WEBSOCKET")]
    websocket: bool,
    /// Open connections per user; over it, 429 [default: 5].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER")]
    max_connections_per_user: Option<usize>,
    /// Log format: `text` for people, `json` for one JSON object per line.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter, like `info` or `herald=debug`.
    #[arg(long, env = "HERALD_LOG", default_value = "info")]
    log: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { c.$field = v; } )* };
        }
        overlay!(
            listen,
            heartbeat_interval,
            client_timeout,
            buffer_size,
            max_connections,
            max_connections_per_user,
            history_size,
            history_ttl,
            drain_timeout
        );
        if self.redis_url.is_some() {
            c.redis_url.clone_from(&self.redis_url);
        }
        c.redis_cluster |= self.redis_cluster;
        c.redis_batch_messages |= self.redis_batch_messages;
        if !self.redis_sentinels.is_empty() {
            c.redis_sentinels.clone_from(&self.redis_sentinels);
        }
        if self.redis_sentinel_master.is_some() {
            c.redis_sentinel_master.clone_from(&self.redis_sentinel_master);
        }
        if let Some(prefix) = &self.redis_prefix {
            c.redis_prefix.clone_from(prefix);
        }
        if self.redis_tls_ca.is_some() {
            c.redis_tls_ca.clone_from(&self.redis_tls_ca);
        }
        if self.jwt_secret.is_some() {
            c.auth.jwt_secret.clone_from(&self.jwt_secret);
        }
        if let Some(key) = &self.api_key {
            c.api_keys.push(herald::config::ApiKeyConfig {
                name: "cli".to_owned(),
                key: key.clone(),
                channels: vec!["*".to_owned()],
                scopes: vec![herald::config::Scope::Publish],
            });
        }
        c.allow_anonymous |= self.allow_anonymous;
        c.demo |= self.demo;
        c.websocket |= self.websocket;
        if self.node_id.is_some() {
            c.node_id.clone_from(&self.node_id);
        }
        if self.tls_cert.is_some() {
            c.tls_cert.clone_from(&self.tls_cert);
            c.tls_key.clone_from(&self.tls_key);
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> std::process::ExitCode {
    let parsed = Cli::parse();
    let result = match parsed.command {
        Command::Serve(args) => serve(args),
        Command::Publish(args) => cli::publish::run(args),
        Command::Subscribe(args) => cli::subscribe::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, causes included: `error: cannot connect to ..: Connection refused`.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().event_interval(EVENT_INTERVAL).build()?;
    runtime.block_on(async move {
        if !config.auth_configured() {
            tracing::warn!(
                "dev mode: no authentication is configured; anonymous clients may subscribe and \
                 publish on channel: and system. Configure --jwt-secret or --api-key for production."
            );
        }
        // Listen for the signals before saying we are up, so that a SIGTERM sent as soon as
        // the listening line appears drains instead of killing the process.
        let shutdown = shutdown_signal()?;
        let herald = Herald::start(config).await?;
        // The demo page at `/` is part of `herald serve`, not of the router applications mount,
        // and only in dev mode or when asked for: its routes let users notify each other and
        // start CPU-heavy jobs.
        let mut router = herald::http::router(herald.clone());
        if herald.config().demo_enabled() {
            router = router.merge(herald::demo::router(herald.clone()));
        }
        // The demo's routes are none of the publish routes: publishes keep the lean path.
        let server = Server::bind_with_router(herald.clone(), router).await?.with_heralds_publish_routes();
        let addr = server.local_addr()?;
        let scheme = if herald.config().tls_cert.is_some() { "https" } else { "http" };
        tracing::info!(
            node = herald.node_id(),
            engine = herald.engine().name(),
            "herald listening on {scheme}://{addr}"
        );
        println!("herald listening on {scheme}://{addr}");
        server.run(shutdown).await?;
        tracing::info!("herald stopped");
        anyhow::Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        let term = async move {
            term.recv().await;
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, () = term => {} }
    })
}
