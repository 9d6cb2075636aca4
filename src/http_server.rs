//! The one HTTP/1 serving loop of kacme, shared by the solver, the metrics and health endpoints and the
//! admission webhook: accept (a failed accept never stops the server), at most a fixed number of
//! connections at once, an optional TLS handshake with a deadline, a deadline for reading request headers
//! and one for answering, one task per connection, and on shutdown a bounded drain of the requests in
//! flight. Whoever can reach the port cannot exhaust the process.

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
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// How long one request may take to answer (reading its body included); then it gets a 503.
    pub request_timeout: Duration,
}

impl ServeOptions {
    /// Plain HTTP with defaults fit for a small internal server.
    pub fn plain(name: &'static str) -> ServeOptions {
        ServeOptions {
            name,
            tls: None,
            drain: Duration::ZERO,
            max_connections: 256,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains (see [`ServeOptions::drain`]).
pub async fn serve<H, F>(listener: TcpListener, options: ServeOptions, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let name = options.name;
    let graceful = GracefulShutdown::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
                let request_timeout = options.request_timeout;
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = handler(request);
                    async move {
                        let response = tokio::time::timeout(request_timeout, response).await.unwrap_or_else(|_| {
                            let mut late = Response::new(Full::new(Bytes::from_static(b"the request took too long\n")));
                            *late.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            late
                        });
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let builder = {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(CLIENT_DEADLINE);
                    builder
                };
                let watcher = graceful.watcher();
                let tls = options.tls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(options: ServeOptions, delay: Duration) -> (std::net::SocketAddr, crate::shutdown::ShutdownTrigger) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let (trigger, shutdown) = crate::shutdown::Shutdown::new();
        let handler = move |_: Request<Incoming>| async move {
            tokio::time::sleep(delay).await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        };
        tokio::spawn(serve(listener, options, handler, shutdown.stopped()));
        (address, trigger)
    }

    async fn get(stream: &mut tokio::net::TcpStream) -> String {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("request sent");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("answer read");
        answer
    }

    #[tokio::test]
    async fn a_request_that_takes_too_long_gets_a_503_and_the_server_goes_on() {
        let options = ServeOptions { request_timeout: Duration::from_millis(50), ..ServeOptions::plain("test") };
        let (address, _trigger) = start(options, Duration::from_millis(500)).await;
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connected");
        assert!(get(&mut stream).await.starts_with("HTTP/1.1 503"), "too slow: 503");
        let mut again = tokio::net::TcpStream::connect(address).await.expect("connected again");
        assert!(get(&mut again).await.starts_with("HTTP/1.1 503"), "still serving");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let options = ServeOptions { max_connections: 1, ..ServeOptions::plain("test") };
        let (address, _trigger) = start(options, Duration::ZERO).await;
        let idle = tokio::net::TcpStream::connect(address).await.expect("the first connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut second = tokio::net::TcpStream::connect(address).await.expect("queued by the kernel");
        let waiting = tokio::time::timeout(Duration::from_millis(300), get(&mut second)).await;
        assert!(waiting.is_err(), "not served while the only slot is taken");
        drop(idle);
        let mut third = tokio::net::TcpStream::connect(address).await.expect("connected");
        let answer =
            tokio::time::timeout(Duration::from_secs(5), get(&mut third)).await.expect("served once a slot is free");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
