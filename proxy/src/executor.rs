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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc;

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
    Inline(mpsc::UnboundedSender<Spawned>),
}

/// The receiving half of an inline [`Executor`]: pass it to
/// [`Executor::drive`] with the connection's future.
pub struct Driver {
    spawned: Option<mpsc::UnboundedReceiver<Spawned>>,
    woken: Arc<Woken>,
}

impl Driver {
    /// A waker that has the driving task poll the connection's future on
    /// its next turn, for a change the future reads but is not woken by
    /// (a setting the peer sent). A no-op when futures are spawned.
    pub fn connection_waker(&self) -> Waker {
        match self.spawned {
            Some(_) => Waker::from(self.woken.clone()),
            None => Waker::noop().clone(),
        }
    }
}

impl Executor {
    /// An executor for one connection, and its driver: inline on a
    /// single-threaded runtime, spawning on a multi-threaded one. Must be
    /// called inside the runtime.
    pub fn for_connection() -> (Executor, Driver) {
        let woken = Arc::new(Woken {
            pending: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        match Handle::current().runtime_flavor() {
            RuntimeFlavor::CurrentThread => {
                let (tx, rx) = mpsc::unbounded_channel();
                (
                    Executor::Inline(tx),
                    Driver {
                        spawned: Some(rx),
                        woken,
                    },
                )
            }
            _ => (Executor::Spawn, Driver { spawned: None, woken }),
        }
    }

    /// Runs `connection` to its end, polling the futures handed to this
    /// connection's executor alongside it; resolves to the connection's
    /// output once it has ended and every such future has finished.
    pub async fn drive<F: Future>(connection: F, driver: Driver) -> F::Output {
        let Driver {
            spawned: Some(spawned),
            woken,
        } = driver
        else {
            return connection.await;
        };
        Driven {
            connection: Box::pin(connection),
            output: None,
            connection_waker: Waker::from(woken.clone()),
            woken,
            spawned,
            running: FuturesUnordered::new(),
        }
        .await
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
            Executor::Inline(driver) => {
                if let Err(mpsc::error::SendError(future)) = driver.send(Box::pin(future)) {
                    tokio::spawn(future);
                }
            }
        }
    }
}

/// Says whether the connection's future was woken since it was last polled,
/// and wakes the driving task.
struct Woken {
    /// Starts true: the connection is polled on the first turn.
    pending: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.pending.store(true, Ordering::Release);
        self.task.wake();
    }
}

struct Driven<F: Future> {
    connection: Pin<Box<F>>,
    output: Option<F::Output>,
    connection_waker: Waker,
    woken: Arc<Woken>,
    spawned: mpsc::UnboundedReceiver<Spawned>,
    running: FuturesUnordered<Spawned>,
}

impl<F: Future> Unpin for Driven<F> {}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.woken.task.register(cx.waker());
        for _ in 0..ROUNDS_PER_TURN {
            let mut progressed = false;
            // The connection, when woken (and on the very first poll).
            if this.output.is_none() && this.woken.pending.swap(false, Ordering::AcqRel) {
                let mut connection_cx = Context::from_waker(&this.connection_waker);
                if let Poll::Ready(output) = this.connection.as_mut().poll(&mut connection_cx) {
                    this.output = Some(output);
                }
                progressed = true;
            }
            // What it handed over since.
            while let Poll::Ready(Some(future)) = this.spawned.poll_recv(cx) {
                this.running.push(future);
                progressed = true;
            }
            // Those woken since they were last polled.
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {
                progressed = true;
            }
            if this.output.is_some() && this.running.is_empty() {
                return Poll::Ready(this.output.take().expect("checked"));
            }
            if !progressed && !this.woken.pending.load(Ordering::Acquire) {
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
