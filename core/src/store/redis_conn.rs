//! A Redis connection that always recovers.
//!
//! Each pooled slot holds one multiplexed connection. A request that fails because the
//! connection broke (an I/O error, a timeout, a dropped or refused connection) throws that
//! connection away; the next request dials again, one dialer at a time, with a bounded
//! connect timeout. Requests never wait on a connection that is gone, so a Redis restart
//! costs the requests made while it is down, and nothing after. A Redis Cluster client is
//! kept the same way (`ClusterConn`): replaced when it stops answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

struct Slot {
    client: redis::Client,
    /// Counts dials after the first, for `kivihook_redis_reconnects_total`.
    redials: Option<prometheus::IntCounter>,
    /// The live connection and the generation it belongs to.
    current: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

/// A cheap handle on one slot of the pool; implements `ConnectionLike`.
#[derive(Clone)]
pub struct Conn {
    slot: Arc<Slot>,
}

fn needs_redial(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

impl Conn {
    /// A slot, connected now (so a wrong URL or an absent Redis shows at start).
    pub async fn open(
        client: redis::Client,
        redials: Option<prometheus::IntCounter>,
    ) -> RedisResult<Self> {
        let conn = Self {
            slot: Arc::new(Slot {
                client,
                redials,
                current: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
            }),
        };
        conn.live().await?;
        Ok(conn)
    }

    async fn live(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut current = self.slot.current.lock().await;
        if let Some((generation, c)) = current.as_ref() {
            return Ok((*generation, c.clone()));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        let c = self
            .slot
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // The scripts first, so that no batch on this connection meets `NOSCRIPT` after a
        // Redis restart.
        load_scripts(&mut c.clone()).await?;
        let generation = self.slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 {
            if let Some(counter) = &self.slot.redials {
                counter.inc();
            }
            tracing::info!("reconnected to Redis");
        }
        *current = Some((generation, c.clone()));
        Ok((generation, c))
    }

    /// Forget the connection of `generation` (not a newer one another task made since).
    async fn forget(&self, generation: u64) {
        let mut current = self.slot.current.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    async fn checked<T>(&self, generation: u64, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if needs_redial(e) {
                self.forget(generation).await;
            }
        }
        result
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut c) = self.live().await?;
            let result = c.req_packed_command(cmd).await;
            self.checked(generation, result).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut c) = self.live().await?;
            let result = c.req_packed_commands(cmd, offset, count).await;
            self.checked(generation, result).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A connection to one Redis (a slot of the pool above) or to a Redis Cluster. The
/// cluster client follows `MOVED` and `ASK`, refreshes its slot map after a failover and
/// redials nodes by itself; what it cannot do is run one pipeline over several slots, which
/// is what `Batch` is for.
#[derive(Clone)]
pub enum AnyConn {
    Single(Conn),
    Cluster(ClusterConn),
}

struct ClusterSlot {
    nodes: Vec<String>,
    /// Counts rebuilds, for `kivihook_redis_reconnects_total`.
    redials: Option<prometheus::IntCounter>,
    current: tokio::sync::Mutex<Option<(u64, redis::cluster_async::ClusterConnection)>>,
    generation: AtomicU64,
}

/// One cluster client of the pool, replaced when it stops answering.
///
/// The cluster client handles failovers by itself, from one task that stops serving
/// requests while it rebuilds its slot map. After a primary was killed under load, that
/// task has been seen never to come out of it again (redis 0.32): every request on that
/// client timed out, for minutes, while the cluster itself served everyone else. A
/// dispatcher retrying its store writes on such a client holds its messages unacknowledged
/// forever, so accepted events are never delivered. So, as with one Redis (`Conn`), a
/// client whose request timed out, or whose task is gone, is dropped (which stops its
/// task) and the next request builds a fresh one from the seed nodes, one builder at a
/// time; a client that merely got an error from a node (a refused connection during a
/// failover, `MOVED`, `CLUSTERDOWN`) is kept, since it recovers from those by itself.
#[derive(Clone)]
pub struct ClusterConn {
    slot: Arc<ClusterSlot>,
}

/// Whether a cluster client must be replaced after this error: it did not answer in time
/// (the client's own response timeout covers its queueing and retries), or its task ended.
fn needs_rebuild(e: &RedisError) -> bool {
    e.is_timeout() || e.is_connection_dropped()
}

impl ClusterConn {
    /// A client, connected now (so wrong seeds or an absent cluster show at start).
    pub async fn open(
        nodes: &[String],
        redials: Option<prometheus::IntCounter>,
    ) -> RedisResult<Self> {
        let conn = Self {
            slot: Arc::new(ClusterSlot {
                nodes: nodes.to_vec(),
                redials,
                current: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
            }),
        };
        conn.live().await?;
        Ok(conn)
    }

    async fn live(&self) -> RedisResult<(u64, redis::cluster_async::ClusterConnection)> {
        let mut current = self.slot.current.lock().await;
        if let Some((generation, c)) = current.as_ref() {
            return Ok((*generation, c.clone()));
        }
        let c = open_cluster(&self.slot.nodes).await?;
        load_scripts(&mut c.clone()).await?;
        let generation = self.slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 {
            if let Some(counter) = &self.slot.redials {
                counter.inc();
            }
            tracing::info!("reconnected to the Redis Cluster with a new client");
        }
        *current = Some((generation, c.clone()));
        Ok((generation, c))
    }

    /// Forget the client of `generation` (not a newer one another task built since).
    async fn forget(&self, generation: u64, error: &RedisError) {
        let mut current = self.slot.current.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(%error, "a Redis Cluster client stopped answering; replacing it");
            *current = None;
        }
    }

    async fn checked<T>(&self, generation: u64, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if needs_rebuild(e) {
                self.forget(generation, e).await;
            }
        }
        result
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut c) = self.live().await?;
            let result = c.req_packed_command(cmd).await;
            self.checked(generation, result).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut c) = self.live().await?;
            let result = c.req_packed_commands(cmd, offset, count).await;
            self.checked(generation, result).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Load every script a batch calls by hash (`SCRIPT LOAD` goes to every node of a cluster).
pub(super) async fn load_scripts(c: &mut impl ConnectionLike) -> RedisResult<()> {
    for script in super::redis::SCRIPTS {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script)
            .query_async::<Value>(c)
            .await?;
    }
    Ok(())
}

/// Open a cluster connection from a list of seed nodes.
async fn open_cluster(nodes: &[String]) -> RedisResult<redis::cluster_async::ClusterConnection> {
    redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(2_000)
        .build()?
        .get_async_connection()
        .await
}
