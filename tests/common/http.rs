//! A tiny HTTP/1.1 client over a plain TcpStream, for tests that need to see exactly what
//! goes over the wire (keep-alive, pipelining, chunked bodies, malformed requests).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One connection; reads responses one at a time from a buffer so pipelined responses work.
pub struct Http {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    /// An HTTP client on a socket the caller connected (e.g. bound to another source
    /// address).
    pub fn from_stream(stream: TcpStream) -> Http {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// POST with a JSON body and an optional Bearer token; returns the response.
    pub fn post(&mut self, path: &str, token: Option<&str>, body: &str) -> Response {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(req.as_bytes());
        self.response()
    }

    pub fn get(&mut self, path: &str, token: Option<&str>) -> Response {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes());
        self.response()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads one response (Content-Length or chunked body; `HEAD`-style empty bodies when
    /// `no_body`).
    pub fn response_with(&mut self, no_body: bool) -> Response {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill(),
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if no_body || status < 200 || status == 204 || status == 304 {
            return resp;
        }
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill(), "closed inside a chunked body");
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(), 16)
                    .expect("chunk size");
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill(), "closed inside a chunk");
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    return resp;
                }
            }
        }
        let len: usize = resp
            .header("content-length")
            .map(|v| v.parse().expect("content-length"))
            .unwrap_or(0);
        while self.buf.len() < len {
            assert!(self.fill(), "closed inside a body");
        }
        resp.body = self.buf.drain(..len).collect();
        resp
    }

    pub fn response(&mut self) -> Response {
        self.response_with(false)
    }

    /// True if the server closed the connection (EOF) with nothing more to read.
    pub fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}
