//! A real headless Chromium driven over the DevTools protocol (a websocket on loopback): the
//! dashboard tests load pages, read the DOM, click with real mouse events and type. The browser
//! runs in its own process group with a private profile directory, and the group is killed by
//! pid on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::eventually;

/// How long one DevTools call may take.
const CALL_WAIT: Duration = Duration::from_secs(15);

/// The Chromium binary, installed with apt-get (Debian package `chromium`) when missing.
pub fn chromium() -> anyhow::Result<PathBuf> {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!("chromium not found: apt-get install -y chromium");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "chromium"])
            .stdout(Stdio::null())
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .status();
        install().context("running apt-get install -y chromium")?;
    }
    find().context("chromium is still missing after apt-get install -y chromium")
}

/// A headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    /// One call at a time on the DevTools connection.
    conn: tokio::sync::Mutex<Conn>,
    /// The private profile (`--user-data-dir`), which also holds the browser's log.
    profile: tempfile::TempDir,
}

/// The DevTools connection.
struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The flat DevTools session of the page; empty for calls on the browser itself.
    session: String,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium (`--headless=new --no-sandbox`, a private profile, DevTools on a free
    /// loopback port) and opens a blank page of `width` x `height`.
    pub async fn launch(width: u32, height: u32) -> anyhow::Result<Self> {
        Self::launch_with(width, height, &[]).await
    }

    /// [`Self::launch`] with extra Chromium flags (`--ignore-certificate-errors` for a test
    /// CA the browser does not know).
    pub async fn launch_with(width: u32, height: u32, flags: &[&str]) -> anyhow::Result<Self> {
        let binary = chromium()?;
        let profile = tempfile::Builder::new()
            .prefix("argus-chromium-")
            .tempdir()?;
        let log = std::fs::File::create(profile.path().join("chromium.log"))?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&binary)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    &format!("--window-size={width},{height}"),
                    &format!("--user-data-dir={}", profile.path().display()),
                ])
                .args(flags)
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own group: the renderer and GPU processes go with it.
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?
        };
        let active = profile.path().join("DevToolsActivePort");
        let endpoint = eventually(
            "Chromium's DevTools port",
            Duration::from_secs(30),
            || async { Ok(read_active_port(&active)) },
        )
        .await;
        let mut browser_ws = None;
        if let Ok(url) = &endpoint {
            browser_ws = Some(tokio_tungstenite::connect_async(url.as_str()).await);
        }
        let ws = match browser_ws {
            Some(Ok((ws, _))) => ws,
            other => {
                let mut child = child;
                kill_group(&mut child);
                let log = std::fs::read_to_string(profile.path().join("chromium.log"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "Chromium's DevTools did not answer ({:?}; {:?}); its log:\n{log}",
                    endpoint.err(),
                    other.map(|r| r.err())
                );
            }
        };
        let b = Self {
            child,
            conn: tokio::sync::Mutex::new(Conn {
                ws,
                session: String::new(),
                next_id: 1,
            }),
            profile,
        };
        let target = b
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .context("createTarget without targetId")?
            .to_owned();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        b.conn.lock().await.session = attached["sessionId"]
            .as_str()
            .context("attachToTarget without sessionId")?
            .to_owned();
        Ok(b)
    }

    /// The browser's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One DevTools call on the browser (before a page is attached) or the page; returns its
    /// `result`.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let mut conn = self.conn.lock().await;
        let conn = &mut *conn;
        let id = conn.next_id;
        conn.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !conn.session.is_empty() {
            msg["sessionId"] = json!(conn.session);
        }
        conn.ws.send(Message::text(msg.to_string())).await?;
        let reply = tokio::time::timeout(CALL_WAIT, async {
            while let Some(m) = conn.ws.next().await {
                let Message::Text(text) = m? else { continue };
                let v: Value = serde_json::from_str(&text)?;
                // Events (no id) and other answers are not waited for.
                if v["id"].as_u64() == Some(id) {
                    return Ok(v);
                }
            }
            anyhow::bail!("the DevTools connection closed during {method}")
        })
        .await
        .with_context(|| format!("DevTools {method} took over {CALL_WAIT:?}"))??;
        if let Some(e) = reply.get("error") {
            anyhow::bail!("DevTools {method} failed: {e}");
        }
        Ok(reply["result"].clone())
    }

    /// Loads `url` in the page (returns once the navigation is committed).
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let r = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            anyhow::bail!("navigating to {url}: {e}");
        }
        Ok(())
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value as JSON.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            anyhow::bail!("evaluating {expression:?}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Clicks the middle of the element `selector` names with real mouse events (so a modal
    /// dialog or anything else on top of it gets the click instead, as for a person).
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        let quoted = serde_json::to_string(selector)?;
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({quoted}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await?;
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            anyhow::bail!("no element {selector} to click");
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await?;
        }
        Ok(())
    }

    /// Types `text` into the element `selector` names, replacing its value (as keyboard input).
    pub async fn type_into(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        self.click(selector).await?;
        let quoted = serde_json::to_string(selector)?;
        self.eval(&format!("document.querySelector({quoted}).select()"))
            .await?;
        self.call("Input.insertText", json!({ "text": text }))
            .await?;
        Ok(())
    }
}

/// The DevTools websocket URL Chromium wrote into its profile (`PORT\n/devtools/browser/ID`).
fn read_active_port(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let port: u16 = lines.next()?.trim().parse().ok()?;
    let path = lines.next()?.trim();
    Some(format!("ws://127.0.0.1:{port}{path}"))
}

/// SIGKILL to the browser's process group (by its pid, which is the group's id), then reaps it.
fn kill_group(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        // Shown by the test harness when the test fails, like the other processes' logs.
        let log =
            std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "===== last lines of the log of chromium (pid {}) =====\n{}",
            self.child.id(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
}
