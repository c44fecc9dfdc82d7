//! The control API's HTTP server: an accept loop over hyper with the bounds `axum::serve`
//! lacks. A cap on open connections (beyond it, new ones wait in the kernel's backlog), a
//! deadline for each request's headers (a client that opens a connection and trickles bytes is
//! cut off) and for idle connections (one that sends nothing, or keeps a finished connection
//! open, is closed after the same time), and a shutdown in two steps that ends within a bounded time however slow the
//! clients attached: stop accepting and let in-flight requests finish for `shutdown_grace`,
//! then close what is left.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The server's bounds (config `api.*`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once, at most.
    pub connections_max: usize,
    /// Longest a client may take to send a request's headers, and longest a connection may
    /// stay open with no request in flight.
    pub header_timeout: Duration,
    /// Longest in-flight requests may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

/// What a connection is doing: requests in flight, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: Default::default(),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// `None` when the connection has been idle for `idle`; otherwise when to look again.
    fn idle_until(&self, idle: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return Some(now + idle);
        }
        let last = self.last.lock().map_or(now, |l| *l);
        let until = last + idle;
        (until > now).then_some(until)
    }
}

/// Counts a request in flight until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(Arc::clone(a))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.last.lock() {
            *l = tokio::time::Instant::now();
        }
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The router as a hyper service that keeps its connection's [`Activity`].
struct Tracked {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

type Incoming = hyper::Request<hyper::body::Incoming>;
type Inner = TowerToHyperService<Router>;

impl hyper::service::Service<Incoming> for Tracked {
    type Response = <Inner as hyper::service::Service<Incoming>>::Response;
    type Error = <Inner as hyper::service::Service<Incoming>>::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, req: Incoming) -> Self::Future {
        let busy = Busy::new(&self.activity);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(busy);
            r
        })
    }
}

/// How long to wait before accepting again after the listener failed (out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` resolves, then shuts down within
/// `limits.shutdown_grace`. Returns how many connections had to be closed unfinished.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> usize {
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let mut conns = JoinSet::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A slot before a connection: at the cap, clients wait in the backlog rather than
        // taking memory and a task each.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: TowerToHyperService::new(app.clone()),
            activity: Arc::clone(&activity),
        };
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let idle = limits.header_timeout;
            let mut check = tokio::time::Instant::now() + idle;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "API connection ended with an error");
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(check) => {
                        // A connection with no request in flight for `idle` is closed, so idle
                        // keep-alive connections cannot hold every slot.
                        match activity.idle_until(idle) {
                            Some(until) => check = until,
                            None => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                                break;
                            }
                        }
                    }
                    // The only change ever sent is the stop (a closed channel means the same).
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                        break;
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_ok() {
        return 0;
    }
    let left = conns.len();
    tracing::warn!(
        connections = left,
        grace_ms = limits.shutdown_grace.as_millis() as u64,
        "API connections still open after the shutdown grace; closing them"
    );
    conns.shutdown().await;
    left
}
