//! `kivihook`: one binary, one subcommand per role.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use kivihook_core::broker::{MemoryBroker, RabbitBroker};
use kivihook_core::config::Overrides;
use kivihook_core::ops::{self, OpsState};
use kivihook_core::shutdown::{self, Shutdown};
use kivihook_core::store::key_check::KeyCheckError;
use kivihook_core::store::{MemoryStore, RedisStore};
use kivihook_core::{Broker, Config, Metrics, Store};
use kivihook_dispatcher::Dispatcher;
use kivihook_ingest::AppState;
use kivihook_scheduler::Scheduler;

mod cli;
mod dev;

/// The per-delivery path allocates many small buffers (JSON, headers, futures); mimalloc
/// spends a fraction of glibc's time on them (measured with the benchmark, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kivihook",
    version,
    about = "Reliable, signed webhook delivery for clinic events"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum Command {
    /// HTTP API: event intake and webhook management.
    Ingest,
    /// Consume events and deliver them to webhooks.
    Dispatcher,
    /// Move due retries back into RabbitMQ.
    Scheduler,
    /// All three roles in one process.
    All,
    /// Everything in one process with an in-memory broker and store, for trying KiviHook
    /// with no services at all. Nothing survives a restart.
    Dev,
    /// Manage webhooks through the API: list, get, create, apply a declarative file,
    /// export and import (backups).
    Webhooks {
        #[command(subcommand)]
        action: cli::WebhooksAction,
    },
    /// Send events through the API.
    Events {
        #[command(subcommand)]
        action: cli::EventsAction,
    },
    /// List and replay dead letters through the API.
    DeadLetters {
        #[command(subcommand)]
        action: cli::DeadLettersAction,
    },
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Dispatcher => "dispatcher",
            Self::Scheduler => "scheduler",
            Self::All => "all",
            Self::Dev => "dev",
            Self::Webhooks { .. } => "webhooks",
            Self::Events { .. } => "events",
            Self::DeadLetters { .. } => "dead-letters",
        }
    }

    /// The API client commands, which run apart from the roles and their configuration.
    fn client(&self) -> Option<cli::ClientCommand> {
        match self {
            Self::Webhooks { action } => Some(cli::ClientCommand::Webhooks(action.clone())),
            Self::Events { action } => Some(cli::ClientCommand::Events(action.clone())),
            Self::DeadLetters { action } => Some(cli::ClientCommand::DeadLetters(action.clone())),
            _ => None,
        }
    }

    fn serves_api(&self) -> bool {
        matches!(self, Self::Ingest | Self::All | Self::Dev)
    }

    fn dispatches(&self) -> bool {
        matches!(self, Self::Dispatcher | Self::All | Self::Dev)
    }

    fn schedules(&self) -> bool {
        matches!(self, Self::Scheduler | Self::All | Self::Dev)
    }
}

/// Flags override the config file, which overrides `KIVIHOOK_*` environment variables.
#[derive(Args)]
struct Settings {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// RabbitMQ URL, or the nodes of one cluster separated by commas [env: KIVIHOOK_AMQP_URL].
    #[arg(long, global = true)]
    amqp_url: Option<String>,
    /// Redis URL [env: KIVIHOOK_REDIS_URL].
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// Redis Cluster nodes, comma-separated; replaces the Redis URL [env: KIVIHOOK_REDIS_CLUSTER].
    #[arg(long, global = true)]
    redis_cluster: Option<String>,
    /// Replicas every accepted event and outcome must reach first [env: KIVIHOOK_REDIS_WAIT_REPLICAS].
    #[arg(long, global = true)]
    redis_wait_replicas: Option<String>,
    /// Seconds a write waits for those replicas [env: KIVIHOOK_REDIS_WAIT_TIMEOUT].
    #[arg(long, global = true)]
    redis_wait_timeout: Option<String>,
    /// HTTP listen address [env: KIVIHOOK_BIND].
    #[arg(long, global = true)]
    bind: Option<String>,
    /// Namespace of every Redis key and AMQP name [env: KIVIHOOK_PREFIX].
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// Admin bearer token [env: KIVIHOOK_ADMIN_TOKEN].
    #[arg(long, global = true)]
    admin_token: Option<String>,
    /// Ingest bearer token [env: KIVIHOOK_INGEST_TOKEN].
    #[arg(long, global = true)]
    ingest_token: Option<String>,
    /// Unacknowledged messages per dispatcher [env: KIVIHOOK_PREFETCH].
    #[arg(long, global = true)]
    prefetch: Option<String>,
    /// Events of one type one AMQP message may carry, 1 to 500 (ingest)
    /// [env: KIVIHOOK_EVENTS_PER_MESSAGE].
    #[arg(long, global = true)]
    events_per_message: Option<String>,
    /// Due retry jobs of one webhook one AMQP message may carry, 1 to 500 (scheduler)
    /// [env: KIVIHOOK_JOBS_PER_MESSAGE].
    #[arg(long, global = true)]
    jobs_per_message: Option<String>,
    /// Seconds before a delivery attempt times out [env: KIVIHOOK_DELIVERY_TIMEOUT].
    #[arg(long, global = true)]
    delivery_timeout: Option<String>,
    /// Largest accepted request body in bytes [env: KIVIHOOK_MAX_BODY_BYTES].
    #[arg(long, global = true)]
    max_body_bytes: Option<String>,
    /// Largest request body a webhook's templates may render, in bytes
    /// [env: KIVIHOOK_MAX_BODY].
    #[arg(long, global = true)]
    max_body: Option<String>,
    /// Seconds an event id is remembered for de-duplication [env: KIVIHOOK_DEDUP_WINDOW].
    #[arg(long, global = true)]
    dedup_window: Option<String>,
    /// Log format, json or text [env: KIVIHOOK_LOG_FORMAT].
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Seconds between attempts, comma-separated [env: KIVIHOOK_RETRY_SCHEDULE].
    #[arg(long, global = true)]
    retry_schedule: Option<String>,
    /// Unacknowledged retry messages per dispatcher [env: KIVIHOOK_RETRY_PREFETCH].
    #[arg(long, global = true)]
    retry_prefetch: Option<String>,
    /// Seconds a scheduler holds claimed jobs [env: KIVIHOOK_RETRY_LEASE].
    #[arg(long, global = true)]
    retry_lease: Option<String>,
    /// Seconds between schedule polls [env: KIVIHOOK_SCHEDULER_INTERVAL].
    #[arg(long, global = true)]
    scheduler_interval: Option<String>,
    /// Seconds between scans for stranded retry jobs [env: KIVIHOOK_STRANDED_SCAN_INTERVAL].
    #[arg(long, global = true)]
    stranded_scan_interval: Option<String>,
    /// Consecutive failures that open a circuit, 0 for never [env: KIVIHOOK_CIRCUIT_THRESHOLD].
    #[arg(long, global = true)]
    circuit_threshold: Option<String>,
    /// Seconds a circuit stays open [env: KIVIHOOK_CIRCUIT_COOLDOWN].
    #[arg(long, global = true)]
    circuit_cooldown: Option<String>,
    /// Seconds a webhook must fail without a success before its circuit opens [env: KIVIHOOK_CIRCUIT_MIN_FAILING].
    #[arg(long, global = true)]
    circuit_min_failing: Option<String>,
    /// Seconds of failing before a webhook is disabled [env: KIVIHOOK_AUTO_DISABLE_AFTER].
    #[arg(long, global = true)]
    auto_disable_after: Option<String>,
    /// Requests in flight per webhook per dispatcher [env: KIVIHOOK_WEBHOOK_CONCURRENCY].
    #[arg(long, global = true)]
    webhook_concurrency: Option<String>,
    /// Label failure metrics by webhook id, a series per webhook
    /// [env: KIVIHOOK_METRICS_WEBHOOK_LABELS].
    #[arg(long, global = true)]
    metrics_webhook_labels: Option<String>,
    /// YAML or JSON file of webhooks that ingest applies at start [env: KIVIHOOK_WEBHOOKS_FILE].
    #[arg(long, global = true)]
    webhooks_file: Option<String>,
    /// The API the client commands talk to; default: this host at KIVIHOOK_BIND's port
    /// [env: KIVIHOOK_API_URL].
    #[arg(long, global = true)]
    api_url: Option<String>,
}

impl Settings {
    fn overrides(&self) -> Overrides {
        [
            ("amqp_url", &self.amqp_url),
            ("redis_url", &self.redis_url),
            ("redis_cluster", &self.redis_cluster),
            ("redis_wait_replicas", &self.redis_wait_replicas),
            ("redis_wait_timeout", &self.redis_wait_timeout),
            ("bind", &self.bind),
            ("prefix", &self.prefix),
            ("admin_token", &self.admin_token),
            ("ingest_token", &self.ingest_token),
            ("prefetch", &self.prefetch),
            ("events_per_message", &self.events_per_message),
            ("jobs_per_message", &self.jobs_per_message),
            ("delivery_timeout", &self.delivery_timeout),
            ("max_body_bytes", &self.max_body_bytes),
            ("max_body", &self.max_body),
            ("dedup_window", &self.dedup_window),
            ("log_format", &self.log_format),
            ("retry_schedule", &self.retry_schedule),
            ("retry_prefetch", &self.retry_prefetch),
            ("retry_lease", &self.retry_lease),
            ("scheduler_interval", &self.scheduler_interval),
            ("stranded_scan_interval", &self.stranded_scan_interval),
            ("circuit_threshold", &self.circuit_threshold),
            ("circuit_cooldown", &self.circuit_cooldown),
            ("circuit_min_failing", &self.circuit_min_failing),
            ("auto_disable_after", &self.auto_disable_after),
            ("webhook_concurrency", &self.webhook_concurrency),
            ("metrics_webhook_labels", &self.metrics_webhook_labels),
            ("webhooks_file", &self.webhooks_file),
            ("api_url", &self.api_url),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
        .collect()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command.client() {
        // Client commands read only the API address and the tokens: they must not need the
        // servers' secret key, RabbitMQ or Redis.
        return cli::run(
            command,
            cli.settings.config.as_deref(),
            &cli.settings.overrides(),
        );
    }
    let config = match Config::load(cli.settings.config.as_deref(), &cli.settings.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kivihook: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.command != Command::Dev && config.secret_key.is_none() {
        eprintln!(
            "kivihook: invalid configuration: KIVIHOOK_SECRET_KEY: is required to seal signing secrets and credentials in Redis: 32 random bytes in base64 (openssl rand -base64 32); `kivihook dev` runs without it"
        );
        return ExitCode::from(2);
    }
    if cli.command.serves_api() {
        if let Some(path) = &config.webhooks_file {
            if let Err(e) = kivihook_ingest::declared::check(path) {
                eprintln!(
                    "kivihook: invalid configuration: KIVIHOOK_WEBHOOKS_FILE: {} {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    kivihook_core::telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kivihook: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<StartError>() => {
            eprintln!("kivihook: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "kivihook stopped with an error");
            eprintln!("kivihook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        tracing::info!("shutdown requested");
        trigger.trigger();
    });

    if config.generated_tokens && command.serves_api() && command != Command::Dev {
        // Shown once, on stderr and not in the log stream.
        eprintln!(
            "kivihook: no tokens configured; generated for this run:\n  KIVIHOOK_ADMIN_TOKEN={}\n  KIVIHOOK_INGEST_TOKEN={}",
            config.admin_token.expose(),
            config.ingest_token.expose()
        );
    }

    let metrics = Metrics::new();
    let (broker, store): (Arc<dyn Broker>, Arc<dyn Store>) = if command == Command::Dev {
        dev::prepare(&mut config);
        (Arc::new(MemoryBroker::new()), Arc::new(MemoryStore::new()))
    } else {
        let redials = metrics
            .redis_reconnects
            .with_label_values(&[command.name()]);
        let Some(store) = connect_store(&config, redials, shutdown.clone()).await? else {
            return Ok(());
        };
        if command.schedules() {
            tokio::spawn(migrate_legacy_layout(store.clone(), shutdown.clone()));
        }
        let broker = Arc::new(RabbitBroker::new(
            &config.amqp_urls(),
            &config.prefix,
            metrics.clone(),
            command.name(),
        ));
        (broker, store)
    };
    if let (true, Some(path)) = (command.serves_api(), &config.webhooks_file) {
        let applied = kivihook_ingest::declared::apply(store.as_ref(), path)
            .await
            .map_err(|e| {
                anyhow::anyhow!("applying KIVIHOOK_WEBHOOKS_FILE {}: {e}", path.display())
            })?;
        tracing::info!(
            created = applied.created,
            updated = applied.updated,
            unchanged = applied.unchanged,
            "declared webhooks applied"
        );
    }
    // Connect (and declare the topology) now rather than on the first event; a failure here
    // is not fatal, the broker handle keeps reconnecting on use.
    let warm = broker.clone();
    tokio::spawn(async move {
        let _ = warm.ready().await;
    });

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {} (KIVIHOOK_BIND)", config.bind))?;
    let addr = listener.local_addr()?;

    let router = if command == Command::Dev {
        let router = kivihook_ingest::router(AppState::new(
            &config,
            broker.clone(),
            store.clone(),
            metrics.clone(),
        )?);
        dev::start(router, store.as_ref(), addr, &config).await?
    } else if command.serves_api() {
        kivihook_ingest::router(AppState::new(
            &config,
            broker.clone(),
            store.clone(),
            metrics.clone(),
        )?)
    } else {
        ops::router(OpsState {
            metrics: metrics.clone(),
            broker: broker.clone(),
            store: store.clone(),
        })
    };

    let mut roles = tokio::task::JoinSet::new();
    if command.dispatches() {
        let d = Arc::new(Dispatcher::new(
            &config,
            broker.clone(),
            store.clone(),
            metrics.clone(),
        )?);
        roles.spawn(d.run(shutdown.clone()));
    }
    if command.schedules() {
        let s = Arc::new(Scheduler::new(
            &config,
            broker.clone(),
            store.clone(),
            metrics.clone(),
        ));
        roles.spawn(s.run(shutdown.clone()));
    }

    tracing::info!(role = command.name(), addr = %addr, prefix = %config.prefix, version = kivihook_core::VERSION, "listening");
    let mut serve_shutdown = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { serve_shutdown.wait().await })
        .await
        .context("HTTP server failed")?;
    while roles.join_next().await.is_some() {}
    // Close the broker connections before the runtime stops, which would cut them.
    broker.close().await;
    // The AMQP client's I/O loops notice their closed connections on their next turn; give
    // them that turn before the runtime stops under them.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    tracing::info!(role = command.name(), "stopped");
    Ok(())
}

/// Move retry jobs and dead letters that a previous version wrote in its key layout, now and
/// every minute (older dispatchers may still write it during a rolling upgrade).
async fn migrate_legacy_layout(store: Arc<RedisStore>, mut shutdown: Shutdown) {
    loop {
        if let Err(e) = store.migrate_legacy().await {
            tracing::warn!(error = %e, "could not move records of the previous key layout; trying again in a minute");
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// How long a role tries to reach a Redis Cluster at start before it gives up: a node list
/// that reaches nothing is a configuration error, not an outage to wait out.
const CLUSTER_START_DEADLINE: Duration = Duration::from_secs(15);

/// A start-up problem that is the configuration's: exit code 2, one line naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {message}")]
struct StartError {
    setting: &'static str,
    message: String,
}

/// Connect to Redis (or a Redis Cluster), retrying with backoff until it answers or
/// shutdown is requested.
async fn connect_store(
    config: &Config,
    redials: prometheus::IntCounter,
    mut shutdown: Shutdown,
) -> anyhow::Result<Option<Arc<RedisStore>>> {
    let mut backoff = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let cluster = !config.redis_cluster.is_empty();
    loop {
        let connected = if cluster {
            RedisStore::connect_cluster_counted(
                &config.redis_cluster,
                &config.prefix,
                Some(redials.clone()),
            )
            .await
        } else {
            RedisStore::connect_counted(&config.redis_url, &config.prefix, Some(redials.clone()))
                .await
        };
        match connected {
            Ok(store) => {
                let store = store
                    .with_secret_key(config.secret_key.clone())
                    .with_dedup_window(config.dedup_window)
                    .with_wait_replicas(config.redis_wait_replicas, config.redis_wait_timeout);
                match store.check_secret_key().await {
                    Ok(()) => {
                        store.check_durability().await;
                        if let Err(e) = store.check_dedup_layout().await {
                            // Read again on the first claim or lookup.
                            tracing::warn!(error = %e, "cannot read the dedup layout yet");
                        }
                        return Ok(Some(Arc::new(store)));
                    }
                    Err(KeyCheckError::Mismatch(message)) => {
                        return Err(StartError {
                            setting: "KIVIHOOK_SECRET_KEY",
                            message,
                        }
                        .into());
                    }
                    // Redis went away between connecting and the check: as if it had not
                    // answered, try again.
                    Err(KeyCheckError::Store(e)) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot check KIVIHOOK_SECRET_KEY against Redis");
                        tokio::select! {
                            _ = shutdown.wait() => return Ok(None),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Err(e) if cluster && started.elapsed() >= CLUSTER_START_DEADLINE => {
                return Err(StartError {
                    setting: "KIVIHOOK_REDIS_CLUSTER",
                    message: format!(
                        "no node of {} answered within {} s ({})",
                        kivihook_core::config::without_password(&config.redis_cluster.join(",")),
                        CLUSTER_START_DEADLINE.as_secs(),
                        kivihook_core::config::without_password(&e.to_string())
                    ),
                }
                .into());
            }
            Err(e) => {
                let setting = if cluster {
                    "KIVIHOOK_REDIS_CLUSTER"
                } else {
                    "KIVIHOOK_REDIS_URL"
                };
                let error = kivihook_core::config::without_password(&e.to_string());
                tracing::warn!(
                    error,
                    setting,
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot connect to Redis"
                );
                tokio::select! {
                    _ = shutdown.wait() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
