//! The read connections, each owned by a thread of its own that takes reads
//! from one queue, so SQLite never stalls the reactor and the same few
//! threads answer every read.
//!
//! Why not tokio's blocking pool: under load it wakes one of dozens of idle
//! threads for each read, in practice the one that slept longest, and each
//! comes back with the scheduler's credit for a long sleep, so it runs ahead
//! of anything else waiting on that CPU. Among what waits is the block
//! layer's worker that issues a commit's cache flush: traced here under 32
//! readers and a writer, one CPU switched between the runtime and pool
//! threads about 90,000 times a second while that worker, runnable, waited
//! 90 and 117 ms, and the commit with it. A few threads kept busy carry no
//! such credit.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

type Read = Box<dyn FnOnce(&Connection) + Send>;

/// The queue the reader threads share.
struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    reads: VecDeque<Read>,
    /// False once closed: no read is taken, and each thread, once the
    /// queue is empty, drops its connection and ends.
    open: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A read runs outside the lock, so no panic can poison it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shut(&self) {
        self.lock().open = false;
        self.ready.notify_all();
    }
}

/// The pool. Dropping it closes it (the threads end once the queue is
/// empty); [`Readers::close`] also waits for them.
pub struct Readers {
    queue: Arc<Queue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The pool's reads failed because it is closed.
#[derive(Debug)]
pub struct Closed;

impl Readers {
    /// One thread per connection.
    pub fn start(connections: Vec<Connection>) -> std::io::Result<Self> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                reads: VecDeque::new(),
                open: true,
            }),
            ready: Condvar::new(),
        });
        // Made first: if a later thread cannot start, dropping it ends the
        // ones already started.
        let readers = Self {
            queue,
            threads: Mutex::new(Vec::new()),
        };
        for conn in connections {
            let queue = Arc::clone(&readers.queue);
            let thread = std::thread::Builder::new()
                .name("db-reader".into())
                .spawn(move || read_loop(conn, &queue))?;
            readers
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(thread);
        }
        Ok(readers)
    }

    /// Runs `f` on the first free connection; `None` if `f` panicked (the
    /// connection stays usable: its statements are dropped, ending its read
    /// transaction).
    pub async fn read<T, F>(&self, f: F) -> Result<Option<T>, Closed>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> T + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        {
            let mut state = self.queue.lock();
            if !state.open {
                return Err(Closed);
            }
            state.reads.push_back(Box::new(move |conn| {
                let value = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))).ok();
                let _ = answer.send(value);
            }));
        }
        self.queue.ready.notify_one();
        // Every read queued before the close runs, so only a thread's end
        // drops one.
        answered.await.map_err(|_| Closed)
    }

    /// Runs what is queued, then closes every connection; reads after fail.
    pub async fn close(&self) {
        self.queue.shut();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.queue.shut();
    }
}

fn read_loop(conn: Connection, queue: &Queue) {
    loop {
        let read = {
            let mut state = queue.lock();
            loop {
                if let Some(read) = state.reads.pop_front() {
                    break read;
                }
                if !state.open {
                    return;
                }
                state = queue.ready.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        };
        read(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn pool(n: usize) -> (tempfile::TempDir, Readers) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (7);")
            .unwrap();
        let connections = (0..n).map(|_| Connection::open(&path).unwrap()).collect();
        (tmp, Readers::start(connections).unwrap())
    }

    /// Under many concurrent reads, the same few threads answer them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_read_runs_on_one_of_the_pools_own_threads() {
        let (_tmp, readers) = pool(4);
        let readers = Arc::new(readers);
        let reads: Vec<_> = (0..2000)
            .map(|_| {
                let readers = Arc::clone(&readers);
                tokio::spawn(async move {
                    readers
                        .read(|conn| {
                            let x: i64 = conn.query_row("SELECT x FROM t", [], |r| r.get(0))?;
                            let me = std::thread::current();
                            Ok::<_, rusqlite::Error>((x, me.id(), me.name().map(String::from)))
                        })
                        .await
                })
            })
            .collect();
        let mut threads = HashSet::new();
        for read in reads {
            let (x, id, name) = read.await.unwrap().unwrap().unwrap().unwrap();
            assert_eq!(x, 7);
            assert_eq!(name.as_deref(), Some("db-reader"));
            threads.insert(id);
        }
        assert!(threads.len() <= 4, "{} threads answered", threads.len());
    }

    /// A read that panics answers `None`; the connection serves the next.
    #[tokio::test]
    async fn a_read_that_panics_leaves_its_connection_usable() {
        let (_tmp, readers) = pool(1);
        let panicked = readers
            .read(|conn| -> i64 {
                let mut stmt = conn.prepare("SELECT x FROM t").unwrap();
                let _rows = stmt.query([]).unwrap();
                panic!("a read's own bug")
            })
            .await
            .unwrap();
        assert!(panicked.is_none());
        let x: i64 = readers
            .read(|conn| conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(x, 7);
    }

    /// Close runs what was queued before it, ends the threads, and fails
    /// every read after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_answers_what_was_queued_then_refuses() {
        let (_tmp, readers) = pool(1);
        let readers = Arc::new(readers);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (running, is_running) = oneshot::channel();
        let blocker = {
            let readers = Arc::clone(&readers);
            tokio::spawn(async move {
                readers
                    .read(move |_| {
                        let _ = running.send(());
                        wait.recv().is_ok()
                    })
                    .await
            })
        };
        is_running.await.unwrap();
        let queued = {
            let readers = Arc::clone(&readers);
            tokio::spawn(async move { readers.read(|_| 1).await })
        };
        for _ in 0..10_000 {
            if readers.queue.lock().reads.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            readers.queue.lock().reads.len(),
            1,
            "the second read is queued"
        );
        let closing = {
            let readers = Arc::clone(&readers);
            tokio::spawn(async move { readers.close().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!closing.is_finished(), "close did not wait for a read");
        assert!(readers.read(|_| 2).await.is_err());
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .expect("close waits for the threads, bounded")
            .unwrap();
        assert_eq!(blocker.await.unwrap().unwrap(), Some(true));
        assert_eq!(queued.await.unwrap().unwrap(), Some(1));
        assert!(readers.threads.lock().unwrap().is_empty());
    }
}
