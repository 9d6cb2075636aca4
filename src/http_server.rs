//! The one HTTP/1 serving loop of kacme, shared by the solver, the metrics and health endpoints and the
//! admission webhook: accept (a failed accept never stops the server), an optional TLS handshake with a
//! deadline, a deadline for reading request headers, one task per connection, and on shutdown a bounded
//! drain of the requests in flight.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client may take to send its request headers, or its side of the TLS handshake.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// How a server behaves.
#[derive(Clone)]
pub struct ServeOptions {
    /// What the server is, for log lines ("solver", "metrics endpoint", "webhook").
    pub name: &'static str,
    /// Serve HTTPS with this acceptor instead of plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long requests in flight may finish after shutdown before their connections are closed.
    pub drain: Duration,
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains (see [`ServeOptions::drain`]).
pub async fn serve<H, F>(listener: TcpListener, options: ServeOptions, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let name = options.name;
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Per-connection failures (for example EMFILE) must not stop the server.
                        tracing::warn!(%error, server = name, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
                let builder = {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(CLIENT_DEADLINE);
                    builder
                };
                let watcher = graceful.watcher();
                let tls = options.tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await,
                        Some(acceptor) => match tokio::time::timeout(CLIENT_DEADLINE, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await,
                            Ok(Err(error)) => {
                                tracing::debug!(%error, %peer, server = name, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                    };
                    if let Err(error) = result {
                        tracing::debug!(%error, server = name, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(options.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(server = name, "connections still open after {:?}; closing them", options.drain);
    }
}
