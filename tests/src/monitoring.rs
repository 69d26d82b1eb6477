//! A real Prometheus server and a real Alertmanager for the tests, each run from its Debian
//! binary on a free loopback port with a generated configuration and a temporary storage
//! directory (never as a system service), stopped by pid when dropped; and a small HTTP/1.0 GET
//! for their APIs and the `/metrics` ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::eventually;
use crate::free_port;
use crate::process::Proc;

/// How long a server may take to become ready.
const READY: Duration = Duration::from_secs(30);

/// The path of a program in `PATH` (or `/usr/bin`), if it is installed.
pub fn program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// The Prometheus binary, or a loud note that the test is skipped (`tests/run.sh` installs the
/// Debian package `prometheus`).
pub fn prometheus_binary() -> Option<PathBuf> {
    let found = program(&["prometheus"]);
    if found.is_none() {
        eprintln!(
            "SKIPPED: no prometheus binary (apt-get install -y prometheus; tests/run.sh does)"
        );
    }
    found
}

/// The Alertmanager binary, or a loud note that the test is skipped (`tests/run.sh` installs the
/// Debian package `prometheus-alertmanager`).
pub fn alertmanager_binary() -> Option<PathBuf> {
    let found = program(&["prometheus-alertmanager", "alertmanager"]);
    if found.is_none() {
        eprintln!(
            "SKIPPED: no alertmanager binary (apt-get install -y prometheus-alertmanager; \
             tests/run.sh does)"
        );
    }
    found
}

/// `GET path` on `addr` with extra headers: (status, body).
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .context("read timed out")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until `GET /-/ready` answers 200.
async fn wait_ready(name: &str, addr: SocketAddr, proc: &mut Proc) -> anyhow::Result<()> {
    let r = eventually(&format!("{name} to be ready"), READY, || async {
        Ok(match get(addr, "/-/ready", &[]).await {
            Ok((200, _)) => Some(()),
            _ => None,
        })
    })
    .await;
    if r.is_err() {
        proc.check_alive()?;
    }
    r
}

// === Prometheus ===

/// One scrape job.
pub struct Target {
    pub job: String,
    pub addr: SocketAddr,
    /// A bearer token sent with each scrape.
    pub bearer: Option<String>,
}

/// A running Prometheus server.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` every `every`, its configuration and storage in `dir`.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        targets: &[Target],
        every: Duration,
    ) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = format!(
            "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\nscrape_configs:\n",
            ms = every.as_millis()
        );
        for t in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n",
                job = t.job,
                addr = t.addr
            ));
            if let Some(token) = &t.bearer {
                let file = dir.join(format!("{}.token", t.job));
                std::fs::write(&file, token)?;
                config.push_str(&format!(
                    "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
                    file.display()
                ));
            }
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let data = dir.join("prometheus-data");
        std::fs::create_dir_all(&data)?;
        let mut proc = Proc::start(
            "prometheus",
            binary,
            &[
                format!("--config.file={}", file.display()),
                format!("--storage.tsdb.path={}", data.display()),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".to_owned(),
            ],
            &[],
            dir.join("prometheus.log"),
        )?;
        wait_ready("prometheus", addr, &mut proc).await?;
        Ok(Self { proc, addr })
    }

    /// The value of an instant query that returns one sample, `None` for no sample.
    pub async fn value(&self, query: &str) -> anyhow::Result<Option<f64>> {
        let (status, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(query)),
            &[],
        )
        .await?;
        anyhow::ensure!(status == 200, "query {query:?} answered {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let result = v["data"]["result"].as_array().context("no result array")?;
        anyhow::ensure!(
            result.len() <= 1,
            "query {query:?} returned {} series: {body}",
            result.len()
        );
        Ok(match result.first() {
            None => None,
            Some(r) => Some(r["value"][1].as_str().context("no value")?.parse::<f64>()?),
        })
    }

    /// Waits until `query` has one sample of value `want` (write `... or vector(0)` for a series
    /// that may not exist yet).
    pub async fn wait_value(
        &self,
        query: &str,
        want: f64,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let last = std::sync::Mutex::new(None);
        let r = eventually(&format!("{query} == {want}"), deadline, || async {
            let v = self.value(query).await?;
            if let Ok(mut l) = last.lock() {
                *l = v;
            }
            Ok((v == Some(want)).then_some(()))
        })
        .await;
        r.with_context(|| format!("last value of {query}: {:?}", last.lock().map(|l| *l)))
    }

    /// The health of every scrape target (`up` / `down` and its last error), by job.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let (_, body) = get(self.addr, "/api/v1/targets", &[]).await?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        (
                            t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                            t["health"].as_str().unwrap_or_default().to_owned(),
                            t["lastError"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

// === Alertmanager ===

/// A running Alertmanager, clustering off.
pub struct Alertmanager {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Alertmanager {
    /// Starts `binary` with a configuration that routes everything to a receiver that sends
    /// nothing, its storage in `dir`.
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let file = dir.join("alertmanager.yml");
        std::fs::write(
            &file,
            "route:\n  receiver: 'none'\n  group_wait: 1s\nreceivers:\n  - name: 'none'\n",
        )?;
        let data = dir.join("alertmanager-data");
        std::fs::create_dir_all(&data)?;
        let mut proc = Proc::start(
            "alertmanager",
            binary,
            &[
                format!("--config.file={}", file.display()),
                format!("--storage.path={}", data.display()),
                format!("--web.listen-address={addr}"),
                "--cluster.listen-address=".to_owned(),
                "--log.level=warn".to_owned(),
            ],
            &[],
            dir.join("alertmanager.log"),
        )?;
        wait_ready("alertmanager", addr, &mut proc).await?;
        Ok(Self { proc, addr })
    }

    /// The base URL the controller posts to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The alerts it holds now (`GET /api/v2/alerts`: firing ones; resolved ones are gone).
    pub async fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (status, body) = get(self.addr, "/api/v2/alerts", &[]).await?;
        anyhow::ensure!(
            status == 200,
            "GET /api/v2/alerts answered {status}: {body}"
        );
        Ok(serde_json::from_str(&body)?)
    }

    /// The alerts whose label `alertname` is `name`.
    pub async fn named(&self, name: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self
            .alerts()
            .await?
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .collect())
    }
}
