//! The server name (SNI) of a TLS ClientHello, read from the first bytes a client sends,
//! for VirtualService `tls` routes: the waypoint routes the connection without terminating
//! its TLS.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// What the first bytes of a connection say of its server name.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// Not a TLS handshake.
    NotTls,
    /// A handshake record begins; it needs this many bytes in all.
    Incomplete(usize),
    /// The ClientHello, and its server name if it has one (and it could be read).
    Complete(Option<String>),
}

/// The most the first record can hold: its header and 2^14 bytes (RFC 8446, 5.1).
pub const MAX_RECORD: usize = 5 + (1 << 14);

/// Reads `io`'s first bytes until they hold a whole ClientHello or show they are not one,
/// for at most `wait`: what was read (the peer must still get it) and the server name, if
/// the client sent one in time.
pub async fn read_client_hello<IO>(io: &mut IO, wait: Duration) -> (Vec<u8>, Option<String>)
where
    IO: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let wanted = match parse(&seen) {
            ClientHello::Complete(name) => return (seen, name),
            ClientHello::NotTls => return (seen, None),
            ClientHello::Incomplete(wanted) => wanted,
        };
        let start = seen.len();
        seen.resize(wanted, 0);
        match tokio::time::timeout_at(deadline, io.read(&mut seen[start..])).await {
            Ok(Ok(read)) if read > 0 => seen.truncate(start + read),
            // The stream ended, failed, or said no more in time.
            _ => {
                seen.truncate(start);
                return (seen, None);
            }
        }
    }
}

pub fn parse(bytes: &[u8]) -> ClientHello {
    const HANDSHAKE: u8 = 0x16;
    match bytes.first() {
        None => return ClientHello::Incomplete(5),
        Some(&HANDSHAKE) => {}
        Some(_) => return ClientHello::NotTls,
    }
    let Some(header) = bytes.get(..5) else {
        return ClientHello::Incomplete(5);
    };
    let total = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
    if total > MAX_RECORD {
        return ClientHello::NotTls;
    }
    match bytes.get(5..total) {
        None => ClientHello::Incomplete(total),
        Some(record) => match record.first() {
            Some(1) => ClientHello::Complete(server_name(record)),
            _ => ClientHello::NotTls,
        },
    }
}

/// The `server_name` extension of a ClientHello handshake message (one that goes on into a
/// second record is not read: clients do not send those).
fn server_name(handshake: &[u8]) -> Option<String> {
    let mut r = Reader(handshake);
    r.skip(1)?; // type: ClientHello
    let length = r.u24()?;
    let mut hello = Reader(r.take(length)?);
    hello.skip(2 + 32)?; // legacy version, random
    let session_id = hello.u8()?;
    hello.skip(session_id)?;
    let cipher_suites = hello.u16()?;
    hello.skip(cipher_suites)?;
    let compression = hello.u8()?;
    hello.skip(compression)?;
    let extensions = hello.u16()?;
    let mut extensions = Reader(hello.take(extensions)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let data = extensions.take(length)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_length = list.u16()?;
        let mut names = Reader(list.take(list_length)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let length = names.u16()?;
            let name = names.take(length)?;
            if name_type == 0 {
                return dns_name(name);
            }
        }
    }
    None
}

/// A server name as RFC 6066 allows it (a DNS host name: ASCII letters, digits, `-` and `.`
/// in labels of 1 to 63, 253 in all), lower-cased; `None` for anything else. The fuzzer found
/// names with NULs and CR/LF passing as server names, to be matched against routes and
/// written to logs.
fn dns_name(name: &[u8]) -> Option<String> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split(|b| *b == b'.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && !label.starts_with(b"-")
                && !label.ends_with(b"-")
        });
    valid.then(|| String::from_utf8_lossy(name).to_ascii_lowercase())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(drop)
    }

    fn u8(&mut self) -> Option<usize> {
        Some(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a real rustls client for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(mesh_core::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        client.write_tls(&mut out).expect("ClientHello");
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_client_hello() {
        let hello = client_hello("reviews.example.com");
        assert_eq!(
            parse(&hello),
            ClientHello::Complete(Some("reviews.example.com".to_owned()))
        );
        // Cut anywhere, it asks for the whole record.
        for cut in [0, 3, 5, 40, hello.len() - 1] {
            let wants = parse(&hello[..cut]);
            let whole = if cut < 5 { 5 } else { hello.len() };
            assert_eq!(wants, ClientHello::Incomplete(whole), "cut at {cut}");
        }
        // An address is sent without a server name.
        assert_eq!(
            parse(&client_hello("10.0.0.1")),
            ClientHello::Complete(None)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), ClientHello::NotTls);
        assert_eq!(
            parse(&[0x16, 3, 1, 0xff, 0xff]),
            ClientHello::NotTls,
            "too long"
        );
        let mut broken = hello.clone();
        broken[6] = 0xff; // a ClientHello longer than its record
        assert_eq!(parse(&broken), ClientHello::Complete(None));
    }

    #[test]
    fn only_dns_names_are_server_names() {
        // What the fuzzer found: a "server name" of NULs and control characters.
        let crash = b"\r\0*\0(\x04\x03\x05\x03\x06\x03\x08\x07\x08\x08\x08";
        assert_eq!(dns_name(crash), None);
        for bad in [
            &b""[..],
            b"a..b",
            b"-a.com",
            b"a-.com",
            b"a b.com",
            b"a/b",
            b"\xc3\xa9.fr",
        ] {
            assert_eq!(dns_name(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(dns_name(&[b'a'; 64]), None, "a label of 64");
        assert_eq!(
            dns_name(b"Reviews.Example.COM.").as_deref(),
            Some("reviews.example.com")
        );
        assert_eq!(
            dns_name(b"xn--bcher-kva.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }

    #[tokio::test]
    async fn a_client_hello_is_read_across_writes_and_kept_for_the_server() {
        let hello = client_hello("v2.example.com");
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for part in sent.chunks(7) {
                client.write_all(part).await.expect("write");
            }
            client
        });
        let (seen, name) = read_client_hello(&mut server, Duration::from_secs(5)).await;
        assert_eq!(name.as_deref(), Some("v2.example.com"));
        assert_eq!(seen, hello, "every byte read is kept, and no more");

        // Half a ClientHello, then silence: what came is kept, with no name.
        drop(writer.await.expect("writer"));
        let (mut half, mut server) = tokio::io::duplex(4096);
        tokio::io::AsyncWriteExt::write_all(&mut half, &hello[..40])
            .await
            .expect("write");
        let (seen, name) = read_client_hello(&mut server, Duration::from_millis(50)).await;
        assert_eq!((seen.as_slice(), name), (&hello[..40], None));

        // Not TLS: the first bytes are passed on as they came.
        let (mut plain, mut server) = tokio::io::duplex(4096);
        tokio::io::AsyncWriteExt::write_all(&mut plain, b"SSH-2.0-x\r\n")
            .await
            .expect("write");
        let (seen, name) = read_client_hello(&mut server, Duration::from_secs(5)).await;
        assert_eq!((seen.as_slice(), name), (&b"SSH-2"[..], None));
    }
}
