//! Typed configuration, layered: defaults, then `KIVIHOOK_*` environment variables, then the
//! optional TOML file (`--config`), then command-line flags; the later source wins.
//!
//! Every setting has one row in `SETTINGS`, so its environment name, file key and flag can
//! never drift apart, and every error names the setting in the form its source used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::retry::RetrySchedule;

/// A secret string that cannot be printed by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The validated configuration every role starts from.
#[derive(Debug, Clone)]
pub struct Config {
    /// As given: one AMQP URL, or the nodes of one cluster separated by commas
    /// (`amqp_urls` splits it).
    pub amqp_url: String,
    pub redis_url: String,
    pub bind: SocketAddr,
    pub prefix: String,
    pub admin_token: Secret,
    pub ingest_token: Secret,
    /// Whether the tokens were generated at start (and must be shown once).
    pub generated_tokens: bool,
    pub prefetch: u16,
    /// Events of one type that one AMQP message may carry (ingest): a batch request's events
    /// travel together, so the broker's cost is paid per message, not per event.
    pub events_per_message: usize,
    /// Due retry jobs of one webhook that one AMQP message may carry (scheduler): the
    /// broker's cost is paid per message, not per retry.
    pub jobs_per_message: usize,
    pub delivery_timeout: Duration,
    pub max_body_bytes: usize,
    /// The largest request body a webhook's templates may render (`KIVIHOOK_MAX_BODY`);
    /// a larger one fails its attempt and nothing is sent.
    pub max_body: usize,
    pub dedup_window: Duration,
    pub log_format: LogFormat,
    /// Delays between attempts, unless a webhook sets its own.
    pub retry_schedule: RetrySchedule,
    /// Unacknowledged retry messages per dispatcher: a budget separate from first attempts.
    pub retry_prefetch: u16,
    /// How long a scheduler may hold claimed jobs before another takes them back.
    pub retry_lease: Duration,
    /// How often a scheduler looks for due jobs.
    pub scheduler_interval: Duration,
    /// How often a scheduler looks for stranded retry jobs (a body neither scheduled nor
    /// leased); one found on two scans in a row is scheduled again.
    pub stranded_scan_interval: Duration,
    /// Consecutive failures that open a webhook's circuit (0: never).
    pub circuit_threshold: u64,
    pub circuit_cooldown: Duration,
    /// How long a webhook must have failed without a single success (besides
    /// `circuit_threshold` failures in a row) before its circuit opens: a receiver whose
    /// retries succeed while first attempts fail never trips it.
    pub circuit_min_failing: Duration,
    /// A webhook failing without a success for this long is disabled.
    pub auto_disable_after: Duration,
    /// Requests in flight to one webhook from one dispatcher, unless it sets its own cap.
    pub webhook_concurrency: u32,
    /// Write metrics labelled by webhook id: a series per webhook, so off unless asked for.
    pub metrics_webhook_labels: bool,
    /// Webhooks declared for GitOps, applied by ingest at start.
    pub webhooks_file: Option<std::path::PathBuf>,
    /// Seals signing secrets at rest in Redis.
    pub secret_key: Option<crate::crypto::SecretBox>,
    /// Which addresses webhooks may reach.
    pub outbound: crate::outbound::Guard,
    /// Seed nodes of a Redis Cluster; when set, `redis_url` is not used.
    pub redis_cluster: Vec<String>,
    /// Replicas that must have every write of the accept and outcome paths (`WAIT`).
    pub redis_wait_replicas: u32,
    /// How long such a write waits for them before it counts as failed.
    pub redis_wait_timeout: Duration,
}

/// One configuration problem: which setting, from which source, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

/// A setting's three names.
struct Setting {
    key: &'static str,
    env: &'static str,
    flag: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        key: "amqp_url",
        env: "KIVIHOOK_AMQP_URL",
        flag: "--amqp-url",
    },
    Setting {
        key: "redis_url",
        env: "KIVIHOOK_REDIS_URL",
        flag: "--redis-url",
    },
    Setting {
        key: "bind",
        env: "KIVIHOOK_BIND",
        flag: "--bind",
    },
    Setting {
        key: "prefix",
        env: "KIVIHOOK_PREFIX",
        flag: "--prefix",
    },
    Setting {
        key: "admin_token",
        env: "KIVIHOOK_ADMIN_TOKEN",
        flag: "--admin-token",
    },
    Setting {
        key: "ingest_token",
        env: "KIVIHOOK_INGEST_TOKEN",
        flag: "--ingest-token",
    },
    Setting {
        key: "prefetch",
        env: "KIVIHOOK_PREFETCH",
        flag: "--prefetch",
    },
    Setting {
        key: "events_per_message",
        env: "KIVIHOOK_EVENTS_PER_MESSAGE",
        flag: "--events-per-message",
    },
    Setting {
        key: "jobs_per_message",
        env: "KIVIHOOK_JOBS_PER_MESSAGE",
        flag: "--jobs-per-message",
    },
    Setting {
        key: "delivery_timeout",
        env: "KIVIHOOK_DELIVERY_TIMEOUT",
        flag: "--delivery-timeout",
    },
    Setting {
        key: "max_body_bytes",
        env: "KIVIHOOK_MAX_BODY_BYTES",
        flag: "--max-body-bytes",
    },
    Setting {
        key: "max_body",
        env: "KIVIHOOK_MAX_BODY",
        flag: "--max-body",
    },
    Setting {
        key: "dedup_window",
        env: "KIVIHOOK_DEDUP_WINDOW",
        flag: "--dedup-window",
    },
    Setting {
        key: "log_format",
        env: "KIVIHOOK_LOG_FORMAT",
        flag: "--log-format",
    },
    Setting {
        key: "retry_schedule",
        env: "KIVIHOOK_RETRY_SCHEDULE",
        flag: "--retry-schedule",
    },
    Setting {
        key: "retry_prefetch",
        env: "KIVIHOOK_RETRY_PREFETCH",
        flag: "--retry-prefetch",
    },
    Setting {
        key: "retry_lease",
        env: "KIVIHOOK_RETRY_LEASE",
        flag: "--retry-lease",
    },
    Setting {
        key: "scheduler_interval",
        env: "KIVIHOOK_SCHEDULER_INTERVAL",
        flag: "--scheduler-interval",
    },
    Setting {
        key: "stranded_scan_interval",
        env: "KIVIHOOK_STRANDED_SCAN_INTERVAL",
        flag: "--stranded-scan-interval",
    },
    Setting {
        key: "circuit_threshold",
        env: "KIVIHOOK_CIRCUIT_THRESHOLD",
        flag: "--circuit-threshold",
    },
    Setting {
        key: "circuit_min_failing",
        env: "KIVIHOOK_CIRCUIT_MIN_FAILING",
        flag: "--circuit-min-failing",
    },
    Setting {
        key: "circuit_cooldown",
        env: "KIVIHOOK_CIRCUIT_COOLDOWN",
        flag: "--circuit-cooldown",
    },
    Setting {
        key: "auto_disable_after",
        env: "KIVIHOOK_AUTO_DISABLE_AFTER",
        flag: "--auto-disable-after",
    },
    Setting {
        key: "outbound_allow",
        env: "KIVIHOOK_OUTBOUND_ALLOW",
        flag: "--outbound-allow",
    },
    Setting {
        key: "require_https",
        env: "KIVIHOOK_REQUIRE_HTTPS",
        flag: "--require-https",
    },
    Setting {
        key: "outbound_proxy",
        env: "KIVIHOOK_OUTBOUND_PROXY",
        flag: "--outbound-proxy",
    },
    Setting {
        key: "secret_key",
        env: "KIVIHOOK_SECRET_KEY",
        flag: "--secret-key",
    },
    Setting {
        key: "webhooks_file",
        env: "KIVIHOOK_WEBHOOKS_FILE",
        flag: "--webhooks-file",
    },
    Setting {
        key: "webhook_concurrency",
        env: "KIVIHOOK_WEBHOOK_CONCURRENCY",
        flag: "--webhook-concurrency",
    },
    Setting {
        key: "metrics_webhook_labels",
        env: "KIVIHOOK_METRICS_WEBHOOK_LABELS",
        flag: "--metrics-webhook-labels",
    },
    Setting {
        key: "redis_cluster",
        env: "KIVIHOOK_REDIS_CLUSTER",
        flag: "--redis-cluster",
    },
    Setting {
        key: "redis_wait_replicas",
        env: "KIVIHOOK_REDIS_WAIT_REPLICAS",
        flag: "--redis-wait-replicas",
    },
    Setting {
        key: "redis_wait_timeout",
        env: "KIVIHOOK_REDIS_WAIT_TIMEOUT",
        flag: "--redis-wait-timeout",
    },
    // Read only by the API client commands; a role ignores it, so one file serves both.
    Setting {
        key: "api_url",
        env: "KIVIHOOK_API_URL",
        flag: "--api-url",
    },
];

/// A comma-separated list of Redis Cluster nodes, each a `redis://` or `rediss://` URL.
fn parse_cluster_nodes(v: &str) -> Result<Vec<String>, String> {
    let nodes: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        return Err(
            "must list at least one node, like redis://10.0.0.1:6379,redis://10.0.0.2:6379".into(),
        );
    }
    for n in &nodes {
        // Named without its password: error lines end up in logs.
        let shown = without_password(n);
        if !(n.starts_with("redis://") || n.starts_with("rediss://")) {
            return Err(format!("{shown:?} must be a redis:// or rediss:// URL"));
        }
        redis::Client::open(n.as_str()).map_err(|e| {
            format!(
                "{shown:?} is not a Redis URL ({})",
                without_password(&e.to_string())
            )
        })?;
    }
    Ok(nodes)
}

/// A URL (or any text holding one) with the password of each `scheme://user:password@`
/// replaced by `****`.
pub fn without_password(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', whitespace or quote.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":****");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Raw values by setting key, as given on the command line (flags without their `--`).
pub type Overrides = BTreeMap<String, String>;

/// Where a raw value came from, to name it in errors.
#[derive(Clone, Copy)]
enum Source {
    Env,
    File,
    Flag,
}

impl Config {
    /// The RabbitMQ nodes `amqp_url` lists, in its order: every connection dials the first
    /// that answers and, when it is lost, the next one round the list, so one installation
    /// can be pointed at every node of a cluster rather than at one node or a load balancer.
    pub fn amqp_urls(&self) -> Vec<String> {
        split_amqp_urls(&self.amqp_url)
    }

    /// Build from the process environment, an optional TOML file and flag overrides.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let file_values = match file {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        Self::from_sources(&env, &file_values, flags)
    }

    /// Build from explicit sources (the environment is passed in, so tests need not touch
    /// the process's own).
    pub fn from_sources(
        env: &BTreeMap<String, String>,
        file: &BTreeMap<String, String>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        if let Some(key) = flags.keys().find(|k| !SETTINGS.iter().any(|s| s.key == *k)) {
            return Err(ConfigError {
                setting: format!("--{}", key.replace('_', "-")),
                message: "is not a setting".into(),
            });
        }
        let raw = |key: &str| layered(env, file, flags, key);
        let err = |setting: &str, message: String| ConfigError {
            setting: setting.to_owned(),
            message,
        };

        let amqp_url = match raw("amqp_url") {
            Some((name, v)) => {
                check_amqp_urls(&v).map_err(|m| err(&name, m))?;
                v
            }
            None => "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        };
        let redis_url = match raw("redis_url") {
            Some((name, v)) => {
                if !(v.starts_with("redis://")
                    || v.starts_with("rediss://")
                    || v.starts_with("redis+unix://")
                    || v.starts_with("unix://"))
                {
                    return Err(err(&name, "must be a redis:// or rediss:// URL".into()));
                }
                redis::Client::open(v.as_str())
                    .map_err(|e| err(&name, format!("is not a Redis URL ({e})")))?;
                v
            }
            None => "redis://127.0.0.1:6379".into(),
        };
        let bind = match raw("bind") {
            Some((name, v)) => v.parse::<SocketAddr>().map_err(|_| {
                err(
                    &name,
                    format!("must be an address like 0.0.0.0:8080 (got {v:?})"),
                )
            })?,
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };
        let prefix = match raw("prefix") {
            Some((name, v)) => {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    return Err(err(
                        &name,
                        "must be 1 to 64 letters, digits, '-' or '_'".into(),
                    ));
                }
                v
            }
            None => "kivihook".into(),
        };
        let token = |key: &str| -> Result<Option<Secret>, ConfigError> {
            match raw(key) {
                Some((name, v)) => {
                    if v.len() < 16 || v.bytes().any(|b| !b.is_ascii_graphic()) {
                        Err(err(
                            &name,
                            "must be at least 16 printable characters without spaces".into(),
                        ))
                    } else {
                        Ok(Some(Secret::new(v)))
                    }
                }
                None => Ok(None),
            }
        };
        let admin_token = token("admin_token")?;
        let ingest_token = token("ingest_token")?;
        if let (Some(admin), Some(ingest)) = (&admin_token, &ingest_token) {
            if admin == ingest {
                let name = raw("admin_token").map(|(n, _)| n).unwrap_or_default();
                return Err(err(
                    &name,
                    "must differ from the ingest token: whoever sends events (KiviCare) would be an admin".into(),
                ));
            }
        }
        let generated_tokens = admin_token.is_none() || ingest_token.is_none();
        let int = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
            match raw(key) {
                Some((name, v)) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        err(
                            &name,
                            format!("must be an integer from {min} to {max} (got {v:?})"),
                        )
                    }),
                None => Ok(default),
            }
        };
        let prefetch = int("prefetch", 256, 1, 65535)? as u16;
        let retry_prefetch = int("retry_prefetch", 128, 1, 65535)? as u16;
        let events_per_message = int("events_per_message", 50, 1, 500)? as usize;
        let jobs_per_message = int("jobs_per_message", 50, 1, 500)? as usize;
        let circuit_threshold = int("circuit_threshold", 10, 0, 1_000_000)?;
        let webhook_concurrency = int("webhook_concurrency", 32, 1, 100_000)? as u32;
        let secret_key = match raw("secret_key") {
            Some((name, v)) => Some(
                crate::crypto::SecretBox::from_base64(&v).map_err(|e| err(&name, e.to_string()))?,
            ),
            None => None,
        };
        let allow = match raw("outbound_allow") {
            Some((name, v)) => {
                crate::outbound::Guard::parse_allow(&v).map_err(|m| err(&name, m))?
            }
            None => Vec::new(),
        };
        let boolean = |key: &str| -> Result<bool, ConfigError> {
            match raw(key) {
                Some((name, v)) => match v.as_str() {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" | "" => Ok(false),
                    _ => Err(err(&name, format!("must be true or false (got {v:?})"))),
                },
                None => Ok(false),
            }
        };
        let require_https = boolean("require_https")?;
        let metrics_webhook_labels = boolean("metrics_webhook_labels")?;
        let proxy = match raw("outbound_proxy") {
            Some((_, v)) if v.trim().is_empty() => None,
            Some((name, v)) => {
                let url = url::Url::parse(v.trim())
                    .map_err(|e| err(&name, format!("is not a URL ({e})")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(err(
                        &name,
                        "must be an http:// or https:// proxy URL".to_owned(),
                    ));
                }
                Some(url)
            }
            None => None,
        };
        let retry_schedule = match raw("retry_schedule") {
            Some((name, v)) => RetrySchedule::parse(&v).map_err(|m| err(&name, m))?,
            None => RetrySchedule::default(),
        };
        let seconds = |key: &str, default: f64, max: f64| -> Result<Duration, ConfigError> {
            match raw(key) {
                Some((name, v)) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= max)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        err(
                            &name,
                            format!(
                                "must be a number of seconds above 0 and at most {max} (got {v:?})"
                            ),
                        )
                    }),
                None => Ok(Duration::from_secs_f64(default)),
            }
        };
        let delivery_timeout = seconds("delivery_timeout", 15.0, 300.0)?;
        let dedup_window = seconds("dedup_window", 86_400.0, 30.0 * 86_400.0)?;
        let retry_lease = seconds("retry_lease", 30.0, 3600.0)?;
        let scheduler_interval = seconds("scheduler_interval", 0.25, 60.0)?;
        let stranded_scan_interval = seconds("stranded_scan_interval", 30.0, 3600.0)?;
        let circuit_cooldown = seconds("circuit_cooldown", 60.0, 86_400.0)?;
        // 0 is allowed here: the circuit then opens on failures in a row alone.
        let circuit_min_failing = match raw("circuit_min_failing") {
            Some((_, v)) if v.trim() == "0" => Duration::ZERO,
            _ => seconds("circuit_min_failing", 10.0, 86_400.0)?,
        };
        let auto_disable_after = seconds("auto_disable_after", 5.0 * 86_400.0, 365.0 * 86_400.0)?;
        let redis_wait_timeout = seconds("redis_wait_timeout", 1.0, 60.0)?;
        let redis_cluster = match raw("redis_cluster") {
            Some((name, v)) => parse_cluster_nodes(&v).map_err(|m| err(&name, m))?,
            None => Vec::new(),
        };
        let redis_wait_replicas = match raw("redis_wait_replicas") {
            Some((name, v)) => v.parse::<u32>().ok().filter(|n| *n <= 16).ok_or_else(|| {
                err(
                    &name,
                    format!("must be a number of replicas from 0 to 16 (got {v:?})"),
                )
            })?,
            None => 0,
        };
        let byte_count = |key: &str| -> Result<usize, ConfigError> {
            match raw(key) {
                Some((name, v)) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
                    .ok_or_else(|| {
                        err(
                            &name,
                            format!("must be a byte count from 1024 to 67108864 (got {v:?})"),
                        )
                    }),
                None => Ok(256 * 1024),
            }
        };
        let max_body_bytes = byte_count("max_body_bytes")?;
        let max_body = byte_count("max_body")?;
        let log_format = match raw("log_format") {
            Some((name, v)) => match v.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return Err(err(&name, format!("must be json or text (got {v:?})"))),
            },
            None => LogFormat::Json,
        };

        Ok(Self {
            amqp_url,
            redis_url,
            bind,
            prefix,
            admin_token: admin_token.unwrap_or_else(random_token),
            ingest_token: ingest_token.unwrap_or_else(random_token),
            generated_tokens,
            prefetch,
            events_per_message,
            jobs_per_message,
            delivery_timeout,
            max_body_bytes,
            max_body,
            dedup_window,
            log_format,
            retry_schedule,
            retry_prefetch,
            retry_lease,
            scheduler_interval,
            stranded_scan_interval,
            circuit_threshold,
            circuit_cooldown,
            circuit_min_failing,
            auto_disable_after,
            webhook_concurrency,
            metrics_webhook_labels,
            webhooks_file: raw("webhooks_file").map(|(_, v)| v.into()),
            redis_cluster,
            redis_wait_replicas,
            redis_wait_timeout,
            secret_key,
            outbound: crate::outbound::Guard {
                allow,
                require_https,
                proxy,
            },
        })
    }
}

/// The entries of a comma-separated list of AMQP URLs, trimmed. A comma inside a password
/// is written `%2C`, as any reserved character in a URL's user info.
pub fn split_amqp_urls(list: &str) -> Vec<String> {
    list.split(',').map(|u| u.trim().to_owned()).collect()
}

/// Every entry must be an AMQP URL; an empty entry (`a,,b`, a trailing comma) is refused
/// too, as a sign of a list that was cut or joined wrongly. The entry is named by position,
/// never echoed, because it may carry a password.
fn check_amqp_urls(list: &str) -> Result<(), String> {
    let urls = split_amqp_urls(list);
    let n = urls.len();
    for (i, u) in urls.iter().enumerate() {
        let which = if n == 1 {
            String::new()
        } else {
            format!(" (entry {} of {n})", i + 1)
        };
        if u.is_empty() {
            return Err(format!("has an empty entry{which}"));
        }
        if !(u.starts_with("amqp://") || u.starts_with("amqps://")) {
            return Err(format!(
                "must be an amqp:// or amqps:// URL, or a comma-separated list of them{which}"
            ));
        }
        url::Url::parse(u).map_err(|e| format!("is not a URL{which} ({e})"))?;
    }
    Ok(())
}

/// The value of one setting from the source that wins (flag, then file, then environment),
/// with the name of that source for error messages.
fn layered(
    env: &BTreeMap<String, String>,
    file: &BTreeMap<String, String>,
    flags: &Overrides,
    key: &str,
) -> Option<(String, String)> {
    let s = SETTINGS.iter().find(|s| s.key == key)?;
    let pick = |src: Source| -> Option<(String, String)> {
        let (map, name) = match src {
            Source::Flag => (flags, s.flag.to_owned()),
            Source::File => (file, format!("{} (config file)", s.key)),
            Source::Env => (env, s.env.to_owned()),
        };
        let lookup = if matches!(src, Source::Env) {
            s.env
        } else {
            s.key
        };
        map.get(lookup).map(|v| (name, v.clone()))
    };
    pick(Source::Flag)
        .or_else(|| pick(Source::File))
        .or_else(|| pick(Source::Env))
}

/// Raw settings from every source, layered like `Config` but not validated as a whole.
///
/// The API client commands need three settings (the API address, the tokens) and must work
/// on a laptop that has none of the servers' settings, so they read these instead of
/// building a `Config`.
#[derive(Debug, Clone)]
pub struct Layers {
    env: BTreeMap<String, String>,
    file: BTreeMap<String, String>,
    flags: Overrides,
}

impl Layers {
    /// The process environment, an optional TOML file and flag overrides.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        Ok(Self {
            env: std::env::vars().collect(),
            file: match file {
                Some(path) => read_file(path)?,
                None => BTreeMap::new(),
            },
            flags: flags.clone(),
        })
    }

    /// From explicit sources, as `Config::from_sources`.
    pub fn from_sources(
        env: BTreeMap<String, String>,
        file: BTreeMap<String, String>,
        flags: Overrides,
    ) -> Self {
        Self { env, file, flags }
    }

    /// One setting's winning value and the name of its source (`KIVIHOOK_BIND`, `--bind`…).
    pub fn get(&self, key: &str) -> Option<(String, String)> {
        layered(&self.env, &self.file, &self.flags, key)
    }
}

fn random_token() -> Secret {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    Secret::new(format!(
        "kh_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let setting = format!("--config {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        setting: setting.clone(),
        message: format!("cannot be read ({e})"),
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
        setting: setting.clone(),
        message: format!("is not valid TOML ({})", e.message()),
    })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !SETTINGS.iter().any(|s| s.key == key) {
            return Err(ConfigError {
                setting: format!("{key} (config file)"),
                message: "is not a setting".into(),
            });
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(ConfigError {
                    setting: format!("{key} (config file)"),
                    message: "must be a string or a number".into(),
                })
            }
        };
        out.insert(key, text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_and_url_errors_never_show_a_password() {
        assert_eq!(
            without_password("redis://kh:s3cret@10.0.0.1:6379/0 and amqp://u:p4ss@mq/%2f"),
            "redis://kh:****@10.0.0.1:6379/0 and amqp://u:****@mq/%2f"
        );
        assert_eq!(
            without_password("redis://10.0.0.1:6379"),
            "redis://10.0.0.1:6379"
        );
        for bad in [
            "http://kh:s3cret@10.0.0.1:6379",
            "redis://kh:s3cret@10.0.0.1:notaport",
        ] {
            let e = parse_cluster_nodes(bad).unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.contains("****"), "{e}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_work_against_local_services() {
        let c = Config::from_sources(&map(&[]), &map(&[]), &map(&[])).unwrap();
        assert_eq!(c.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.bind.to_string(), "0.0.0.0:8080");
        assert_eq!(c.prefix, "kivihook");
        assert!(c.generated_tokens);
        assert_ne!(c.admin_token, c.ingest_token);
        assert_eq!(c.max_body_bytes, 256 * 1024);
        assert_eq!(c.max_body, 256 * 1024);
        assert_eq!(c.dedup_window, Duration::from_secs(86_400));
        assert_eq!(c.retry_schedule, RetrySchedule::default());
        assert_eq!(c.auto_disable_after, Duration::from_secs(5 * 86_400));
        assert!(
            !c.metrics_webhook_labels,
            "no series per webhook by default"
        );
        let env = map(&[("KIVIHOOK_METRICS_WEBHOOK_LABELS", "true")]);
        let c = Config::from_sources(&env, &map(&[]), &map(&[])).unwrap();
        assert!(c.metrics_webhook_labels);
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_environment() {
        let env = map(&[("KIVIHOOK_PREFETCH", "10"), ("KIVIHOOK_PREFIX", "env")]);
        let file = map(&[("prefetch", "20"), ("prefix", "file")]);
        let flags = map(&[("prefetch", "30")]);
        let c = Config::from_sources(&env, &file, &flags).unwrap();
        assert_eq!(c.prefetch, 30);
        assert_eq!(c.prefix, "file");
        let c = Config::from_sources(&env, &map(&[]), &map(&[])).unwrap();
        assert_eq!(c.prefetch, 10);
        assert_eq!(c.prefix, "env");
    }

    #[test]
    fn errors_name_the_setting_as_its_source_spells_it() {
        let e = Config::from_sources(&map(&[("KIVIHOOK_PREFETCH", "abc")]), &map(&[]), &map(&[]))
            .unwrap_err();
        assert_eq!(e.setting, "KIVIHOOK_PREFETCH");
        let e = Config::from_sources(&map(&[]), &map(&[]), &map(&[("prefetch", "0")])).unwrap_err();
        assert_eq!(e.setting, "--prefetch");
        let e =
            Config::from_sources(&map(&[]), &map(&[("bind", "nowhere")]), &map(&[])).unwrap_err();
        assert_eq!(e.setting, "bind (config file)");
        for (k, v) in [
            ("KIVIHOOK_AMQP_URL", "http://x"),
            ("KIVIHOOK_REDIS_URL", "mysql://x"),
            ("KIVIHOOK_PREFIX", "a b"),
            ("KIVIHOOK_ADMIN_TOKEN", "short"),
            ("KIVIHOOK_DELIVERY_TIMEOUT", "-1"),
            ("KIVIHOOK_MAX_BODY_BYTES", "12"),
            ("KIVIHOOK_MAX_BODY", "12"),
            ("KIVIHOOK_LOG_FORMAT", "xml"),
            ("KIVIHOOK_RETRY_SCHEDULE", "1,soon"),
            ("KIVIHOOK_CIRCUIT_THRESHOLD", "-2"),
            ("KIVIHOOK_WEBHOOK_CONCURRENCY", "0"),
            ("KIVIHOOK_RETRY_LEASE", "0"),
            ("KIVIHOOK_SECRET_KEY", "dG9vIHNob3J0"),
            ("KIVIHOOK_OUTBOUND_ALLOW", "10.0.0.0/40"),
            ("KIVIHOOK_REQUIRE_HTTPS", "maybe"),
            ("KIVIHOOK_METRICS_WEBHOOK_LABELS", "sometimes"),
        ] {
            let e = Config::from_sources(&map(&[(k, v)]), &map(&[]), &map(&[])).unwrap_err();
            assert_eq!(e.setting, k);
            assert!(e
                .to_string()
                .starts_with(&format!("invalid configuration: {k}: ")));
        }
    }

    #[test]
    fn amqp_url_takes_a_list_of_cluster_nodes() {
        let list =
            "amqp://u:p@10.0.0.1:5672/%2f, amqps://u:p%2Cq@10.0.0.2:5671/%2f,amqp://10.0.0.3";
        let c = Config::from_sources(&map(&[("KIVIHOOK_AMQP_URL", list)]), &map(&[]), &map(&[]))
            .unwrap();
        assert_eq!(c.amqp_url, list);
        assert_eq!(
            c.amqp_urls(),
            [
                "amqp://u:p@10.0.0.1:5672/%2f",
                "amqps://u:p%2Cq@10.0.0.2:5671/%2f",
                "amqp://10.0.0.3"
            ]
        );
        let c = Config::from_sources(&map(&[]), &map(&[]), &map(&[])).unwrap();
        assert_eq!(c.amqp_urls(), ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
        for bad in [
            "amqp://a,http://b",
            "amqp://a,,amqp://b",
            "amqp://a,",
            "amqp://a, amqp://[::1",
        ] {
            let e =
                Config::from_sources(&map(&[]), &map(&[]), &map(&[("amqp_url", bad)])).unwrap_err();
            assert_eq!(e.setting, "--amqp-url", "{bad}");
            assert!(e.message.contains("(entry 2 of "), "{bad}: {}", e.message);
        }
        let e = Config::from_sources(
            &map(&[]),
            &map(&[("amqp_url", "amqp://u:hunter2@a,x")]),
            &map(&[]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "amqp_url (config file)");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_config_file_with_an_unknown_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("kh-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.toml");
        std::fs::write(&path, "prefetch = 64\nprefix = \"from-file\"\n").unwrap();
        let c = Config::load(Some(&path), &map(&[])).unwrap();
        assert_eq!(c.prefetch, 64);
        std::fs::write(&path, "prefech = 64\n").unwrap();
        let e = Config::load(Some(&path), &map(&[])).unwrap_err();
        assert_eq!(e.setting, "prefech (config file)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::from_sources(
            &map(&[("KIVIHOOK_ADMIN_TOKEN", "super-secret-admin-token")]),
            &map(&[]),
            &map(&[]),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("super-secret"));
    }
}
