//! Concurrent publishes share round trips to Redis.
//!
//! A single-event publish hands its script call to the [`Pipeliner`] instead of sending it
//! alone. The first call to arrive starts a flush task, which lets the other tasks that are
//! ready to run add theirs (one yield), then sends every call waiting as one pipeline: one
//! write to Redis, one read of the answers, in the order the calls arrived, instead of one
//! round trip (and one wake-up of Redis) each. Each call still gets its own answer; the
//! scripts are no more a transaction together than they were sent apart.
//!
//! The flush runs in a task of its own, so a publisher that goes away (its client hung up)
//! does not take the calls of the others with it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redis::{Cmd, RedisError, Script, ServerError, ServerErrorKind, Value};
use tokio::sync::oneshot;

use super::Conn;

/// A script call's answer: its reply, or why the pipeline it went in failed.
type Answer = Result<Value, String>;

type Waiting = Vec<(Cmd, oneshot::Sender<Answer>)>;

/// Script calls waiting to be sent together.
#[derive(Default)]
pub(super) struct Pipeliner {
    waiting: Arc<Mutex<Waiting>>,
}

impl Pipeliner {
    /// Sends `call` (an `EVALSHA` of `script`) with the calls that arrive meanwhile, and
    /// returns its reply. A reply that is a Redis error (the script failed) is an `Err`.
    pub(super) async fn call(&self, conn: &Conn, script: &Script, call: Cmd) -> Answer {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut waiting = lock(&self.waiting);
            waiting.push((call, tx));
            waiting.len() == 1
        };
        if lead {
            tokio::spawn(flush(Arc::clone(&self.waiting), conn.clone(), script.clone()));
        }
        match rx.await {
            Ok(Ok(Value::ServerError(e))) => Err(describe(&e)),
            Ok(answer) => answer,
            Err(_) => Err("the pipeline to redis was dropped".into()),
        }
    }
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

fn describe(e: &ServerError) -> String {
    format!("{}: {}", e.code(), e.details().unwrap_or_default())
}

/// Sends every waiting call as one pipeline and hands each its reply.
async fn flush(waiting: Arc<Mutex<Waiting>>, mut conn: Conn, script: Script) {
    // The publishes that are ready to run join this pipeline before it leaves.
    tokio::task::yield_now().await;
    let batch = std::mem::take(&mut *lock(&waiting));
    let (calls, answers): (Vec<Cmd>, Vec<_>) = batch.into_iter().unzip();
    let mut replies = send(&mut conn, &calls).await;
    // NOSCRIPT (a Redis that restarted or flushed its scripts) means the call did not run:
    // load the script and send those calls again.
    if let Ok(values) = &mut replies {
        let missing: Vec<usize> = (0..values.len()).filter(|&i| is_noscript(&values[i])).collect();
        if !missing.is_empty() {
            let again: Vec<Cmd> = missing.iter().map(|&i| calls[i].clone()).collect();
            let retried = match script.prepare_invoke().load_async(&mut conn).await {
                Ok(_) => send(&mut conn, &again).await,
                Err(e) => Err(e.to_string()),
            };
            match retried {
                Ok(fresh) => {
                    for (i, v) in missing.into_iter().zip(fresh) {
                        values[i] = v;
                    }
                }
                Err(e) => replies = Err(e),
            }
        }
    }
    match replies {
        Ok(values) => {
            for (tx, v) in answers.into_iter().zip(values) {
                let _ = tx.send(Ok(v));
            }
        }
        Err(e) => {
            for tx in answers {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// One pipeline of `calls`: their replies in order, Redis errors among them as values.
async fn send(conn: &mut Conn, calls: &[Cmd]) -> Result<Vec<Value>, String> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for call in calls {
        pipe.add_command(call.clone());
    }
    let values: Vec<Value> = pipe.query_async(conn).await.map_err(|e: RedisError| e.to_string())?;
    if values.len() != calls.len() {
        return Err(format!("{} replies to {} calls", values.len(), calls.len()));
    }
    Ok(values)
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}
