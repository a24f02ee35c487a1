//! The accept loop: every client connection of `hoard serve`, from accept to close.
//!
//! Invariant: at most `connections_max` client connections are open (a WebSocket counts until it
//! closes: the permit lives in the connection's I/O object, which an upgrade hands on); the next
//! one is answered `503 too_many_connections` with `Retry-After` and closed, by at most
//! `REFUSALS_IN_FLIGHT_MAX` refusal tasks (past those, it is closed unanswered), and each is
//! counted. Every connection must deliver each request header within `header_read_timeout_ms`,
//! so connections that trickle header bytes (or send nothing) are closed and counted, never held.
//! On shutdown the loop stops accepting and asks every connection to finish its request in flight
//! and close.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::HttpLimits;
use crate::metrics;

/// Refusals (503 answers to connections past the limit) being written at once; past it a
/// connection is closed without an answer. Each one lasts at most a few milliseconds plus
/// `REFUSAL_LINGER_MS`, so a flood cannot make the refusals themselves unbounded.
pub const REFUSALS_IN_FLIGHT_MAX: usize = 64;
/// How long a refusal may take to write its answer.
pub const REFUSAL_WRITE_TIMEOUT_MS: u64 = 1_000;
/// How long a refusal reads (and drops) what the client sent after the answer, so that closing
/// with unread bytes does not reset the connection before the client has read the answer.
pub const REFUSAL_LINGER_MS: u64 = 500;
/// Bytes a refusal reads at most while it lingers.
pub const REFUSAL_LINGER_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// Warnings about refused, cut or failed connections are logged at most this often (each is
/// counted in the metrics every time), so an attack cannot flood the log.
pub const CONNECTION_WARNING_INTERVAL_MS: u64 = 1_000;

/// Logs a warning at most once per `CONNECTION_WARNING_INTERVAL_MS` per kind.
#[derive(Debug, Default)]
struct WarningThrottle {
    last_ms: AtomicU64,
}

impl WarningThrottle {
    fn should_log(&self, started: Instant) -> bool {
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last_ms = self.last_ms.load(Ordering::Relaxed);
        (last_ms == 0 || now_ms.saturating_sub(last_ms) >= CONNECTION_WARNING_INTERVAL_MS)
            && self.last_ms.compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// What the accept loop shares with its connection tasks.
#[derive(Debug)]
struct Shared {
    started: Instant,
    refused_warning: WarningThrottle,
    header_timeout_warning: WarningThrottle,
    accept_error_warning: WarningThrottle,
    refused_total: AtomicU64,
    header_read_timeouts_total: AtomicU64,
}

/// A client connection's socket, holding its place under `connections_max` until it is dropped
/// (after the response, or when an upgraded WebSocket closes).
#[derive(Debug)]
struct CountedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl CountedStream {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit) -> CountedStream {
        ::metrics::gauge!(metrics::HTTP_CONNECTIONS_OPEN).increment(1.0);
        CountedStream { stream, _permit: permit }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::HTTP_CONNECTIONS_OPEN).decrement(1.0);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The answer to a connection past the limit: a complete HTTP/1.1 response that closes.
fn refusal_response(connections_max: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "error": "too_many_connections",
        "message": format!(
            "the server has its limit of {connections_max} connections open (connections_max); retry after a \
             second, reuse a keep-alive connection, or use another server"
        ),
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection past the limit and closes it, within bounded time and reads.
async fn refuse(mut stream: TcpStream, answer: Arc<Vec<u8>>, _refusal: OwnedSemaphorePermit) {
    let written =
        tokio::time::timeout(Duration::from_millis(REFUSAL_WRITE_TIMEOUT_MS), stream.write_all(&answer)).await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = stream.shutdown().await;
    let linger = async {
        let mut buffer = [0u8; 4096];
        let mut read_total = 0;
        while read_total < REFUSAL_LINGER_BYTES_MAX {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read_total += read,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(REFUSAL_LINGER_MS), linger).await;
}

/// Serves one connection until it closes, is cut by the header-read timeout, or shuts down
/// gracefully when `stopping` turns true.
async fn serve_connection(
    stream: CountedStream,
    app: Router,
    header_read_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    if error.is_timeout() {
                        ::metrics::counter!(metrics::HTTP_HEADER_READ_TIMEOUTS).increment(1);
                        let total = shared.header_read_timeouts_total.fetch_add(1, Ordering::Relaxed) + 1;
                        if shared.header_timeout_warning.should_log(shared.started) {
                            tracing::warn!(
                                header_read_timeout_ms = header_read_timeout.as_millis() as u64,
                                closed_total = total,
                                "closed a connection that did not send a request header in time (slow or idle client)"
                            );
                        }
                    } else {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                return;
            }
            // A dropped sender means the server is going away: the same as a shutdown.
            _ = stopping.wait_for(|stopping| *stopping), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Accepts connections until `stop_accepting` resolves, then asks every connection to finish and
/// close, and returns once all have (the caller bounds that wait with its shutdown deadline).
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    stop_accepting: impl std::future::Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX));
    let refusal_answer = Arc::new(refusal_response(limits.connections_max));
    let header_read_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let shared = Arc::new(Shared {
        started: Instant::now(),
        refused_warning: WarningThrottle::default(),
        header_timeout_warning: WarningThrottle::default(),
        accept_error_warning: WarningThrottle::default(),
        refused_total: AtomicU64::new(0),
        header_read_timeouts_total: AtomicU64::new(0),
    });
    let (stopping_sender, stopping) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop_accepting = std::pin::pin!(stop_accepting);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop_accepting => break,
            // Reap finished connection tasks so the set does not grow with the server's age.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                let kind = format!("{:?}", error.kind());
                ::metrics::counter!(metrics::HTTP_ACCEPT_ERRORS, "kind" => kind).increment(1);
                if shared.accept_error_warning.should_log(shared.started) {
                    tracing::warn!(
                        %error,
                        "accepting a connection failed; if the process is out of file descriptors, raise its \
                         open-file limit (ulimit -n) above connections_max plus the store's files and connections"
                    );
                }
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        // Answers are small and each one is awaited by a caller: send them at once rather than
        // let Nagle's algorithm hold a segment back for the client's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
        }
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let stream = CountedStream::new(stream, permit);
                tasks.spawn(serve_connection(
                    stream,
                    app.clone(),
                    header_read_timeout,
                    stopping.clone(),
                    shared.clone(),
                ));
            }
            Err(_) => {
                ::metrics::counter!(metrics::HTTP_CONNECTIONS_REFUSED).increment(1);
                let total = shared.refused_total.fetch_add(1, Ordering::Relaxed) + 1;
                if shared.refused_warning.should_log(shared.started) {
                    tracing::warn!(
                        connections_max = limits.connections_max,
                        refused_total = total,
                        "refused a connection: connections_max connections are open"
                    );
                }
                // Past the refusals' own limit the connection is closed unanswered (still counted).
                if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(refuse(stream, refusal_answer.clone(), refusal));
                }
            }
        }
    }
    drop(listener);
    let _ = stopping_sender.send(true);
    while tasks.join_next().await.is_some() {}
}
