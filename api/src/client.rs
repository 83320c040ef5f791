//! How a client reaches a control-plane API: gRPC (HTTP/2) over TCP and
//! TLS, where TLS is the connector's and not tonic's, so the caller chooses
//! the rustls configuration (the proxy's rotating certificate, a test's
//! chosen one) and may give a fresh one on every connect.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Endpoint;

/// A control-plane address, `host:port` (`[v6]:port` for IPv6), checked
/// once: the host is also the TLS server name the certificate must carry.
#[derive(Debug, Clone)]
pub struct Target {
    addr: String,
    server_name: ServerName<'static>,
}

/// Why an address is no [`Target`].
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not `host:port`, or the host is neither a DNS name nor an IP address.
    #[error("control-plane address {addr:?} is not host:port with a DNS name or an IP address")]
    Address {
        /// The address as given.
        addr: String,
    },
    /// tonic refused the `http://host:port` it was given.
    #[error("control-plane address {addr:?}")]
    Uri {
        /// The address as given.
        addr: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
}

impl Target {
    /// Checks `addr` (`host:port`).
    ///
    /// # Errors
    /// [`TargetError::Address`] when it has no port or its host is no
    /// server name.
    pub fn parse(addr: &str) -> Result<Self, TargetError> {
        let invalid = || TargetError::Address { addr: addr.to_string() };
        let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
        port.parse::<u16>().map_err(|_| invalid())?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server_name = ServerName::try_from(host).map_err(|_| invalid())?;
        Ok(Self {
            addr: addr.to_string(),
            server_name,
        })
    }

    /// A tonic endpoint for the target (scheme `http`: TLS is the
    /// connector's), for the caller to set timeouts and keep-alives on.
    ///
    /// # Errors
    /// [`TargetError::Uri`] when tonic refuses the address as a URI.
    pub fn endpoint(&self) -> Result<Endpoint, TargetError> {
        Endpoint::from_shared(format!("http://{}", self.addr)).map_err(|source| TargetError::Uri {
            addr: self.addr.clone(),
            source,
        })
    }

    /// A connector for [`Endpoint::connect_with_connector`] (or its lazy
    /// form): each connection opens TCP to the target (without Nagle's
    /// delay: tonic's own `tcp_nodelay` does not reach a custom connector)
    /// and TLS with the configuration `config` gives at that moment (its
    /// ALPN must offer `h2`). Errors are the TCP or TLS ones, or `config`'s.
    pub fn connector<F>(
        &self,
        config: F,
    ) -> impl tower::Service<
        http::Uri,
        Response = TokioIo<TlsStream<TcpStream>>,
        Error = std::io::Error,
        Future = impl Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send,
    > + Clone
    + Send
    + 'static
    where
        F: Fn() -> std::io::Result<Arc<ClientConfig>> + Clone + Send + Sync + 'static,
    {
        let target = self.clone();
        tower::service_fn(move |_: http::Uri| {
            let (target, config) = (target.clone(), config.clone());
            async move {
                let config = config()?;
                let tcp = TcpStream::connect(&target.addr).await?;
                // Small messages, not to be held back for more.
                tcp.set_nodelay(true)?;
                let tls = TlsConnector::from(config).connect(target.server_name, tcp).await?;
                Ok(TokioIo::new(tls))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_host_and_port_with_a_server_name() {
        for good in [
            "strait-injector.strait-system.svc:8086",
            "198.18.0.5:8086",
            "[fd00::1]:8086",
        ] {
            let target = Target::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            let endpoint = target.endpoint().unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(endpoint.uri().to_string(), format!("http://{good}/"));
        }
        for bad in ["strait-injector", "host:port", "host:70000", "bad host:8086", ":8086"] {
            let error = Target::parse(bad).expect_err(bad).to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }
}
