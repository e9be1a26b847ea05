//! HTTP/1.1 for the L7 tests, written small on purpose so that what crosses the wire is
//! plain to see: a server whose answers a test scripts (and which records what it was sent),
//! and a keep-alive client that reads `Content-Length` and chunked responses.

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{Pod, traffic::Server};

#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Lower-case names; repeated headers keep every value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    pub fn ok(body: impl Into<String>) -> Self {
        HttpResponse {
            status: 200,
            headers: BTreeMap::new(),
            body: body.into(),
        }
    }

    pub fn status(status: u16, body: impl Into<String>) -> Self {
        HttpResponse {
            status,
            ..HttpResponse::ok(body)
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What a scripted server does with each request.
pub type Handler = Arc<dyn Fn(&HttpRequest) -> HttpResponse + Send + Sync>;

/// Every request a server received, in order.
pub type Received = Arc<Mutex<Vec<HttpRequest>>>;

/// Serves `handler` on `listener` (keep-alive), recording each request.
pub fn http_server(listener: TcpListener, handler: Handler) -> Result<(Server, Received)> {
    let received: Received = Arc::default();
    let record = received.clone();
    let server = crate::traffic::serve(listener, move |stream, _| {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        while let Some(request) = read_request(&mut reader)? {
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(request.clone());
            let response = handler(&request);
            write_response(&mut writer, &response)?;
        }
        Ok(())
    })?;
    Ok((server, received))
}

/// A server that answers `200 <name>` to everything: which backend got a request.
pub fn named_server(pod: &Pod, port: u16, name: &str) -> Result<(Server, Received)> {
    let name = name.to_owned();
    http_server(
        pod.listen(port)?,
        Arc::new(move |request: &HttpRequest| HttpResponse::ok(format!("{name} {}", request.path))),
    )
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<HttpRequest>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other(format!("bad request line {line:?}")));
    };
    let mut request = HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        ..HttpRequest::default()
    };
    request.headers = read_headers(reader)?;
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    request.body = vec![0; length];
    reader.read_exact(&mut request.body)?;
    Ok(Some(request))
}

fn read_headers(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

fn write_response(writer: &mut TcpStream, response: &HttpResponse) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} X\r\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", response.body.len()));
    writer.write_all(head.as_bytes())?;
    writer.write_all(response.body.as_bytes())?;
    writer.flush()
}

/// A keep-alive HTTP/1.1 client on one connection made from inside a pod.
pub struct HttpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    authority: String,
}

impl HttpClient {
    pub fn connect(pod: &Pod, addr: SocketAddr, authority: &str) -> Result<Self> {
        let stream = pod
            .connect(addr)
            .with_context(|| format!("connecting to {addr} from {}", pod.name))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(HttpClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            authority: authority.to_owned(),
        })
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        self.request("GET", path, headers, b"")
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.authority,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        self.read_response()
    }

    fn read_response(&mut self) -> Result<HttpResponse> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed before a response");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let headers: BTreeMap<String, String> =
            read_headers(&mut self.reader)?.into_iter().collect();
        let body = if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            self.read_chunked()?
        } else {
            let length: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body)?;
            body
        };
        Ok(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .context("bad chunk size")?;
            if size == 0 {
                let mut end = String::new();
                self.reader.read_line(&mut end)?;
                return Ok(body);
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    }
}
