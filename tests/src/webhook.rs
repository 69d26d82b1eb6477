//! Real HTTP/1.1 servers on loopback for tests: a webhook receiver that records every POST body
//! and answers 200, and (with [`start_answering`]) a fake OpenAI-compatible chat endpoint, which
//! stands in for an LLM that cannot run here.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bodies received so far.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<serde_json::Value>>>);

impl Received {
    /// A copy of what arrived.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Starts the receiver; returns its URL and the record.
pub async fn start() -> anyhow::Result<(String, Received)> {
    start_answering(|_| String::new()).await
}

/// Starts a server that records every POST body and answers each with `answer(body)` as a JSON
/// response body.
pub async fn start_answering(
    answer: impl Fn(&serde_json::Value) -> String + Send + Sync + 'static,
) -> anyhow::Result<(String, Received)> {
    let answer = Arc::new(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let received = Received::default();
    let rec = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let rec = rec.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers, then Content-Length bytes of body.
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let v: serde_json::Value =
                                serde_json::from_str(&body[..len]).unwrap_or_default();
                            let reply = answer(&v);
                            if let Ok(mut r) = rec.0.lock() {
                                r.push(v);
                            }
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                reply.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(reply.as_bytes()).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((url, received))
}
