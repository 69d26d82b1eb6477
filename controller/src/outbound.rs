//! A minimal HTTP/1.1 client for JSON POSTs (webhooks, the OpenAI-compatible triage endpoint):
//! `http://` only, one request per connection, bounded in size and time. TLS endpoints are not
//! supported yet.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL is not `http://host[:port]/path`.
    #[error("unsupported URL {0:?}: only http://HOST[:PORT]/PATH is supported")]
    Url(String),
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

async fn post(url: &str, body: &str, headers: &[(&str, String)]) -> Result<String, PostError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PostError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(PostError::Url(url.to_owned()));
    }
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let io = |source| PostError::Io {
        url: url.to_owned(),
        source,
    };
    let mut stream = tokio::net::TcpStream::connect(&addr).await.map_err(io)?;
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
    let mut buf = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
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
    async fn refuses_https() {
        let e = post_json("https://x/y", "{}", &[], Duration::from_secs(1))
            .await
            .expect_err("https");
        assert!(matches!(e, PostError::Url(_)));
    }
}
