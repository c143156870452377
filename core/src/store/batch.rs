//! Commands over many keys, sent as one pipeline to one Redis, or as one pipeline per hash
//! slot to a Redis Cluster, with the replies handed back in the order they were asked.
//!
//! A cluster runs a pipeline only when every key in it has the same slot, and the per-event
//! path touches keys of many slots (an event's marker, a webhook's counters, a retry shard).
//! Grouping by slot keeps each group's commands in their order, so what one group writes
//! first is written first; the groups run at once, each on its node's multiplexed connection.
//!
//! A durable batch ends every group with `WAIT n timeout`: the replies come back only when
//! `n` replicas have every write of that group, and fewer is an error, never a success.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Value};

use super::redis_conn::AnyConn;
use crate::keys::slot;

/// How many replicas must have a write before it counts (`KIVIHOOK_REDIS_WAIT_REPLICAS`).
#[derive(Debug, Clone, Copy, Default)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

/// Commands to send together.
#[derive(Default)]
pub struct Batch {
    cmds: Vec<Queued>,
}

struct Queued {
    slot: u16,
    cmd: Cmd,
    keep: bool,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// How many replies `run` returns so far: the commands whose reply is kept.
    pub fn kept(&self) -> usize {
        self.cmds.iter().filter(|q| q.keep).count()
    }

    /// `name key …`, whose reply is returned.
    pub fn cmd(&mut self, name: &str, key: &str) -> &mut Cmd {
        self.push(name, key, true)
    }

    /// `name key …`, whose reply is not returned (an error still fails the batch).
    pub fn ignored(&mut self, name: &str, key: &str) -> &mut Cmd {
        self.push(name, key, false)
    }

    /// `EVALSHA sha len(keys) keys…`, whose reply is returned. Every key must share a slot.
    pub fn script(&mut self, script: &redis::Script, keys: &[&str]) -> &mut Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
        self.cmds.push(Queued {
            slot: keys.first().map(|k| slot(k.as_bytes())).unwrap_or(0),
            cmd,
            keep: true,
        });
        let last = self.cmds.len() - 1;
        &mut self.cmds[last].cmd
    }

    fn push(&mut self, name: &str, key: &str, keep: bool) -> &mut Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(key);
        self.cmds.push(Queued {
            slot: slot(key.as_bytes()),
            cmd,
            keep,
        });
        let last = self.cmds.len() - 1;
        &mut self.cmds[last].cmd
    }

    /// Send the batch; the replies of the kept commands, in order. `reload` is called when a
    /// group fails because Redis forgot a script (a restart, a failover to a replica that
    /// never loaded it); that group is then sent once more. Only scripts can fail so, and
    /// none of them ran in a group whose first script failed, so every other command in a
    /// group must be safe to run twice (sets, not increments) — the callers keep to that.
    pub async fn run<F, Fut>(
        self,
        conn: &AnyConn,
        wait: Option<WaitReplicas>,
        reload: F,
    ) -> RedisResult<Vec<Value>>
    where
        F: Fn() -> Fut + Clone,
        Fut: std::future::Future<Output = RedisResult<()>>,
    {
        if self.cmds.is_empty() {
            return Ok(Vec::new());
        }
        let wait = wait.filter(|w| w.replicas > 0);
        if let AnyConn::Single(_) = conn {
            let keep: Vec<bool> = self.cmds.iter().map(|q| q.keep).collect();
            let pipe = pipeline(self.cmds.into_iter().map(|q| q.cmd), wait);
            let replies = send(conn, &pipe, wait, reload).await?;
            return Ok(kept(replies, &keep));
        }
        let mut groups: BTreeMap<u16, Vec<(usize, Cmd)>> = BTreeMap::new();
        let mut keep = Vec::with_capacity(self.cmds.len());
        for (i, q) in self.cmds.into_iter().enumerate() {
            keep.push(q.keep);
            groups.entry(q.slot).or_default().push((i, q.cmd));
        }
        let sent = groups.into_values().map(|group| {
            let reload = reload.clone();
            async move {
                let (positions, cmds): (Vec<usize>, Vec<Cmd>) = group.into_iter().unzip();
                let pipe = pipeline(cmds.into_iter(), wait);
                let replies = send(conn, &pipe, wait, reload).await?;
                Ok::<_, RedisError>(positions.into_iter().zip(replies).collect::<Vec<_>>())
            }
        });
        let mut ordered: Vec<Option<Value>> = vec![None; keep.len()];
        for group in futures::future::join_all(sent).await {
            for (i, v) in group? {
                ordered[i] = Some(v);
            }
        }
        Ok(kept(
            ordered
                .into_iter()
                .map(|v| v.unwrap_or(Value::Nil))
                .collect(),
            &keep,
        ))
    }
}

fn pipeline(cmds: impl Iterator<Item = Cmd>, wait: Option<WaitReplicas>) -> Pipeline {
    let mut pipe = redis::pipe();
    for cmd in cmds {
        pipe.add_command(cmd);
    }
    if let Some(w) = wait {
        pipe.cmd("WAIT")
            .arg(w.replicas)
            .arg(w.timeout.as_millis().max(1) as u64);
    }
    pipe
}

/// Send one pipeline (one slot, or everything on one Redis); every reply, `WAIT`'s checked
/// and removed.
async fn send<F, Fut>(
    conn: &AnyConn,
    pipe: &Pipeline,
    wait: Option<WaitReplicas>,
    reload: F,
) -> RedisResult<Vec<Value>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = RedisResult<()>>,
{
    let mut c = conn.clone();
    let mut replies: RedisResult<Vec<Value>> = pipe.query_async(&mut c).await;
    if matches!(&replies, Err(e) if e.kind() == ErrorKind::NoScriptError) {
        reload().await?;
        replies = pipe.query_async(&mut c).await;
    }
    let mut replies = replies?;
    if let Some(w) = wait {
        let acked = match replies.pop() {
            Some(Value::Int(n)) => n,
            _ => -1,
        };
        if acked < i64::from(w.replicas) {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "WAIT timed out",
                format!(
                    "{acked} of {} replicas acknowledged the write within {} ms",
                    w.replicas,
                    w.timeout.as_millis()
                ),
            )));
        }
    }
    Ok(replies)
}

fn kept(replies: Vec<Value>, keep: &[bool]) -> Vec<Value> {
    replies
        .into_iter()
        .zip(keep)
        .filter_map(|(v, k)| k.then_some(v))
        .collect()
}
