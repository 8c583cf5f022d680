//! The accept loop: dbwarden's own, over hyper's HTTP/1.1 connection, so
//! that every connection is bounded in number, in how long its headers
//! may take and in how large they may be, and gets TLS when configured
//! (the configuration as it is at its handshake: see [`super::tls`]).
//!
//! A slow or half-open client holds one connection slot for at most
//! [`HEADER_READ_TIMEOUT`] (TLS handshake included) and none of the
//! runtime: the handlers never wait on it, so `/livez` answers the probes
//! while such clients are connected. Beyond [`MAX_CONNECTIONS`] new
//! connections are closed at once (counted), never queued.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
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

/// What the handlers may know of the connection a request came on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection {
    /// The client presented a certificate the client CA verified.
    pub verified_client_cert: bool,
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            app.metrics
                .record_rejection(Rejection::ConnectionLimit.as_str());
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = app.security.current().tls.as_ref().map(|t| t.current());
        let (app, router, stop) = (app.clone(), router.clone(), stop.clone());
        connections.spawn(async move {
            let _slot = slot;
            let Some(config) = tls else {
                connection(stream, Connection::default(), &app, router, &stop).await;
                return;
            };
            let verifies = app
                .security
                .current()
                .web
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth.verifies());
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
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
            connection(stream, info, &app, router, &stop).await;
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
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = {
        let served = served.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            served.store(true, std::sync::atomic::Ordering::Relaxed);
            req.extensions_mut().insert(info);
            let mut router = router.clone();
            async move {
                let response: Result<Response<Body>, Infallible> =
                    tower_service::Service::call(&mut router, req.map(Body::new)).await;
                response
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
        } else if e.is_timeout() && !served.load(std::sync::atomic::Ordering::Relaxed) {
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
