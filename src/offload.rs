//! The offload pool: blocking or CPU-heavy work handed off by a handler
//! runs on a bounded pool of threads, so it neither stalls its loop nor
//! counts as a stall; the response is finished when the work returns.
//!
//! A job goes out through a bounded crossbeam channel (full: the request is
//! answered 503 at once) and its result comes back through the owning
//! loop's completion channel, with the loop woken by its `mio::Waker`.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use crossbeam_utils::CachePadded;

use crate::http::response::Work;
use crate::Response;

/// One offloaded request, on its way to the pool.
pub(crate) struct Job {
    pub(crate) work: Work,
    /// Header fields set before the work was offloaded: its response
    /// starts with them.
    pub(crate) headers: crate::http::response::Fields,
    /// Where the result goes: the owning loop's channel and waker.
    pub(crate) reply_to: Sender<Mail>,
    pub(crate) waker: Arc<mio::Waker>,
    /// The connection (slab key) and the job's id, unique within its loop.
    pub(crate) conn: usize,
    pub(crate) id: u64,
}

/// What a loop's mailbox brings: offloaded work done, a streamed body
/// with something to send (see `http::stream`), or an upload's reader that
/// made room or went away (see `http::upload`).
#[derive(Debug)]
pub(crate) enum Mail {
    Done(Completion),
    Body { conn: usize, id: u64 },
    Upload { conn: usize, id: u64 },
}

/// What the pool runs: a job whose response goes back to its loop, or a
/// task whose result goes elsewhere (a stream's producer).
enum Task {
    Respond(Job),
    Run(Box<dyn FnOnce() + Send + 'static>),
}

/// A finished job, back at its loop.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) conn: usize,
    pub(crate) id: u64,
    /// The response, or the panic of the work with the header fields it
    /// was given (for the 500 that answers instead).
    pub(crate) result:
        Result<Response, (Box<dyn std::any::Any + Send>, crate::http::response::Fields)>,
}

/// Pool-wide counters.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub(crate) queued: CachePadded<AtomicU64>,
    pub(crate) running: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) panicked: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Pool {
    jobs: Sender<Task>,
    pub(crate) counters: Arc<PoolCounters>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("conn", &self.conn).field("id", &self.id).finish()
    }
}

impl Pool {
    /// Starts `threads` workers behind a queue of `capacity` jobs. The
    /// workers end when the pool is dropped and the queue is empty.
    pub(crate) fn start(threads: usize, capacity: usize) -> io::Result<Pool> {
        let (jobs, queue) = crossbeam_channel::bounded(capacity);
        let counters = Arc::new(PoolCounters::default());
        for index in 0..threads {
            let (queue, counters) = (queue.clone(), counters.clone());
            thread::Builder::new()
                .name(format!("vigil-offload-{index}"))
                .spawn(move || work(queue, counters))?;
        }
        Ok(Pool { jobs, counters })
    }

    /// Queues a job; gives it back when the queue is full.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        self.queue(Task::Respond(job)).map_err(|task| match task {
            Task::Respond(job) => job,
            Task::Run(_) => unreachable!("a job was queued"),
        })
    }

    /// Queues a task; gives it back when the queue is full.
    pub(crate) fn run(
        &self,
        task: Box<dyn FnOnce() + Send + 'static>,
    ) -> Result<(), Box<dyn FnOnce() + Send + 'static>> {
        self.queue(Task::Run(task)).map_err(|task| match task {
            Task::Run(task) => task,
            Task::Respond(_) => unreachable!("a task was queued"),
        })
    }

    fn queue(&self, task: Task) -> Result<(), Task> {
        // Counted before it is sent, so a worker never decrements first.
        self.counters.queued.fetch_add(1, Relaxed);
        match self.jobs.try_send(task) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(task) | TrySendError::Disconnected(task)) => {
                self.counters.queued.fetch_sub(1, Relaxed);
                self.counters.rejected.fetch_add(1, Relaxed);
                Err(task)
            }
        }
    }
}

/// Removes each of the first `carried` fields (set before the work was
/// offloaded) that the work set again: the work's value wins, rather than
/// two `Content-Type` fields going out.
fn drop_overridden(headers: &mut crate::http::response::Fields, carried: usize) {
    let carried = carried.min(headers.len());
    if carried == headers.len() {
        return;
    }
    let mut index = 0;
    let mut left = carried;
    while index < left {
        let name = &headers[index].0;
        if headers[left..].iter().any(|(set, _)| set.eq_ignore_ascii_case(name)) {
            headers.remove(index);
            left -= 1;
        } else {
            index += 1;
        }
    }
}

fn work(queue: Receiver<Task>, counters: Arc<PoolCounters>) {
    for task in queue {
        counters.queued.fetch_sub(1, Relaxed);
        counters.running.fetch_add(1, Relaxed);
        let reply = match task {
            Task::Respond(job) => Some(respond(job, &counters)),
            Task::Run(task) => {
                // A producer that panics drops its writer unfinished, which
                // cuts its response short: that is the whole answer.
                if panic::catch_unwind(AssertUnwindSafe(task)).is_err() {
                    counters.panicked.fetch_add(1, Relaxed);
                }
                None
            }
        };
        // Counted before the loop hears of it, so the counts a client reads
        // once it has its response include it.
        counters.running.fetch_sub(1, Relaxed);
        counters.completed.fetch_add(1, Relaxed);
        if let Some((reply_to, waker, done)) = reply {
            // The loop may be gone (abandoned, stopped): then nobody waits.
            if reply_to.send(done).is_ok() {
                let _ = waker.wake();
            }
        }
    }
}

/// Runs a job; what to send its loop, and where.
fn respond(job: Job, counters: &PoolCounters) -> (Sender<Mail>, Arc<mio::Waker>, Mail) {
    let mut response = Response::new();
    let carried = job.headers.len();
    response.headers = job.headers;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (job.work)(&mut response)));
    let result = match outcome {
        Ok(()) => {
            drop_overridden(&mut response.headers, carried);
            Ok(response)
        }
        Err(payload) => {
            counters.panicked.fetch_add(1, Relaxed);
            response.headers.truncate(carried);
            Err((payload, std::mem::take(&mut response.headers)))
        }
    };
    (job.reply_to, job.waker, Mail::Done(Completion { conn: job.conn, id: job.id, result }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_the_work_sets_again_replace_the_carried_ones() {
        let field = |n: &'static str, v: &'static str| (n.into(), v.into());
        let mut headers: crate::http::response::Fields = vec![
            field("X-Request-Id", "1"),
            field("Content-Type", "text/plain"),
            field("content-type", "application/json"),
        ];
        drop_overridden(&mut headers, 2);
        assert_eq!(
            headers,
            vec![field("X-Request-Id", "1"), field("content-type", "application/json")]
        );
    }
}
