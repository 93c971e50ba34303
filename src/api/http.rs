//! HTTP/1.1 as Firecracker's API speaks it over its Unix socket: requests
//! with a JSON body of known length, keep-alive connections, responses
//! with a JSON body or none (204). `httparse` reads the request head.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

/// Firecracker refuses bodies past 50 KiB; so does rvmm.
pub const MAX_BODY: usize = 51200;
const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// What a connection's bytes so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A request, and how many bytes it took.
    Request(Request, usize),
    /// Not a whole request yet.
    Partial,
    /// Not HTTP as the API takes it: answer 400 and close.
    Invalid(String),
}

/// Parses the first request in `bytes`.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => {
            return Parsed::Invalid("the request head is too long".into())
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Invalid(format!("not an HTTP request: {e}")),
    };
    let mut body_len = 0usize;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(len) => body_len = len,
                None => return Parsed::Invalid("its Content-Length is not a number".into()),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid("chunked bodies are not accepted; send Content-Length".into());
        }
    }
    if body_len > MAX_BODY {
        return Parsed::Invalid(format!("the body is longer than {MAX_BODY} bytes"));
    }
    if bytes.len() < head_len + body_len {
        return Parsed::Partial;
    }
    Parsed::Request(
        Request {
            method: request.method.unwrap_or_default().to_string(),
            path: request.path.unwrap_or_default().to_string(),
            body: bytes[head_len..head_len + body_len].to_vec(),
        },
        head_len + body_len,
    )
}

/// A response: a status and, but for 204, a JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
        }
    }

    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            body: Some(body),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            500 => "Internal Server Error",
            _ => "",
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: rvmm API\r\nConnection: keep-alive\r\n",
            self.status,
            self.reason()
        );
        match &self.body {
            Some(body) => out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

/// One client of the API socket, non-blocking.
pub struct Client {
    pub stream: UnixStream,
    buffer: Vec<u8>,
}

/// What reading from a client gave.
pub enum Received {
    /// Requests it completed (maybe none yet).
    Requests(Vec<Request>),
    /// It sent something that is not a request: answer this, then close.
    Invalid(String),
    /// It left.
    Closed,
}

impl Client {
    pub fn new(stream: UnixStream) -> Client {
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads what the client has sent and returns the whole requests in it.
    pub fn read(&mut self) -> Received {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Received::Closed,
                Ok(n) => {
                    self.buffer.extend_from_slice(&chunk[..n]);
                    if self.buffer.len() > MAX_HEAD + MAX_BODY {
                        return Received::Invalid("the request is too long".into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Received::Closed,
            }
        }
        let mut requests = Vec::new();
        loop {
            match parse(&self.buffer) {
                Parsed::Request(request, used) => {
                    self.buffer.drain(..used);
                    requests.push(request);
                }
                Parsed::Partial => return Received::Requests(requests),
                Parsed::Invalid(why) => return Received::Invalid(why),
            }
        }
    }

    /// Sends `response` whole; false when the client is gone.
    pub fn send(&mut self, response: &Response) -> bool {
        let bytes = response.to_bytes();
        let mut sent = 0;
        // Replies are small; a client that takes nothing for a second is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while sent < bytes.len() {
            match self.stream.write(&bytes[sent..]) {
                Ok(0) => return false,
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_whole_partial_and_refused() {
        let put = b"PUT /boot-source HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}GET";
        match parse(put) {
            Parsed::Request(request, used) => {
                assert_eq!(request.method, "PUT");
                assert_eq!(request.path, "/boot-source");
                assert_eq!(request.body, b"{}");
                assert_eq!(&put[used..], b"GET");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}"),
            Parsed::Partial
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Partial);
        assert!(matches!(
            parse(b"\x01\x02 nonsense\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        let huge = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(matches!(parse(huge.as_bytes()), Parsed::Invalid(_)));
        let chunked = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(chunked), Parsed::Invalid(_)));
    }

    #[test]
    fn responses_as_firecracker_writes_them() {
        let text = String::from_utf8(Response::no_content().to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n") && text.ends_with("\r\n\r\n"));
        let text = String::from_utf8(Response::json(400, "{\"a\":1}".into()).to_bytes()).unwrap();
        assert!(
            text.contains("Content-Length: 7\r\n\r\n{\"a\":1}"),
            "{text}"
        );
    }
}
