//! Unary gRPC calls over one HTTP/2 connection (as a grpc.aio channel makes), the request's
//! protobuf bytes sent as they are in gRPC's 5-byte message frame.

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{Method, Request, Uri};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::run::CallError;

// The answers are small, but a large window keeps flow control out of the figures.
const WINDOW: u32 = 4 << 20;

pub struct GrpcClient {
    address: String,
    uri: Uri,
    connection: Mutex<Option<SendRequest<Bytes>>>,
}

/// gRPC's length-prefixed message: no compression flag, big-endian length, the bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).expect("a message under 4 GiB"));
    out.put_slice(message);
    out.freeze()
}

impl GrpcClient {
    pub fn new(address: &str, method: &str) -> Result<Self, String> {
        let uri = format!("http://{address}{method}")
            .parse()
            .map_err(|e| format!("{address}{method}: {e}"))?;
        Ok(Self {
            address: address.to_owned(),
            uri,
            connection: Mutex::new(None),
        })
    }

    /// The shared connection, made on first use and again after it broke; callers arriving
    /// while it is being made wait for it rather than each opening one.
    async fn sender(&self) -> Result<SendRequest<Bytes>, CallError> {
        let mut slot = self.connection.lock().await;
        if let Some(sender) = slot.as_ref() {
            return Ok(sender.clone());
        }
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|_| CallError::Connect)?;
        tcp.set_nodelay(true).map_err(|_| CallError::Connect)?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|_| CallError::Connect)?;
        tokio::spawn(async move {
            // Ends when the server closes; the next call's `ready` then fails and reconnects.
            let _ = connection.await;
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn forget_connection(&self) {
        *self.connection.lock().await = None;
    }

    pub async fn call(&self, framed: Bytes) -> Result<(), CallError> {
        let sender = self.sender().await?;
        let Ok(mut sender) = sender.ready().await else {
            self.forget_connection().await;
            return Err(CallError::Transport);
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a valid request");
        let (response, mut stream) = sender
            .send_request(request, false)
            .map_err(|_| CallError::Transport)?;
        stream
            .send_data(framed, true)
            .map_err(|_| CallError::Transport)?;
        let response = response.await.map_err(|_| CallError::Transport)?;
        if response.status() != http::StatusCode::OK {
            return Err(CallError::HttpStatus(response.status().as_u16()));
        }
        let (head, mut body) = response.into_parts();
        // A trailers-only answer (an error before any message) carries grpc-status here.
        if let Some(status) = grpc_status(&head.headers) {
            return status_result(status);
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|_| CallError::Transport)?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(|_| CallError::Transport)?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => status_result(status),
            None => Err(CallError::NoGrpcStatus),
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn status_result(status: u32) -> Result<(), CallError> {
    if status == 0 {
        Ok(())
    } else {
        Err(CallError::GrpcStatus(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_framed_with_its_length() {
        assert_eq!(&frame(b"abc")[..], b"\x00\x00\x00\x00\x03abc");
        assert_eq!(&frame(b"")[..], b"\x00\x00\x00\x00\x00");
    }
}
