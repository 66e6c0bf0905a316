//! The HTTP accept loop, run by hand rather than through `warp::serve` so that
//! stopping can be a lame-duck drain: stop accepting (the listening socket
//! stays open in the launcher, so new clients wait in its backlog for the next
//! daemon), answer whatever arrives on open connections with
//! `Connection: close`, and only then close idle keep-alive connections. A busy
//! keep-alive client thus moves to the next daemon between two requests and
//! never has a request cut off by a closing connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tracing::{debug, warn};
use warp::Filter;
use warp::http::HeaderValue;
use warp::http::header::CONNECTION;

use waiaas_shared::health::VERSION_HEADER;

/// How long open connections get to make their last request before idle ones
/// are closed.
pub const LAME_DUCK: Duration = Duration::from_secs(1);

/// Set once draining starts; every response then says `Connection: close`.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Wraps `routes` so responses close their connection while draining,
    /// and name the version that answered.
    pub fn wrap<F, R>(
        &self,
        routes: F,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible>
    + Clone
    + Send
    + Sync
    + 'static
    where
        F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
        R: warp::Reply,
    {
        let flag = self.0.clone();
        routes.map(move |reply: R| {
            crate::failpoint::answered();
            let mut response = reply.into_response();
            response.headers_mut().insert(
                VERSION_HEADER,
                HeaderValue::from_static(waiaas_shared::version::VERSION),
            );
            if flag.load(Ordering::SeqCst) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        })
    }
}

/// Counts open connections, so draining can end as soon as the last closes.
#[derive(Clone, Default)]
struct Open {
    count: Arc<AtomicUsize>,
    changed: Arc<Notify>,
}

struct OpenGuard(Open);

impl Open {
    fn enter(&self) -> OpenGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        OpenGuard(self.clone())
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.changed.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Serves `routes` on `listener` until `stop` yields a deadline, then drains
/// within that deadline.
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    draining: Draining,
    stop: oneshot::Receiver<Duration>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let service = warp::service(routes);
    let graceful = GracefulShutdown::new();
    let open = Open::default();
    let mut stop = stop;
    let deadline = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
                    let connection = graceful.watch(connection);
                    let guard = open.enter();
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            debug!("connection ended with an error: {e}");
                        }
                        drop(guard);
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            deadline = &mut stop => break deadline.unwrap_or(LAME_DUCK),
        }
    };
    draining.start();
    drop(listener);
    let started = tokio::time::Instant::now();
    let lame_duck = LAME_DUCK.min(deadline);
    if tokio::time::timeout(lame_duck, open.all_closed())
        .await
        .is_err()
    {
        debug!("closing idle connections after the lame-duck period");
    }
    let left = deadline.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "requests still running after the {} s deadline; closing them",
            deadline.as_secs()
        );
    }
}
