//! POSTs over HTTP/1.1 keep-alive connections, a pool of idle ones reused (as a provider client
//! does), a new one made when none is idle.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::run::CallError;

type Sender = SendRequest<Full<Bytes>>;

pub struct HttpClient {
    authority: String,
    path: String,
    headers: HeaderMap,
    idle: Mutex<Vec<Sender>>,
}

/// `http://host:port/path` into (host:port, /path).
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let authority = uri.authority().ok_or("no host")?;
    if authority.port().is_none() {
        return Err("needs an explicit port".into());
    }
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    Ok((authority.to_string(), path.to_owned()))
}

impl HttpClient {
    pub fn new(url: &str, headers: &BTreeMap<String, String>) -> Result<Self, String> {
        let (authority, path) = split_url(url)?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|e| format!("{name}: {e}"))?;
            let value =
                HeaderValue::try_from(value.as_str()).map_err(|e| format!("{name}: {e}"))?;
            map.insert(name, value);
        }
        map.insert(
            HOST,
            HeaderValue::try_from(authority.as_str()).map_err(|e| e.to_string())?,
        );
        Ok(Self {
            authority,
            path,
            headers: map,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Sender, CallError> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|_| CallError::Connect)?;
        tcp.set_nodelay(true).map_err(|_| CallError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| CallError::Connect)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    pub async fn call(&self, body: Bytes) -> Result<(), CallError> {
        let mut sender = match self.take_idle() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        sender.ready().await.map_err(|_| CallError::Transport)?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .body(Full::new(body))
            .expect("a valid request");
        request.headers_mut().clone_from(&self.headers);
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| CallError::Transport)?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| CallError::Transport)?;
        // Back to the pool only once the answer is read whole: the connection is free again.
        self.idle.lock().expect("pool lock").push(sender);
        if status.is_success() {
            Ok(())
        } else {
            Err(CallError::HttpStatus(status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/v1/chat/completions").unwrap(),
            ("127.0.0.1:8080".into(), "/v1/chat/completions".into())
        );
        assert!(split_url("https://a:1/").unwrap_err().contains("http://"));
        assert!(split_url("http://a/").unwrap_err().contains("port"));
    }
}
