//! gRPC unary calls on one HTTP/2 connection, framed by hand so the load
//! generator costs as little as possible: the lab service's `Unary` request
//! is a protobuf with the payload as field 1, and the reply names the pod
//! that served it in field 1.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_contract::Chain;
use tokio::net::TcpStream;

const PATH: &str = "/strait.lab.Lab/Unary";

/// One HTTP/2 connection; cloning shares it.
#[derive(Clone)]
pub struct Channel {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Channel {
    pub async fn connect(to: &str) -> anyhow::Result<Channel> {
        let stream = TcpStream::connect(to).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .max_concurrent_reset_streams(1024)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(connection);
        Ok(Channel {
            sender,
            authority: to.to_string(),
        })
    }

    /// One call: the pod that answered, or what went wrong.
    pub async fn unary(&self, payload: Bytes) -> Result<String, String> {
        let request = Request::post(format!("http://{}{PATH}", self.authority))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(frame(&payload)))
            .map_err(|e| e.to_string())?;
        let mut sender = self.sender.clone();
        let response = sender.send_request(request).await.map_err(|e| Chain(&e).to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|e| Chain(&e).to_string())?;
        let field = |name: &str| {
            collected
                .trailers()
                .and_then(|t| t.get(name))
                .or_else(|| parts.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = field("grpc-status").unwrap_or_else(|| "missing".into());
        if status != "0" {
            let message = field("grpc-message").unwrap_or_default();
            return Err(format!("grpc-status {status} {message}").trim_end().to_string());
        }
        Ok(pod_of(collected.to_bytes()).unwrap_or_default())
    }
}

/// A gRPC message frame holding `Request { payload }`.
fn frame(payload: &[u8]) -> Bytes {
    let mut message = BytesMut::new();
    message.put_u8(0x0a); // field 1, length-delimited
    put_varint(&mut message, payload.len() as u64);
    message.put_slice(payload);
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn get_varint(buf: &mut Bytes) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Field 1 (`pod`) of the reply in a gRPC frame; other fields are skipped.
fn pod_of(mut framed: Bytes) -> Option<String> {
    if framed.len() < 5 {
        return None;
    }
    framed.advance(5);
    while framed.has_remaining() {
        let key = get_varint(&mut framed)?;
        match key & 7 {
            0 => {
                get_varint(&mut framed)?;
            }
            2 => {
                let len = get_varint(&mut framed)? as usize;
                if framed.remaining() < len {
                    return None;
                }
                let value = framed.split_to(len);
                if key >> 3 == 1 {
                    return String::from_utf8(value.to_vec()).ok();
                }
            }
            1 => framed.advance(8.min(framed.remaining())),
            5 => framed.advance(4.min(framed.remaining())),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_and_the_pod_is_read_from_replies() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'b', b'c']);
        // Reply { pod: "web-1", sequence: 300 }
        let mut reply = BytesMut::new();
        reply.put_slice(&[0, 0, 0, 0, 10, 0x18, 0xac, 0x02, 0x0a, 5]);
        reply.put_slice(b"web-1");
        assert_eq!(pod_of(reply.freeze()).as_deref(), Some("web-1"));
    }
}
