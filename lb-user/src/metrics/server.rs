//! The metrics endpoint: a hyper HTTP/1 server on a thread of its own, with
//! its own tokio runtime, serving `GET /metrics`. Each scrape reads the maps
//! and encodes on a blocking thread of that runtime; one at a time (others
//! wait their turn), so scrapes never take more than one CPU; at most
//! [`MAX_CONNECTIONS`] connections (more are closed at once), and a client
//! must send its request head within [`HEADER_TIMEOUT`]. Every thread of
//! the endpoint runs at nice [`NICE`]: when the CPUs are busy, the event
//! loop (probes, reloads) goes first.
use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, thread, time::Duration};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, warn};

use super::{Instruments, Scrape, Sources};

/// `--metrics` without an address: the loopback, port 9650 (in the
/// 9100-9999 range Prometheus exporters use by custom; any address may be
/// given instead).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9650";

/// Scrapes read and encoded at once; more wait for a turn.
pub const MAX_SCRAPES: usize = 1;
/// The endpoint threads' nice value (the rest of `lb` runs at 0).
pub const NICE: i32 = 10;
/// Open connections; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay open, whatever it does.
const CONNECTION_TIME: Duration = Duration::from_secs(120);

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct State {
    registry: Registry,
    sources: Sources,
    scrapes: Semaphore,
}

/// The endpoint's address, bound and not served yet.
pub struct Bound {
    listener: std::net::TcpListener,
}

/// Binds `addr`: `lb run` does it before anything changes, so that an
/// address it cannot bind stops it with nothing changed.
pub fn bind(addr: SocketAddr) -> io::Result<Bound> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(Bound { listener })
}

/// The running endpoint; dropped, it stops.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Bound {
    /// Serves the bound address on a thread of its own.
    pub fn serve(self, sources: Sources, instruments: &Instruments) -> io::Result<Server> {
        let listener = self.listener;
        let addr = listener.local_addr()?;
        let mut registry = Registry::default();
        instruments.register(&mut registry);
        let state = Arc::new(State {
            registry,
            sources,
            scrapes: Semaphore::new(MAX_SCRAPES),
        });
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(MAX_SCRAPES)
            .thread_name("lb-metrics")
            .on_thread_start(lower_priority)
            .build()?;
        let thread = thread::Builder::new()
            .name("lb-metrics".into())
            .spawn(move || {
                lower_priority();
                if let Err(err) = runtime.block_on(serve(listener, state, stopped)) {
                    warn!(%err, "metrics endpoint stopped");
                }
            })?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Server {
    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sets the calling thread's nice value to [`NICE`] (Linux: a thread's
/// own, by its id). A failure costs only the priority.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) != 0
    };
    if failed {
        debug!(
            "metrics: cannot lower the thread's priority: {}",
            io::Error::last_os_error()
        );
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stopped: oneshot::Receiver<()>,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    debug!(%err, "metrics accept");
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!("metrics: too many connections, one closed");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| answer(req, state.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(err)) = tokio::time::timeout(CONNECTION_TIME, connection).await {
                debug!(%err, "metrics connection");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics`: a scrape.
    Scrape,
    /// `HEAD /metrics`: the headers of a scrape, without one (a scrape
    /// reads every map; a HEAD has no use for what it reads).
    ScrapeHead,
    /// `/`: where the metrics are.
    Index,
    NotFound,
    /// Another method than GET and HEAD.
    NotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    let head = *method == Method::HEAD;
    if *method != Method::GET && !head {
        return Route::NotAllowed;
    }
    match path {
        "/metrics" if head => Route::ScrapeHead,
        "/metrics" => Route::Scrape,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

/// The methods the endpoint answers (`Allow` of a 405: RFC 9110 15.5.6).
const ALLOWED: &str = "GET, HEAD";

/// The answer to `route`, but a scrape's (hyper sends no body to a HEAD).
fn fixed(route: Route) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    match route {
        Route::Scrape | Route::ScrapeHead => reply(StatusCode::OK, CONTENT_TYPE, String::new()),
        Route::Index => reply(StatusCode::OK, text, "lb: metrics at /metrics\n".into()),
        Route::NotFound => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found: metrics are at /metrics\n".into(),
        ),
        Route::NotAllowed => {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                "GET /metrics\n".into(),
            );
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static(ALLOWED),
            );
            r
        }
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match route(req.method(), req.uri().path()) {
        Route::Scrape => scrape(state).await,
        other => fixed(other),
    })
}

async fn scrape(state: Arc<State>) -> Response<Full<Bytes>> {
    let Ok(_turn) = state.scrapes.acquire().await else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "stopping\n".into(),
        );
    };
    let state = state.clone();
    let done = tokio::task::spawn_blocking(move || {
        let scrape =
            Scrape::read(&state.sources).map_err(|e| format!("cannot read the data plane: {e}"))?;
        scrape
            .render(&state.registry)
            .map_err(|e| format!("cannot encode the metrics: {e}"))
    })
    .await;
    match done {
        Ok(Ok(body)) => reply(StatusCode::OK, CONTENT_TYPE, body),
        Ok(Err(message)) => {
            warn!("metrics scrape: {message}");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                message + "\n",
            )
        }
        Err(err) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("scrape failed: {err}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_answers_without_a_scrape_and_405_names_the_methods() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Scrape);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::ScrapeHead);
        assert_eq!(route(&Method::HEAD, "/"), Route::Index);
        assert_eq!(route(&Method::GET, "/nothing"), Route::NotFound);
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(route(&method, "/metrics"), Route::NotAllowed, "{method}");
        }
        // HEAD /metrics: a scrape's status and type, no scrape.
        let head = fixed(Route::ScrapeHead);
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[hyper::header::CONTENT_TYPE], CONTENT_TYPE);
        let refused = fixed(Route::NotAllowed);
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refused.headers()[hyper::header::ALLOW], "GET, HEAD");
    }
}
