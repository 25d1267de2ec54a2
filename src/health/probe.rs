//! One health-check probe of one backend: a TCP connect, an HTTP request
//! or a DNS query, bounded by the check's timeout. A failure is told in a
//! short phrase, as the agent's log and `balctl` show why a backend is out.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::pin,
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::future::{Either, select};
use hickory_proto::{
    ProtoError,
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use http_body_util::Empty;
use hyper::{
    Request,
    body::Bytes,
    header::{CONNECTION, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UdpSocket};

use crate::model::Probe;

/// Probes `address` as `probe` says, within `timeout` (connect and exchange
/// together: a backend that accepts but never answers is as down as one
/// that refuses). Err says why, in a short lowercase phrase for a log line.
pub async fn probe(address: SocketAddr, probe: &Probe, timeout: Duration) -> Result<(), String> {
    let exchange = async {
        match probe {
            Probe::Tcp => tcp(address).await,
            Probe::Http { path, status } => http(address, path, *status).await,
            Probe::Dns { name } => dns(address, name).await,
        }
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| {
        let timeout = humantime::format_duration(timeout);
        // Over UDP nothing is "connected": silence is all a dead server gives.
        Err(match probe {
            Probe::Dns { .. } => format!("no answer within {timeout}"),
            _ => format!("timed out after {timeout}"),
        })
    })
}

/// A connect that completes: something listens and accepts.
async fn tcp(address: SocketAddr) -> Result<(), String> {
    TcpStream::connect(address).await.map(drop).map_err(|e| io_phrase(&e))
}

/// One `GET path` on a connection of its own (`Connection: close`: a
/// probe every few seconds is not worth a pooled connection), answered
/// with `expected`. The body is never read: the status decides.
async fn http(address: SocketAddr, path: &str, expected: u16) -> Result<(), String> {
    let request = Request::get(path)
        .header(HOST, address.to_string())
        .header(USER_AGENT, "balctl-health-check")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot ask for `{path}`: {e}"))?;
    let stream = TcpStream::connect(address).await.map_err(|e| io_phrase(&e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| hyper_phrase(&e))?;
    // The connection is driven here rather than spawned, so that the
    // probe's timeout dropping this future closes the socket too.
    let response = pin!(sender.send_request(request));
    let status = match select(response, pin!(connection)).await {
        Either::Left((response, _)) => response,
        // The connection ended first: the response, if any, is ready.
        Either::Right((Ok(()), response)) => response.await,
        Either::Right((Err(e), _)) => Err(e),
    }
    .map_err(|e| hyper_phrase(&e))?
    .status();
    if status.as_u16() == expected {
        Ok(())
    } else {
        Err(format!("answered {}, expected {expected}", status.as_u16()))
    }
}

/// A type A query for `name` over UDP; any answer to it but a failure
/// code (NXDOMAIN included: the server works, the name is just unknown)
/// means the server is up. Other datagrams (answers to other queries,
/// what does not parse) are ignored until the timeout.
async fn dns(address: SocketAddr, name: &str) -> Result<(), String> {
    let id = query_id();
    let query = query(id, name)?;
    let local: SocketAddr = match address {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| io_phrase(&e))?;
    // Connected: only the server's datagrams arrive, and its port being
    // closed (ICMP port unreachable) reads as "connection refused".
    socket.connect(address).await.map_err(|e| io_phrase(&e))?;
    socket.send(&query).await.map_err(|e| io_phrase(&e))?;
    // Room for any datagram, EDNS-sized answers included.
    let mut buffer = vec![0; 65_535];
    loop {
        let length = socket.recv(&mut buffer).await.map_err(|e| io_phrase(&e))?;
        let Ok(answer) = Message::from_vec(&buffer[..length]) else { continue };
        if answer.id() == id && answer.message_type() == MessageType::Response {
            return match answer.response_code() {
                ResponseCode::NoError | ResponseCode::NXDomain => Ok(()),
                code => Err(format!("answered {}", rcode_name(code))),
            };
        }
    }
}

/// A standard recursive query for `name`, type A, class IN, as bytes.
/// The name is absolute: the server is asked exactly what the check says.
fn query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let cannot = |e: ProtoError| format!("cannot ask for `{name}`: {e}");
    let mut question = Name::from_ascii(name).map_err(cannot)?;
    question.set_fqdn(true);
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(question, RecordType::A));
    message.to_vec().map_err(cannot)
}

/// A query id that differs from one probe to the next, so that a late
/// answer to an earlier probe whose socket had the same local port is not
/// taken for this one's. Not secret: the socket is connected to the
/// server, whose answers are trusted.
fn query_id() -> u16 {
    static COUNTER: AtomicU16 = AtomicU16::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.subsec_nanos());
    (nanos as u16) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A response code by its mnemonic (RFC 1035, 2136), as DNS tools print it.
fn rcode_name(code: ResponseCode) -> String {
    let name = match code {
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        other => return format!("rcode {}", u16::from(other)),
    };
    name.to_owned()
}

/// The OS's failures a probe meets, in a few words (the io error's own
/// text says "(os error 111)" and is capitalized).
fn io_phrase(error: &io::Error) -> String {
    let phrase = match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::TimedOut => "timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        _ => return error.to_string(),
    };
    phrase.to_owned()
}

/// hyper's failures: the OS's beneath them in its words, a connection
/// closed early as such, else hyper's own text.
fn hyper_phrase(error: &hyper::Error) -> String {
    if error.is_incomplete_message() {
        return "closed the connection without an answer".to_owned();
    }
    match std::error::Error::source(error).and_then(|source| source.downcast_ref::<io::Error>()) {
        Some(io) => io_phrase(io),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, UdpSocket as StdUdpSocket},
        thread,
    };

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);

    fn run<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }

    /// A loopback port nothing listens on (bound, then freed).
    fn closed_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    #[test]
    fn tcp_succeeds_against_a_listener_and_is_refused_by_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(run(probe(listener.local_addr().unwrap(), &Probe::Tcp, TIMEOUT)), Ok(()));
        let refused = run(probe(closed_port(), &Probe::Tcp, TIMEOUT));
        assert_eq!(refused, Err("connection refused".to_owned()));
    }

    /// A server that reads one request and answers `status`; its thread
    /// returns the request's head.
    fn http_server(status: &'static str) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut head = Vec::new();
            let mut byte = [0];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(head).unwrap()
        });
        (address, server)
    }

    fn healthz(status: u16) -> Probe {
        Probe::Http { path: "/healthz".into(), status }
    }

    #[test]
    fn http_succeeds_when_the_status_is_the_expected_one() {
        let (address, server) = http_server("200 OK");
        assert_eq!(run(probe(address, &healthz(200), TIMEOUT)), Ok(()));
        let head = server.join().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nhost: {address}\r\n")), "{head}");
        assert!(head.contains("\r\nuser-agent: balctl-health-check\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    }

    #[test]
    fn http_fails_on_another_status_a_closed_port_or_silence() {
        let (address, server) = http_server("503 Service Unavailable");
        assert_eq!(run(probe(address, &healthz(200), TIMEOUT)), Err("answered 503, expected 200".to_owned()));
        server.join().unwrap();
        // Some checks expect what is an error elsewhere.
        let (address, server) = http_server("503 Service Unavailable");
        assert_eq!(run(probe(address, &healthz(503), TIMEOUT)), Ok(()));
        server.join().unwrap();
        let refused = run(probe(closed_port(), &healthz(200), TIMEOUT));
        assert_eq!(refused, Err("connection refused".to_owned()));
        // Accepts (the backlog does) but never answers.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let timed_out = run(probe(silent.local_addr().unwrap(), &healthz(200), TIMEOUT));
        assert_eq!(timed_out, Err("timed out after 200ms".to_owned()));
    }

    /// A DNS server on `ip` that answers one query with `code`, after a
    /// stray answer of another id; its thread returns the query.
    fn dns_server(ip: &str, code: ResponseCode) -> (SocketAddr, thread::JoinHandle<Message>) {
        let socket = StdUdpSocket::bind((ip, 0)).unwrap();
        let address = socket.local_addr().unwrap();
        let server = thread::spawn(move || {
            socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buffer = [0; 512];
            let (length, client) = socket.recv_from(&mut buffer).unwrap();
            let query = Message::from_vec(&buffer[..length]).unwrap();
            let mut answer = Message::new();
            answer
                .set_id(query.id().wrapping_add(1))
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_response_code(ResponseCode::ServFail)
                .add_queries(query.queries().to_vec());
            socket.send_to(&answer.to_vec().unwrap(), client).unwrap();
            answer.set_id(query.id()).set_response_code(code);
            socket.send_to(&answer.to_vec().unwrap(), client).unwrap();
            query
        });
        (address, server)
    }

    fn example() -> Probe {
        Probe::Dns { name: "example.org".into() }
    }

    #[test]
    fn dns_succeeds_when_the_server_answers_noerror_or_nxdomain() {
        for code in [ResponseCode::NoError, ResponseCode::NXDomain] {
            let (address, server) = dns_server("127.0.0.1", code);
            assert_eq!(run(probe(address, &example(), TIMEOUT)), Ok(()), "{code:?}");
            let query = server.join().unwrap();
            assert_eq!(query.message_type(), MessageType::Query);
            assert!(query.recursion_desired());
            assert_eq!(query.queries().len(), 1);
            let question = &query.queries()[0];
            assert_eq!(question.name().to_ascii(), "example.org.");
            assert_eq!(question.query_type(), RecordType::A);
        }
    }

    #[test]
    fn dns_over_ipv6_queries_from_an_ipv6_socket() {
        if StdUdpSocket::bind("[::1]:0").is_err() {
            return; // No IPv6 loopback here.
        }
        let (address, server) = dns_server("::1", ResponseCode::NoError);
        assert_eq!(run(probe(address, &example(), TIMEOUT)), Ok(()));
        server.join().unwrap();
    }

    #[test]
    fn dns_fails_on_a_failure_code_silence_or_a_closed_port() {
        let (address, server) = dns_server("127.0.0.1", ResponseCode::ServFail);
        assert_eq!(run(probe(address, &example(), TIMEOUT)), Err("answered SERVFAIL".to_owned()));
        server.join().unwrap();
        let (address, server) = dns_server("127.0.0.1", ResponseCode::Refused);
        assert_eq!(run(probe(address, &example(), TIMEOUT)), Err("answered REFUSED".to_owned()));
        server.join().unwrap();
        let silent = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let no_answer = run(probe(silent.local_addr().unwrap(), &example(), TIMEOUT));
        assert_eq!(no_answer, Err("no answer within 200ms".to_owned()));
        let closed = StdUdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(run(probe(closed, &example(), TIMEOUT)), Err("connection refused".to_owned()));
    }
}
