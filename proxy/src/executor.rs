//! Where the futures an HTTP/2 connection starts run: a request's service
//! call and response (server side), a request body's pipe and a response's
//! wait (client side), the connection's own I/O task (client side).
//!
//! The HTTP library hands each such future to an executor. Spawned as tasks
//! of their own, every gRPC call costs three task spawns per proxy, each a
//! registration in the runtime's task list, and every step of a call is a
//! wake-up across tasks. On the proxy's default single-threaded runtime
//! nothing is gained by that: [`Executor::for_connection`] instead returns
//! an executor whose futures are polled inside the task that drives their
//! connection ([`Executor::drive`]), each only when woken, as
//! `FuturesUnordered` polls its members. A connection is then one task,
//! however many streams it carries.
//!
//! On a multi-threaded runtime (`STRAIT_WORKER_THREADS` above 1) the futures
//! are spawned as before, so the streams of one connection still spread
//! over the threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures::future::Either;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;
use tokio::runtime::{Handle, RuntimeFlavor};

type Spawned = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Rounds of polling in one turn of the driving task before it yields to
/// the runtime's other tasks (other connections, the admin server).
const ROUNDS_PER_TURN: usize = 32;

/// An executor for the HTTP library's connection builders
/// (`hyper::rt::Executor`). Cheap to clone: clones feed the same driver.
#[derive(Clone)]
pub enum Executor {
    /// Each future is a task of its own (multi-threaded runtime).
    Spawn,
    /// Futures are polled inside the connection's driving task; a future
    /// handed over after that task ended is spawned instead.
    Inline(Arc<Shared>),
}

/// What an inline executor shares with its driving task.
pub struct Shared {
    /// Futures handed over and not yet taken by the driving task; `None`
    /// once it has ended. Every party is on the runtime's one thread, so the
    /// lock is never contended: it is a lock only because the HTTP library
    /// asks executors to be `Send + Sync`.
    handed: Mutex<Option<Vec<Spawned>>>,
    /// Whether the connection's future was woken since it was last polled.
    /// Starts true: the connection is polled on the first turn.
    connection_woken: AtomicBool,
    /// The driving task.
    task: AtomicWaker,
    /// Whether the driving task is polling now: then a future handed over
    /// or a wake of the connection needs no wake-up of the task, which
    /// looks at both before it returns.
    polling: AtomicBool,
}

impl Shared {
    /// Wakes the driving task, unless it is polling now and will see what
    /// changed before it returns.
    fn wake_task(&self) {
        // SeqCst pairs with the driving task's store of `polling` and its
        // second look (Driven::poll): one of the two sees the other.
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// The driving half of an [`Executor`]: pass it to [`Executor::drive`]
/// with the connection's future.
pub struct Driver(Option<Arc<Shared>>);

impl Executor {
    /// An executor for one connection, and its driver: inline on a
    /// single-threaded runtime, spawning on a multi-threaded one. Must be
    /// called inside the runtime.
    pub fn for_connection() -> (Executor, Driver) {
        match Handle::current().runtime_flavor() {
            RuntimeFlavor::CurrentThread => {
                let shared = Arc::new(Shared {
                    handed: Mutex::new(Some(Vec::new())),
                    connection_woken: AtomicBool::new(true),
                    task: AtomicWaker::new(),
                    polling: AtomicBool::new(false),
                });
                (Executor::Inline(shared.clone()), Driver(Some(shared)))
            }
            _ => (Executor::Spawn, Driver(None)),
        }
    }

    /// Runs `connection` to its end, polling the futures handed to this
    /// connection's executor alongside it; resolves to the connection's
    /// output once it has ended and every such future has finished.
    ///
    /// The connection is boxed, once: an `async fn` would keep its argument
    /// and, awaiting it, a second copy (rust-lang/rust#62958), and an HTTP/2
    /// connection is over 3 KiB (held for as long as the connection is).
    pub fn drive<F: Future>(connection: F, driver: Driver) -> impl Future<Output = F::Output> {
        let connection = Box::pin(connection);
        match driver.0 {
            None => Either::Left(connection),
            Some(shared) => Either::Right(Driven {
                connection: Some(connection),
                output: None,
                connection_waker: Waker::from(shared.clone()),
                shared,
                taken: Vec::new(),
                running: FuturesUnordered::new(),
            }),
        }
    }
}

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        match self {
            Executor::Spawn => {
                tokio::spawn(future);
            }
            Executor::Inline(shared) => {
                let future: Spawned = Box::pin(future);
                let refused = match shared.handed.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                    Some(handed) => {
                        handed.push(future);
                        None
                    }
                    None => Some(future),
                };
                match refused {
                    None => shared.wake_task(),
                    // The driving task has ended.
                    Some(future) => {
                        tokio::spawn(future);
                    }
                }
            }
        }
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.connection_woken.store(true, Ordering::SeqCst);
        self.wake_task();
    }
}

struct Driven<F: Future> {
    /// Dropped as soon as it has ended: what it owns may be what the
    /// futures still running wait on to finish (the HTTP client's I/O
    /// future ends when its connection handle is dropped).
    connection: Option<Pin<Box<F>>>,
    output: Option<F::Output>,
    connection_waker: Waker,
    shared: Arc<Shared>,
    /// Swapped with the handed-over futures, so taking them allocates
    /// nothing.
    taken: Vec<Spawned>,
    running: FuturesUnordered<Spawned>,
}

impl<F: Future> Unpin for Driven<F> {}

impl<F: Future> Driven<F> {
    /// Moves the futures handed over into the running set; whether any were.
    fn take_handed(&mut self) -> bool {
        {
            let mut handed = self.shared.handed.lock().unwrap_or_else(PoisonError::into_inner);
            match handed.as_mut() {
                Some(handed) if !handed.is_empty() => std::mem::swap(handed, &mut self.taken),
                _ => return false,
            }
        }
        for future in self.taken.drain(..) {
            self.running.push(future);
        }
        true
    }
}

impl<F: Future> Drop for Driven<F> {
    fn drop(&mut self) {
        // Futures handed over from now on are spawned. Those still here
        // belong to the connection and end with it, as they would on its
        // error.
        let left = self.shared.handed.lock().unwrap_or_else(PoisonError::into_inner).take();
        // Dropped without the lock: a future's drop may hand over another.
        drop(left);
    }
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.shared.task.register(cx.waker());
        this.shared.polling.store(true, Ordering::SeqCst);
        let polled = this.turn(cx);
        this.shared.polling.store(false, Ordering::SeqCst);
        // A wake that came while polling was true woke nothing: look again.
        if polled.is_pending() && this.has_work() {
            cx.waker().wake_by_ref();
        }
        polled
    }
}

impl<F: Future> Driven<F> {
    /// Whether the connection (while it runs) was woken or a future handed
    /// over. A wake of a connection that has ended is no work: futures
    /// still running may wake its waker, which it left registered.
    fn has_work(&self) -> bool {
        (self.connection.is_some() && self.shared.connection_woken.load(Ordering::SeqCst))
            || self
                .shared
                .handed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|handed| !handed.is_empty())
    }

    /// Polls what is ready, round after round while anything is, at most
    /// [`ROUNDS_PER_TURN`] rounds.
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        for _ in 0..ROUNDS_PER_TURN {
            let mut progressed = false;
            // The connection, when woken (and on the first turn).
            if let Some(connection) = self.connection.as_mut()
                && self.shared.connection_woken.swap(false, Ordering::SeqCst)
            {
                let mut connection_cx = Context::from_waker(&self.connection_waker);
                if let Poll::Ready(output) = connection.as_mut().poll(&mut connection_cx) {
                    self.output = Some(output);
                    self.connection = None;
                }
                progressed = true;
            }
            // What was handed over since.
            progressed |= self.take_handed();
            // Those woken since they were last polled.
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {
                progressed = true;
            }
            if self.output.is_some() && self.running.is_empty() {
                if !self.take_handed() {
                    return Poll::Ready(self.output.take().expect("checked"));
                }
                progressed = true;
            }
            if !progressed && !self.has_work() {
                return Poll::Pending;
            }
        }
        // Still busy: give the runtime's other tasks a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
