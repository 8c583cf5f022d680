//! The accept loop: dbwarden's own, over hyper's HTTP/1.1 connection, so
//! that every connection is bounded in number, in how long its headers
//! may take and in how large they may be, and gets TLS when configured
//! (the configuration as it is at its handshake: see [`super::tls`]).
//!
//! A slow or half-open client holds one connection slot for at most
//! [`HEADER_READ_TIMEOUT`] (TLS handshake included) and none of the
//! runtime: the handlers never wait on it, so `/livez` answers the probes
//! while such clients are connected. When all [`MAX_CONNECTIONS`] slots
//! are taken, a new connection takes the slot of the oldest connection
//! that has no request in flight (a client still sending its headers, in
//! its TLS handshake, or idle between requests), which is closed and
//! counted: holding every slot does not lock the probes out. Only when
//! every connection has a request in flight is the new one closed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AppState;
use super::auth::Rejection;

/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request's headers (and, first,
/// to finish the TLS handshake). Also how long an idle keep-alive
/// connection stays open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers), in bytes: larger
/// is answered 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a request may take, its body included: a client sending a body
/// slowly holds its slot (a request in flight is never evicted) at most this
/// long. Answered 503 beyond it (a reload still goes on).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new connection waits for the slot of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// What the handlers may know of the connection a request came on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection {
    /// The client presented a certificate the client CA verified.
    pub verified_client_cert: bool,
}

/// The open connections, oldest first: whether each has a request in
/// flight, and how to close it.
#[derive(Default)]
struct Open {
    next: AtomicU64,
    connections: Mutex<BTreeMap<u64, (Arc<AtomicUsize>, CancellationToken)>>,
}

impl Open {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Arc<AtomicUsize>, CancellationToken)>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection; it leaves the registry when the returned
    /// guard drops.
    fn add(self: &Arc<Self>) -> (OpenGuard, Arc<AtomicUsize>, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = CancellationToken::new();
        self.lock().insert(id, (busy.clone(), evict.clone()));
        (
            OpenGuard {
                open: self.clone(),
                id,
            },
            busy,
            evict,
        )
    }

    /// Closes the oldest connection without a request in flight; false
    /// when every connection is busy.
    fn evict_oldest_idle(&self) -> bool {
        let mut open = self.lock();
        let Some(id) = open
            .iter()
            .find(|(_, (busy, evict))| busy.load(Ordering::Acquire) == 0 && !evict.is_cancelled())
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some((_, evict)) = open.remove(&id) {
            evict.cancel();
        }
        true
    }
}

struct OpenGuard {
    open: Arc<Open>,
    id: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

/// Counts a request in flight on its connection while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        InFlight(busy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets requests in flight finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    app: AppState,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open = Arc::new(Open::default());
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment
                    // rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Every slot is taken: the oldest idle connection makes room.
                app.metrics
                    .record_rejection(Rejection::ConnectionLimit.as_str());
                let freed = if open.evict_oldest_idle() {
                    tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                match freed {
                    Some(slot) => slot,
                    None => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        app.security.refresh();
        let access = app.security.current();
        let tls = access
            .tls
            .as_ref()
            .map(|t| (t.current(), t.settings().client_auth.verifies()));
        drop(access);
        let (app, router, stop) = (app.clone(), router.clone(), stop.clone());
        let (registered, busy, evict) = open.add();
        connections.spawn(async move {
            let _slot = slot;
            let _registered = registered;
            let Some((config, verifies)) = tls else {
                tokio::select! {
                    _ = evict.cancelled() => {}
                    _ = connection(stream, Connection::default(), &app, router, &stop, &busy) => {}
                }
                return;
            };
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                _ = evict.cancelled() => return,
                done = tokio::time::timeout(HEADER_READ_TIMEOUT, handshake) => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        let reason = handshake_rejection(&e);
                        tracing::debug!(error = %e, reason = reason.as_str(), "TLS handshake failed");
                        app.metrics.record_rejection(reason.as_str());
                        return;
                    }
                    Err(_) => {
                        app.metrics.record_rejection(Rejection::HeaderTimeout.as_str());
                        return;
                    }
                },
            };
            let info = Connection {
                verified_client_cert: verifies && stream.get_ref().1.peer_certificates().is_some(),
            };
            tokio::select! {
                _ = evict.cancelled() => {}
                _ = connection(stream, info, &app, router, &stop, &busy) => {}
            }
        });
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One HTTP/1.1 connection, until the client closes it, a limit closes
/// it, or shutdown (after the request in flight).
async fn connection<S>(
    stream: S,
    info: Connection,
    app: &AppState,
    router: Router,
    stop: &CancellationToken,
    busy: &Arc<AtomicUsize>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let served = Arc::new(AtomicBool::new(false));
    let service = {
        let (served, busy, metrics) = (served.clone(), busy.clone(), app.metrics.clone());
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let in_flight = InFlight::new(&busy);
            served.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(info);
            let mut router = router.clone();
            let metrics = metrics.clone();
            async move {
                let _in_flight = in_flight;
                let call = tower_service::Service::call(&mut router, req.map(Body::new));
                let response = match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        metrics.record_rejection(Rejection::RequestTimeout.as_str());
                        super::error(
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "the request took longer than {}s",
                                REQUEST_TIMEOUT.as_secs()
                            ),
                        )
                    }
                };
                Ok::<Response<Body>, Infallible>(response)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(4 * MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        let reason = if e.is_parse_too_large() {
            Some(Rejection::HeaderTooLarge)
        } else if e.is_timeout() && !served.load(Ordering::Relaxed) {
            // After a request, the same timeout closes an idle keep-alive
            // connection: that is no rejection.
            Some(Rejection::HeaderTimeout)
        } else {
            None
        };
        if let Some(r) = reason {
            app.metrics.record_rejection(r.as_str());
        }
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Why a handshake failed: the client's certificate, or anything else.
fn handshake_rejection(e: &std::io::Error) -> Rejection {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            Rejection::ClientCertificate
        }
        _ => Rejection::TlsHandshake,
    }
}
