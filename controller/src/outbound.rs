//! A minimal HTTP/1.1 client for JSON POSTs (webhooks, the OpenAI-compatible triage endpoint):
//! `http://` or `https://` (rustls, TLS 1.2 and 1.3, the system's roots plus an optional extra
//! CA file), one request per connection, bounded in size and time.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("unsupported URL {0:?}: only http(s)://HOST[:PORT]/PATH is supported")]
    Url(String),
    /// Plaintext to a host that is not this machine: credentials and fleet data would cross
    /// the network in the clear.
    #[error("refusing plaintext POST to {0:?}: http:// is for loopback hosts only; use https://")]
    RemotePlaintext(String),
    /// The TLS client could not be set up (no usable roots).
    #[error("TLS for {url}: {why}")]
    Tls { url: String, why: String },
    /// Network failure.
    #[error("POST {url} failed: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("POST {0} timed out")]
    Timeout(String),
    /// The server answered with an error status.
    #[error("POST {url} answered {status}")]
    Status { url: String, status: u16 },
}

/// Largest response body read.
const MAX_RESPONSE: usize = 1 << 20;

/// POSTs `body` (JSON) to `url` with optional extra headers; returns the response body.
pub async fn post_json(
    url: &str,
    body: &str,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<String, PostError> {
    tokio::time::timeout(timeout, post(url, body, headers))
        .await
        .map_err(|_| PostError::Timeout(url.to_owned()))?
}

/// The extra CA trusted by `https://` POSTs besides the system's roots (set once at start).
static EXTRA_CA: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();

/// Trusts the CA certificates in `path` (PEM) for `https://` POSTs, besides the system's roots.
/// Call once, at start.
pub fn trust_extra_ca(path: &Path) -> Result<(), crate::tls::TlsError> {
    let certs = crate::tls::read_certs(path)?;
    let _ = EXTRA_CA.set(certs);
    Ok(())
}

/// The TLS client of every `https://` POST, built on first use.
fn tls_client() -> Result<Arc<rustls::ClientConfig>, String> {
    static CLIENT: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            for ca in EXTRA_CA.get().into_iter().flatten() {
                roots.add(ca.clone()).map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err("no trusted roots: no system certificates and no extra CA".to_owned());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// True unless `url` is `http://` to a host other than this machine (`localhost`, 127.0.0.0/8,
/// `::1`): plaintext stays on loopback, anything else needs `https://`.
pub fn plaintext_allowed(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return true;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn post(url: &str, body: &str, headers: &[(&str, String)]) -> Result<String, PostError> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(PostError::Url(url.to_owned())),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(PostError::Url(url.to_owned()));
    }
    if !tls && !plaintext_allowed(url) {
        return Err(PostError::RemotePlaintext(url.to_owned()));
    }
    let (host, addr) = match authority.rsplit_once(':') {
        Some((host, _)) => (host, authority.to_owned()),
        None => (
            authority,
            format!("{authority}:{}", if tls { 443 } else { 80 }),
        ),
    };
    let io = |source| PostError::Io {
        url: url.to_owned(),
        source,
    };
    let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(io)?;
    if !tls {
        return exchange(tcp, url, authority, path, body, headers).await;
    }
    let tls_err = |why: String| PostError::Tls {
        url: url.to_owned(),
        why,
    };
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| tls_err(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls_client().map_err(tls_err)?)
        .connect(name, tcp)
        .await
        .map_err(io)?;
    exchange(stream, url, authority, path, body, headers).await
}

/// Writes the request on `stream` and reads the whole answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    url: &str,
    authority: &str,
    path: &str,
    body: &str,
    headers: &[(&str, String)],
) -> Result<String, PostError> {
    let io = |source| PostError::Io {
        url: url.to_owned(),
        source,
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut buf = Vec::new();
    let read = (&mut stream)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut buf)
        .await;
    // A TLS server that closes without close_notify still sent its whole answer.
    if let Err(e) = read
        && (e.kind() != std::io::ErrorKind::UnexpectedEof || buf.is_empty())
    {
        return Err(io(e));
    }
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        return Err(PostError::Status {
            url: url.to_owned(),
            status,
        });
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let chunked = text.lines().take_while(|l| !l.is_empty()).any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[tokio::test]
    async fn refuses_other_schemes() {
        let e = post_json("ftp://x/y", "{}", &[], Duration::from_secs(1))
            .await
            .expect_err("ftp");
        assert!(matches!(e, PostError::Url(_)));
    }

    #[test]
    fn plaintext_stays_on_loopback() {
        for ok in [
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://[::1]:8080/v1",
            "http://127.1.2.3",
            "https://hooks.example.com/x",
        ] {
            assert!(plaintext_allowed(ok), "{ok}");
        }
        for bad in [
            "http://hooks.example.com/x",
            "http://10.0.0.5:8000/v1",
            "http://127.0.0.1.example.com/x",
            "http://[2001:db8::1]:80/",
        ] {
            assert!(!plaintext_allowed(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_remote_plaintext_post_is_refused_before_connecting() {
        let e = post_json(
            "http://192.0.2.1:80/hook",
            "{}",
            &[],
            Duration::from_secs(5),
        )
        .await
        .expect_err("refused");
        assert!(matches!(e, PostError::RemotePlaintext(_)), "{e}");
    }

    /// A POST over https to a local TLS server whose certificate a test CA signed.
    #[tokio::test]
    async fn posts_over_https_to_a_server_of_the_extra_ca() {
        use crate::pki::{Ca, Leaf, Validity};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("outbound test CA", Validity::days(1)).expect("ca");
        let server = ca
            .issue(
                &Leaf::Controller(vec!["localhost".into()]),
                Validity::days(1),
            )
            .expect("server cert");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pair.cert_pem).expect("write");
        trust_extra_ca(&ca_file).expect("extra CA");
        let certs = crate::tls::read_certs_pem(&server.cert_pem).expect("pem");
        let key = <rustls::pki_types::PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(server.key_pem.as_bytes())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains("{\"ok\":1}") {
                let n = tls.read(&mut buf).await.expect("read");
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&buf[..n]);
            }
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthanks")
                .await
                .expect("answer");
            tls.shutdown().await.expect("close");
            String::from_utf8_lossy(&req).into_owned()
        });
        let answer = post_json(
            &format!("https://localhost:{port}/hook"),
            "{\"ok\":1}",
            &[],
            Duration::from_secs(10),
        )
        .await
        .expect("posted over https");
        assert!(answer.starts_with("thank"), "{answer}");
        let req = served.await.expect("server");
        assert!(
            req.starts_with("POST /hook HTTP/1.1\r\nHost: localhost:"),
            "{req}"
        );
        // A server the extra CA did not sign is refused.
        let e = post_json("https://127.0.0.1:1/x", "{}", &[], Duration::from_secs(5))
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(e, PostError::Io { .. } | PostError::Tls { .. }),
            "{e}"
        );
    }
}
