//! Serving the API: HTTPS with bearer tokens on the lab network (what pods
//! use, through in-cluster config), plain HTTP on a local socket for the
//! lab's command line. The network side can be taken down and brought back,
//! to show what the mesh does when the API server goes away.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use http::{Request, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::Principal;
use super::error::ApiError;
use super::{Api, error_response};

/// The HTTPS side, which can be stopped and started.
pub struct NetworkServer {
    api: Arc<Api>,
    tls: TlsAcceptor,
    addr: SocketAddr,
    running: Mutex<Option<CancellationToken>>,
}

impl NetworkServer {
    pub fn new(api: Arc<Api>, tls: Arc<rustls::ServerConfig>, addr: SocketAddr) -> Self {
        NetworkServer {
            api,
            tls: TlsAcceptor::from(tls),
            addr,
            running: Mutex::new(None),
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Binds and serves; a no-op when already serving.
    pub async fn start(&self) -> std::io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        let stop = CancellationToken::new();
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop.clone());
        let (api, tls) = (self.api.clone(), self.tls.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (api, tls, stop) = (api.clone(), tls.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    serve_connection(stream, api, stop, Side::Network).await;
                });
            }
        });
        Ok(())
    }

    /// Closes the listener and every connection and watch on it.
    pub fn stop(&self) {
        if let Some(stop) = self.running.lock().unwrap_or_else(PoisonError::into_inner).take() {
            stop.cancel();
        }
    }
}

/// Where a connection came from, which decides how it authenticates.
#[derive(Clone, Copy)]
enum Side {
    /// The lab network: bearer tokens, as pods present them.
    Network,
    /// The lab's local socket: its own administration.
    Local,
}

fn bearer(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn serve_connection<S>(stream: S, api: Arc<Api>, stop: CancellationToken, side: Side)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request_stop = stop.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let (api, stop) = (api.clone(), request_stop.clone());
        async move {
            let public = matches!(request.uri().path(), "/version" | "/healthz" | "/readyz" | "/livez");
            let principal = match side {
                Side::Local => Some(Principal::Admin),
                Side::Network => bearer(&request).and_then(|token| api.tokens.authenticate(token)),
            };
            let response = match principal {
                Some(principal) => api.handle(request, principal, stop).await,
                None if public => api.handle(request, Principal::Anonymous, stop).await,
                None => api.stats.count(
                    &Principal::Anonymous.user_name(),
                    None,
                    error_response(&ApiError::unauthorized()),
                ),
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {},
        _ = stop.cancelled() => {},
    }
}

/// Serves the local socket: everything on it is the lab's own administration.
pub async fn serve_unix(api: Arc<Api>, path: &Path, shutdown: CancellationToken) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            tokio::spawn(serve_connection(stream, api.clone(), shutdown.clone(), Side::Local));
        }
    });
    Ok(())
}
