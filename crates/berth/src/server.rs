//! Serving connections: the accept loop for plain HTTP and TLS, and the limits that keep a
//! flood of slow, idle or half-open connections from starving real clients.
//!
//! - A TLS client must finish its handshake within `tls_handshake`.
//! - An HTTP/1 client must send a request's complete headers within `header_read` (hyper's
//!   timer).
//! - A connection with no request in flight and no byte moved for `idle` is closed.
//! - At most `max_connections` are served at once. A new client at the cap takes the place of
//!   the connection that has waited longest without a request in flight (idle, or still
//!   sending its headers): a flood of half-sent requests cannot lock out a client that sends
//!   a whole one. When every connection is busy with a request, the new one is closed.
//! - Body reads have their own stall timeout in the API layer (a slow upload that keeps
//!   moving is never cut off).
//!
//! On shutdown no new connection is accepted and open ones finish their requests.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// The connection limits; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read: Duration,
    pub tls_handshake: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

/// Connections allowed when none is configured: three quarters of the descriptor limit,
/// leaving the rest for blob files, the database and the listener itself.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX).min(1 << 20);
    (soft / 4 * 3).max(16)
}

/// Milliseconds since the first call: a clock that fits an atomic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What the accept loop and a connection's task share about that connection.
struct ConnState {
    /// Requests being handled right now.
    in_flight: AtomicUsize,
    /// When a byte last moved, in [`now_ms`].
    last_active: AtomicU64,
    /// Told to close when another client needs the place.
    evict: Notify,
}

impl ConnState {
    fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(now_ms()),
            evict: Notify::new(),
        })
    }

    fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }

    fn waiting(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }
}

/// The open connections, for the cap and for eviction.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    closed: Notify,
}

impl Connections {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection, evicting the longest-waiting one at the cap; `None`
    /// when every connection is busy with a request.
    fn admit(&self, max: usize) -> Option<(u64, Arc<ConnState>)> {
        let mut open = self.open();
        if open.len() >= max {
            let victim = open
                .iter()
                .filter(|(_, c)| c.waiting())
                .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(c) = open.remove(&victim) {
                c.evict.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = ConnState::new();
        open.insert(id, state.clone());
        Some((id, state))
    }

    fn close(&self, id: u64) {
        self.open().remove(&id);
        self.closed.notify_waiters();
    }

    fn count(&self) -> usize {
        self.open().len()
    }
}

/// A socket that notes when bytes move.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request as in flight until its handler has answered.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: &Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true, then
/// waits for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = Arc::new(Connections::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let mut refused_busy = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: back off instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some((id, state)) = connections.admit(limits.max_connections) else {
            refused_busy += 1;
            if refused_busy.is_power_of_two() {
                tracing::warn!(
                    max = limits.max_connections,
                    refused = refused_busy,
                    "every connection is busy with a request; closing new ones"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let task = ConnectionTask {
            app: app.clone(),
            builder: builder.clone(),
            acceptor: acceptor.clone(),
            limits,
            peer,
            state,
            stop: stop.clone(),
        };
        let connections = connections.clone();
        tokio::spawn(async move {
            task.run(tcp).await;
            connections.close(id);
        });
    }
    // Shutdown: open connections were told to finish; wait for them.
    while connections.count() > 0 {
        let closed = connections.closed.notified();
        if connections.count() == 0 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), closed).await;
    }
}

struct ConnectionTask {
    app: axum::Router,
    builder: auto::Builder<TokioExecutor>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    peer: SocketAddr,
    state: Arc<ConnState>,
    stop: watch::Receiver<bool>,
}

impl ConnectionTask {
    async fn run(self, tcp: tokio::net::TcpStream) {
        let io = Tracked {
            inner: tcp,
            state: self.state.clone(),
        };
        match self.acceptor.clone() {
            None => self.serve_http(io).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.tls_handshake, acceptor.accept(io));
                let evicted = self.state.evict.notified();
                tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => self.serve_http(tls).await,
                        Ok(Err(e)) => tracing::debug!(peer = %self.peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                    },
                    _ = evicted => {}
                }
            }
        }
    }

    async fn serve_http<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, peer, state) = (self.app.clone(), self.peer, self.state.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(&state);
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                drop(in_flight);
                response
            }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let mut stop = self.stop.clone();
        let idle = self.limits.idle;
        let mut closing = false;
        loop {
            let since = now_ms().saturating_sub(self.state.last_active.load(Ordering::Relaxed));
            let next_check = idle
                .saturating_sub(Duration::from_millis(since))
                .max(Duration::from_millis(50));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %peer, "connection ended: {e}");
                    }
                    return;
                }
                _ = self.state.evict.notified() => {
                    tracing::debug!(peer = %peer, "closing a waiting connection for a new client");
                    return;
                }
                _ = stop.wait_for(|s| *s), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep(next_check) => {
                    let quiet = now_ms().saturating_sub(self.state.last_active.load(Ordering::Relaxed));
                    if self.state.waiting() && Duration::from_millis(quiet) >= idle {
                        tracing::debug!(peer = %peer, "closing an idle connection");
                        return;
                    }
                }
            }
        }
    }
}
