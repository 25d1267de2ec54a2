//! The HTTP/1.1 the test API server needs: a GET's request head, query
//! parameters, a JSON response, and the chunks of a watch stream.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
};

use serde_json::Value;

/// Bounds the request head a client may send.
const MAX_HEAD: usize = 64 * 1024;

pub fn respond(stream: &mut TcpStream, code: u16, body: &Value) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Error",
    };
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
}

/// One event, one chunk, one line.
pub fn write_chunk(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).unwrap();
    line.push(b'\n');
    write!(stream, "{:x}\r\n", line.len())?;
    stream.write_all(&line)?;
    stream.write_all(b"\r\n")?;
    stream.flush()
}

pub struct Request {
    pub method: String,
    /// Path and query as sent, for `requests`.
    pub target: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
}

/// Reads the request line and headers (a GET has no body).
pub fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut reader = BufReader::new(stream);
    let (mut line, mut size) = (String::new(), 0);
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(method), Some(target)) => (method.to_owned(), target.to_owned()),
        _ => return Err(bad("no request line")),
    };
    let mut authorization = None;
    loop {
        let mut header = String::new();
        let read = reader.read_line(&mut header)?;
        size += read;
        if read == 0 || size > MAX_HEAD {
            return Err(bad("request head cut short or too long"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Ok(Request { path: path.to_owned(), query: query.to_owned(), method, target, authorization })
}

/// Decoded query parameters (kube-rs encodes them with form_urlencoded).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: &str) -> Self {
        let pairs = query.split('&').filter(|p| !p.is_empty());
        Self(
            pairs
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(name), decode(value))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 2;
            }
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
