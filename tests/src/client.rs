//! The lab's command line talks to its daemon over the local socket: the
//! Kubernetes API (as the cluster admin) and the lab's own `/lab/v1` calls.

use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::paths::LabPaths;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the lab {0:?} is not running (no answer on {1})")]
    NotRunning(String, String),
    #[error("request to the lab failed: {0}")]
    Transport(String),
    /// The API answered with an error status; `reason` is Kubernetes'.
    #[error("{message}")]
    Api { code: u16, reason: String, message: String },
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { code: 404, .. })
    }
}

#[derive(Clone)]
pub struct LabClient {
    name: String,
    socket: PathBuf,
}

impl LabClient {
    pub fn new(paths: &LabPaths) -> Self {
        LabClient {
            name: paths.name.clone(),
            socket: paths.socket(),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> Result<Value, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|_| ClientError::NotRunning(self.name.clone(), self.socket.display().to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(connection);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "lab")
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        // As kubectl does, admission warnings go to the user.
        for warning in response.headers().get_all(header::WARNING) {
            let text = warning.to_str().unwrap_or_default();
            eprintln!(
                "Warning: {}",
                text.strip_prefix("299 - ").unwrap_or(text).trim_matches('"')
            );
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok(value);
        }
        Err(ClientError::Api {
            code: status.as_u16(),
            reason: value
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or(status.canonical_reason().unwrap_or(""))
                .to_string(),
            message: value
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| format!("{status}: {value}"), str::to_string),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None, "application/json").await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, Some(body), "application/json").await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::PUT, path, Some(body), "application/json").await
    }

    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        self.request(Method::PATCH, path, Some(patch), "application/merge-patch+json")
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, None, "application/json").await
    }

    /// Whether the daemon answers at all.
    pub async fn is_running(&self) -> bool {
        self.get("/healthz").await.is_ok()
    }
}

/// True when the status is one a retry may fix.
pub fn retryable(code: u16) -> bool {
    code == StatusCode::CONFLICT.as_u16() || code >= 500
}
