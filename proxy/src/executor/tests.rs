use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use hyper::rt::Executor as _;
use tokio::sync::oneshot;

use super::{Executor, Shared, Spawned};

/// A future that counts its polls and ends when `done` fires.
async fn counted(polls: Arc<AtomicUsize>, mut done: oneshot::Receiver<()>) {
    std::future::poll_fn(|cx| {
        polls.fetch_add(1, Ordering::Relaxed);
        match std::pin::Pin::new(&mut done).poll(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

use std::future::Future as _;

#[tokio::test(flavor = "current_thread")]
async fn futures_run_inside_the_connection_task_and_the_drive_waits_for_them() {
    let (executor, driver) = Executor::for_connection();
    assert!(matches!(executor, Executor::Inline(_)));
    let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let (finish, finished) = oneshot::channel();
    let (ran, mut ran_rx) = oneshot::channel();
    let connection = {
        let executor = executor.clone();
        async move {
            // As the HTTP library does: a stream's future, handed over
            // while the connection runs, outliving the connection.
            executor.execute(async move {
                let _ = finished.await;
                let _ = ran.send(());
            });
            "connection ended"
        }
    };
    let driving = tokio::spawn(Executor::drive(connection, driver));
    tokio::task::yield_now().await;
    // One task for the connection and its stream, not two.
    assert_eq!(
        tokio::runtime::Handle::current().metrics().num_alive_tasks(),
        tasks_before + 1
    );
    assert!(!driving.is_finished(), "the drive ends only after the stream's future");
    assert!(ran_rx.try_recv().is_err());
    finish.send(()).expect("stream future waiting");
    assert_eq!(driving.await.expect("drive"), "connection ended");
    ran_rx.await.expect("stream future ran to its end");
}

#[tokio::test(flavor = "current_thread")]
async fn the_connection_is_polled_only_when_woken() {
    let (executor, driver) = Executor::for_connection();
    let connection_polls = Arc::new(AtomicUsize::new(0));
    let (end_connection, connection_done) = oneshot::channel();
    let connection = counted(connection_polls.clone(), connection_done);
    let stream_polls = Arc::new(AtomicUsize::new(0));
    let mut wakes = Vec::new();
    for _ in 0..10 {
        let (wake, woken) = oneshot::channel::<()>();
        wakes.push(wake);
        let polls = stream_polls.clone();
        executor.execute(counted(polls, woken));
    }
    let driving = tokio::spawn(Executor::drive(connection, driver));
    tokio::task::yield_now().await;
    let connection_polls_at_start = connection_polls.load(Ordering::Relaxed);
    assert_eq!(connection_polls_at_start, 1);
    assert_eq!(stream_polls.load(Ordering::Relaxed), 10);
    // Ten streams end one by one: each is polled once more, the connection
    // not at all.
    for wake in wakes {
        wake.send(()).expect("stream waiting");
        tokio::task::yield_now().await;
    }
    assert_eq!(stream_polls.load(Ordering::Relaxed), 20);
    assert_eq!(connection_polls.load(Ordering::Relaxed), connection_polls_at_start);
    end_connection.send(()).expect("connection waiting");
    driving.await.expect("drive");
    assert_eq!(connection_polls.load(Ordering::Relaxed), connection_polls_at_start + 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_future_handed_over_after_the_drive_ended_still_runs() {
    let (executor, driver) = Executor::for_connection();
    Executor::drive(async {}, driver).await;
    let (ran, ran_rx) = oneshot::channel();
    executor.execute(async move {
        let _ = ran.send(());
    });
    ran_rx.await.expect("spawned as a task of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_many_threads_each_future_is_a_task() {
    let (executor, driver) = Executor::for_connection();
    assert!(matches!(executor, Executor::Spawn));
    let (ran, ran_rx) = oneshot::channel();
    executor.execute(async move {
        let _ = ran.send(());
    });
    ran_rx.await.expect("spawned");
    assert_eq!(Executor::drive(async { 7 }, driver).await, 7);
}

#[test]
fn spawned_futures_are_send() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Spawned>();
    send::<Executor>();
    sync::<Executor>();
    sync::<Shared>();
}

#[tokio::test(flavor = "current_thread")]
async fn the_connection_is_dropped_as_soon_as_it_ends() {
    // As the HTTP client's I/O future, which ends only once the connection
    // handle (owned by the connection's future) is dropped.
    let (executor, driver) = Executor::for_connection();
    let (handle, handle_dropped) = oneshot::channel::<()>();
    executor.execute(async move {
        let _ = handle_dropped.await;
    });
    // A future that keeps what it owns after it is ready, as a struct
    // future does until it is dropped.
    let connection = std::future::poll_fn(move |_| {
        let _owned = &handle;
        Poll::Ready(())
    });
    tokio::time::timeout(std::time::Duration::from_secs(5), Executor::drive(connection, driver))
        .await
        .expect("the drive ends once the connection has ended and dropped what it owned");
}

#[tokio::test(flavor = "current_thread")]
async fn a_wake_of_an_ended_connection_does_not_keep_the_driver_busy() {
    // The connection ends at once, leaving its waker with a stream that
    // wakes it later (as an HTTP/2 connection's reads for a stream that
    // outlives it do).
    let (executor, driver) = Executor::for_connection();
    let left_waker: Arc<std::sync::Mutex<Option<std::task::Waker>>> = Arc::default();
    let connection = {
        let left_waker = left_waker.clone();
        std::future::poll_fn(move |cx| {
            *left_waker.lock().expect("waker slot") = Some(cx.waker().clone());
            Poll::Ready(())
        })
    };
    let (end_stream, stream_ended) = oneshot::channel::<()>();
    let stream_polls = Arc::new(AtomicUsize::new(0));
    executor.execute(counted(stream_polls.clone(), stream_ended));
    let driver_polls = Arc::new(AtomicUsize::new(0));
    let mut driven = Box::pin(Executor::drive(connection, driver));
    let driving = {
        let driver_polls = driver_polls.clone();
        tokio::spawn(std::future::poll_fn(move |cx| {
            driver_polls.fetch_add(1, Ordering::Relaxed);
            driven.as_mut().poll(cx)
        }))
    };
    tokio::task::yield_now().await;
    left_waker
        .lock()
        .expect("waker slot")
        .take()
        .expect("connection polled")
        .wake();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let polls = driver_polls.load(Ordering::Relaxed);
    assert!(
        polls <= 3,
        "the driver was polled {polls} times while nothing but an ended connection was woken"
    );
    end_stream.send(()).expect("stream waiting");
    driving.await.expect("drive");
    assert_eq!(stream_polls.load(Ordering::Relaxed), 2);
}
