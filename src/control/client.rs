//! The CLI's side of the control API: HTTP/1.1 over the project's Unix socket, one connection
//! per request.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::protocol::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor is running for this project (no answer on {})", .0.display())]
    NoSupervisor(PathBuf),
    #[error("{error}")]
    Api {
        status: u16,
        error: String,
        hint: Option<String>,
    },
    #[error("control socket: {0}")]
    Transport(String),
}

impl ClientError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::NoSupervisor(_) => {
                Some("start one with `windlass up -d` (or `windlass up` in the foreground)".into())
            }
            ClientError::Api { hint, .. } => hint.clone(),
            ClientError::Transport(_) => None,
        }
    }
}

/// A client for one project's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NoSupervisor(self.socket.clone())
                }
                _ => ClientError::Transport(format!(
                    "cannot connect to {}: {e}",
                    self.socket.display()
                )),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            // The connection ends when the response body is dropped or fully read.
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "windlass")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        Err(api_error(status, &body))
    }

    /// Sends a request and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Transport(format!("unexpected answer: {e}")))
    }

    /// True if a supervisor answers on the socket.
    pub async fn alive(&self) -> bool {
        self.send(Method::GET, "/v1/status").await.is_ok()
    }
}

/// The error an unsuccessful answer carries: its JSON `ApiError`, or its text as is.
pub fn api_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => ClientError::Api {
            status,
            error: e.error,
            hint: e.hint,
        },
        Err(_) => ClientError::Api {
            status,
            error: String::from_utf8_lossy(body).into_owned(),
            hint: None,
        },
    }
}
