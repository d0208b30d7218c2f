//! The jobs: a table of who started what and where it stands, a bounded queue, and the
//! worker that runs each job on a blocking thread and reports to its owner's `user:<id>`
//! channel with the catalogue's `generation_*` events (`docs/channels.md`, "Jobs").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use herald::catalogue::GenerationResult;
use herald::{Event, Herald};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::primes;

/// Jobs that run at once; the others wait in the queue (the work is CPU-bound).
const WORKERS: usize = 2;
/// Jobs that may wait; beyond, `POST /jobs` answers 503.
pub const QUEUE: usize = 32;
/// Finished jobs kept for `GET /jobs/{id}`; older ones are forgotten.
const KEPT: usize = 1000;

/// Where a job stands, as `GET /jobs/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: String,
    pub limit: u64,
    /// `queued`, `running`, `complete` or `failed`.
    pub status: &'static str,
    pub progress: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Job {
    owner: String,
    view: JobView,
    cancel: Arc<AtomicBool>,
}

/// Why a job could not be queued or changed.
#[derive(Debug, PartialEq, Eq)]
pub enum JobError {
    QueueFull,
    /// No such job for this user (someone else's job is "not found" too).
    NotFound,
    AlreadyFinished,
}

/// The job table and the queue into the worker.
pub struct Jobs {
    herald: Herald,
    next: AtomicU64,
    table: Mutex<BTreeMap<u64, Job>>,
    queue: mpsc::Sender<u64>,
}

impl Jobs {
    /// Creates the table and starts the worker on the current Tokio runtime.
    pub fn start(herald: Herald) -> Arc<Self> {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let jobs = Arc::new(Self { herald, next: AtomicU64::new(1), table: Mutex::new(BTreeMap::new()), queue });
        tokio::spawn(worker(Arc::downgrade(&jobs), waiting));
        jobs
    }

    /// Queues a count of the primes below `limit` for `owner`; returns the job's id.
    pub fn submit(&self, owner: &str, limit: u64) -> Result<String, JobError> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let view = JobView { job_id: job_id(seq), limit, status: "queued", progress: 0, result: None, error: None };
        let job = Job { owner: owner.to_owned(), view, cancel: Arc::new(AtomicBool::new(false)) };
        self.lock().insert(seq, job);
        if self.queue.try_send(seq).is_err() {
            self.lock().remove(&seq);
            return Err(JobError::QueueFull);
        }
        self.forget_old();
        Ok(job_id(seq))
    }

    /// The job `id` if `owner` started it.
    pub fn view(&self, owner: &str, id: &str) -> Result<JobView, JobError> {
        let seq = parse_id(id).ok_or(JobError::NotFound)?;
        match self.lock().get(&seq) {
            Some(job) if job.owner == owner => Ok(job.view.clone()),
            _ => Err(JobError::NotFound),
        }
    }

    /// The latest jobs of `owner`, newest first.
    pub fn list(&self, owner: &str, at_most: usize) -> Vec<JobView> {
        self.lock().values().rev().filter(|j| j.owner == owner).take(at_most).map(|j| j.view.clone()).collect()
    }

    /// Asks the job `id` of `owner` to stop; it fails with `cancelled` at its next slice.
    pub fn cancel(&self, owner: &str, id: &str) -> Result<JobView, JobError> {
        let seq = parse_id(id).ok_or(JobError::NotFound)?;
        match self.lock().get(&seq) {
            Some(job) if job.owner == owner => {
                if matches!(job.view.status, "complete" | "failed") {
                    return Err(JobError::AlreadyFinished);
                }
                job.cancel.store(true, Ordering::Relaxed);
                Ok(job.view.clone())
            }
            _ => Err(JobError::NotFound),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Job>> {
        // A panic while holding this lock cannot leave a job half-written (each update is
        // one assignment), so a poisoned lock is still good to use.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, seq: u64, change: impl FnOnce(&mut JobView)) {
        if let Some(job) = self.lock().get_mut(&seq) {
            change(&mut job.view);
        }
    }

    fn forget_old(&self) {
        let mut table = self.lock();
        while table.len() > KEPT {
            let Some(oldest) =
                table.iter().find(|(_, j)| matches!(j.view.status, "complete" | "failed")).map(|(s, _)| *s)
            else {
                break;
            };
            table.remove(&oldest);
        }
    }

    /// Sends `event` to the job owner's `user:<id>` channel.
    async fn report(&self, owner: &str, event: Event) {
        if let Err(e) = self.herald.send_to_user(owner, event).await {
            // The job goes on; the owner can still read its state with GET /jobs/{id}.
            eprintln!("cannot report to user:{owner}: {e}");
        }
    }

    /// Runs one job from the queue to its last event.
    async fn run(self: Arc<Self>, seq: u64) {
        let Some((owner, limit, cancel)) = self.lock().get_mut(&seq).map(|job| {
            job.view.status = "running";
            (job.owner.clone(), job.view.limit, Arc::clone(&job.cancel))
        }) else {
            return;
        };
        let id = job_id(seq);
        self.report(&owner, Event::generation_started(&id)).await;
        let started = Instant::now();
        let (progress, mut reports) = mpsc::unbounded_channel();
        let work = tokio::task::spawn_blocking(move || {
            primes::count_below(limit, &cancel, |p| {
                let _ = progress.send(p);
            })
        });
        while let Some(p) = reports.recv().await {
            self.update(seq, |v| v.progress = p.percent);
            let message = format!("checked {} of {limit} numbers: {} primes so far", p.checked, p.primes);
            self.report(&owner, Event::generation_progress(&id, p.percent, message)).await;
        }
        let event = match work.await {
            Ok(Some(primes)) => {
                let result = GenerationResult {
                    url: format!("/jobs/{id}"),
                    provider: "prime-sieve".to_owned(),
                    latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                let event = Event::generation_complete(&id, &result);
                // The catalogue's result says where and how; the answer itself goes with it.
                let mut result = event.fields().get("result").cloned().unwrap_or_else(|| json!({}));
                result["limit"] = json!(limit);
                result["primes"] = json!(primes);
                self.update(seq, |v| {
                    v.status = "complete";
                    v.result = Some(result.clone());
                });
                event.with("result", result)
            }
            Ok(None) => self.fail(seq, &id, "cancelled"),
            Err(e) => self.fail(seq, &id, &format!("the job stopped unexpectedly: {e}")),
        };
        self.report(&owner, event).await;
    }

    fn fail(&self, seq: u64, id: &str, error: &str) -> Event {
        self.update(seq, |v| {
            v.status = "failed";
            v.error = Some(error.to_owned());
        });
        Event::generation_failed(id, error)
    }
}

/// Takes jobs off the queue and runs up to [`WORKERS`] at once, until the app is gone.
async fn worker(jobs: std::sync::Weak<Jobs>, mut waiting: mpsc::Receiver<u64>) {
    let slots = Arc::new(Semaphore::new(WORKERS));
    while let Some(seq) = waiting.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let Some(jobs) = jobs.upgrade() else { return };
        tokio::spawn(async move {
            jobs.run(seq).await;
            drop(slot);
        });
    }
}

fn job_id(seq: u64) -> String {
    format!("job-{seq}")
}

fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix("job-")?.parse().ok()
}
