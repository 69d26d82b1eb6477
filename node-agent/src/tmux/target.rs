//! Exact targets. A session is acted on only through its tmux ids (`$N` for the session, `%N`
//! for its pane), resolved from the last probe and checked against the server right before the
//! action: the pane must still be in that session and the session must still carry the name the
//! controller asked for. A name is never given to tmux as a target, because tmux reads a target
//! `=NAME` as a session id when NAME starts with `$`, and as a client name (`client-PID`, the
//! node agent's own control client) when no session has that name; and a name or a directory
//! given to `new-session` is expanded as a format (`#(...)` runs a command), so `#` is escaped.

use super::{SEP, Tmux, TmuxError};

/// A session resolved to its tmux ids on one server, checked against its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The tmux server's pid: ids are unique only within one server's life.
    pub server_pid: u32,
    /// `$N`.
    pub session_id: String,
    /// `%N`.
    pub pane_id: String,
    /// The session's name, as checked.
    pub name: String,
}

/// Why a session could not be resolved to its ids.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The last probe gave no usable ids (never expected from our own probe).
    #[error("session {name:?} has no tmux ids in the last probe ({session_id:?}, {pane_id:?})")]
    NoIds {
        name: String,
        session_id: String,
        pane_id: String,
    },
    /// The session (or its server) is gone.
    #[error("session {name:?} ({session_id}) is gone")]
    Gone { name: String, session_id: String },
    /// The session with that id now has another name.
    #[error(
        "session {session_id} is now named {now:?}, not {name:?} (renamed since it was observed); \
         not touched"
    )]
    Renamed {
        name: String,
        session_id: String,
        now: String,
    },
    /// The observed pane is no longer in the session.
    #[error("pane {pane_id} is no longer in session {name:?} ({session_id}); not touched")]
    PaneGone {
        name: String,
        session_id: String,
        pane_id: String,
    },
    /// tmux failed otherwise.
    #[error(transparent)]
    Tmux(#[from] TmuxError),
}

/// Why a session cannot be created under a name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("session name {name:?} cannot be created as it is: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// True for `$N` (`sigil` `$`) or `%N` (`sigil` `%`).
fn is_id(s: &str, sigil: char) -> bool {
    s.strip_prefix(sigil)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// True when tmux answered that the target or the whole server is not there.
pub(super) fn is_gone(e: &TmuxError) -> bool {
    match e {
        TmuxError::Command { message, .. } => {
            message.contains("can't find")
                || message.contains("no server running")
                || message.contains("error connecting")
                || message.contains("No such file")
                || message.contains("server exited")
        }
        _ => false,
    }
}

/// `s` with `#` doubled, for arguments tmux expands as formats (`new-session -s` and `-c`).
pub fn escape_format(s: &str) -> String {
    s.replace('#', "##")
}

/// Checks that tmux would create a session under exactly `name`: tmux turns `.` and `:` into `_`
/// and writes `\` and non-printable characters in C-style escapes, so such a name would come
/// back as another session. Names tmux reported never hold them; a command naming one is refused.
pub fn creatable_name(name: &str) -> Result<(), NameError> {
    let refuse = |reason| {
        Err(NameError {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.contains(['.', ':']) {
        return refuse("tmux turns '.' and ':' into '_'");
    }
    if name.contains('\\') || name.chars().any(char::is_control) {
        return refuse("tmux escapes '\\' and control characters");
    }
    Ok(())
}

// === impl Tmux ===

impl Tmux {
    /// Resolves a session from its ids in the last probe: the pane `pane_id` must still be in
    /// session `session_id`, and that session must still be named `name`. Only ids are given to
    /// tmux (`list-panes -s -t $N`: a `$` target is looked up by id alone).
    pub async fn resolve(
        &self,
        session_id: &str,
        pane_id: &str,
        name: &str,
    ) -> Result<Target, TargetError> {
        if !is_id(session_id, '$') || !is_id(pane_id, '%') {
            return Err(TargetError::NoIds {
                name: name.to_owned(),
                session_id: session_id.to_owned(),
                pane_id: pane_id.to_owned(),
            });
        }
        let format = format!("#{{pid}}{SEP}#{{session_id}}{SEP}#{{pane_id}}{SEP}#{{session_name}}");
        let gone = || TargetError::Gone {
            name: name.to_owned(),
            session_id: session_id.to_owned(),
        };
        let lines = match self
            .run(&["list-panes", "-s", "-t", session_id, "-F", &format])
            .await
        {
            Ok(lines) => lines,
            Err(e) if is_gone(&e) => return Err(gone()),
            Err(e) => return Err(e.into()),
        };
        let rows: Vec<(u32, &str, &str, &str)> = lines
            .iter()
            .filter_map(|l| {
                let mut f = l.splitn(4, SEP);
                let pid = f.next()?.parse().ok()?;
                Some((pid, f.next()?, f.next()?, f.next()?))
            })
            .filter(|(_, sid, _, _)| *sid == session_id)
            .collect();
        let Some(&(server_pid, _, _, now)) = rows.first() else {
            return Err(gone());
        };
        if now != name {
            return Err(TargetError::Renamed {
                name: name.to_owned(),
                session_id: session_id.to_owned(),
                now: now.to_owned(),
            });
        }
        if !rows.iter().any(|(_, _, pid, _)| *pid == pane_id) {
            return Err(TargetError::PaneGone {
                name: name.to_owned(),
                session_id: session_id.to_owned(),
                pane_id: pane_id.to_owned(),
            });
        }
        Ok(Target {
            server_pid,
            session_id: session_id.to_owned(),
            pane_id: pane_id.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Kills the session of `target` if it is still that session on that server: same id, same
    /// server pid, same name. Returns false when it was already gone (it closes by itself when
    /// its last process ends; a server that exited and started again reuses ids, which the pid
    /// check catches).
    pub async fn kill_target(&self, target: &Target) -> Result<bool, TmuxError> {
        let format = format!("#{{pid}}{SEP}#{{session_name}}");
        let sid = target.session_id.as_str();
        let check = ["display-message", "-p", "-t", sid, &format];
        // A control client attached to the session that just closed is detached by tmux: try
        // once more on a fresh client.
        let seen = match self.run(&check).await {
            Err(TmuxError::Closed) => self.run(&check).await,
            other => other,
        };
        let seen = match seen {
            Ok(lines) => lines.join("\n"),
            Err(e) if is_gone(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let expected = format!("{}{SEP}{}", target.server_pid, target.name);
        if seen != expected {
            tracing::info!(session = %target.name, id = %sid, %seen, "session id now names another session or server; not killed");
            return Ok(false);
        }
        let kill = ["kill-session", "-t", sid];
        let killed = match self.run(&kill).await {
            Err(TmuxError::Closed) => self.run(&kill).await,
            other => other,
        };
        match killed {
            Ok(_) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a detached session named exactly `name` running `argv` in `cwd` (at `size` when
    /// given), with the `@argus-KEY` options from `labels` set in the same invocation; returns
    /// its id. `#` in the name and the directory
    /// is escaped (tmux expands both as formats); a name tmux would store differently is refused.
    pub async fn create_session(
        &self,
        name: &str,
        cwd: &str,
        argv: &[String],
        labels: &std::collections::BTreeMap<String, String>,
        size: Option<(u32, u32)>,
    ) -> Result<String, CreateError> {
        creatable_name(name)?;
        let escaped = escape_format(name);
        let format = format!("#{{session_id}}{SEP}#{{session_name}}");
        let mut args = vec!["new-session", "-d", "-P", "-F", &format, "-s", &escaped];
        let cwd = escape_format(cwd);
        if !cwd.is_empty() {
            args.extend(["-c", &cwd]);
        }
        let (width, height) = size.map(|(w, h)| (w.to_string(), h.to_string())).unzip();
        if let (Some(w), Some(h)) = (&width, &height) {
            args.extend(["-x", w.as_str(), "-y", h.as_str()]);
        }
        args.extend(argv.iter().map(String::as_str));
        // The labels are set in the same invocation, so that no probe ever sees the session
        // without them: a `set-option` with no target right after `new-session` applies to the
        // session just created (no name or id to misread).
        let options: Vec<String> = labels
            .keys()
            .map(|k| argus_shared::labels::option_name(k))
            .collect();
        for (option, value) in options.iter().zip(labels.values()) {
            args.extend([";", "set-option", option.as_str(), value.as_str()]);
        }
        // Creating a session must work even when no control client can attach yet. When the
        // last session just closed, the old server may still be exiting: try again briefly.
        let mut attempt = 0;
        let _creating = Creating::start(&self.creating);
        let lines = loop {
            attempt += 1;
            match self.spawn(&args).await {
                Err(TmuxError::Command { message, .. })
                    if attempt < 5 && message.contains("server exited unexpectedly") =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                other => break other?,
            }
        };
        let out = lines.join("\n");
        let (id, created) = out.split_once(SEP).unwrap_or((out.as_str(), ""));
        if !is_id(id, '$') || created != name {
            return Err(CreateError::Unexpected {
                name: name.to_owned(),
                answer: out.clone(),
            });
        }
        Ok(id.to_owned())
    }
}

/// A session creation in flight, counted while it lives: no control client attaches meanwhile
/// (see `ATTACH_QUIET`).
struct Creating<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Creating<'a> {
    fn start(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The name cannot be created as it is.
    #[error(transparent)]
    Name(#[from] NameError),
    /// tmux failed.
    #[error(transparent)]
    Tmux(#[from] TmuxError),
    /// tmux created something other than what was asked.
    #[error("new-session for {name:?} answered {answer:?}")]
    Unexpected { name: String, answer: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A private tmux server for one test, killed on drop.
    struct Server(tempfile::TempDir);

    impl Server {
        fn new() -> Self {
            Self(tempfile::tempdir().expect("tempdir"))
        }
        fn socket(&self) -> std::path::PathBuf {
            self.0.path().join("tmux.sock")
        }
        fn tmux(&self, args: &[&str]) -> String {
            let out = std::process::Command::new("tmux")
                .arg("-S")
                .arg(self.socket())
                .args(["-f", "/dev/null"])
                .args(args)
                .output()
                .expect("tmux runs");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
        fn names(&self) -> Vec<String> {
            let out = self.tmux(&["list-sessions", "-F", "#{session_name}"]);
            out.lines().map(str::to_owned).collect()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.tmux(&["kill-server"]);
        }
    }

    fn new_session(server: &Server, name: &str) -> (String, String) {
        // Right after kill-server the old server may still be exiting: try again briefly.
        for _ in 0..50 {
            let out = server.tmux(&[
                "new-session",
                "-d",
                "-P",
                "-F",
                "#{session_id} #{pane_id}",
                "-s",
                name,
                "sleep 100",
            ]);
            if let Some((s, p)) = out.split_once(' ') {
                return (s.to_owned(), p.to_owned());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("could not create session {name:?}");
    }

    #[tokio::test]
    async fn a_renamed_session_or_a_moved_pane_is_not_a_target() {
        let server = Server::new();
        let tmux = Tmux::new(server.socket(), Arc::default());
        let (sid, pane) = new_session(&server, "a");
        let (_, other_pane) = new_session(&server, "b");
        let t = tmux.resolve(&sid, &pane, "a").await.expect("resolves");
        assert_eq!(
            (t.session_id.as_str(), t.pane_id.as_str()),
            (sid.as_str(), pane.as_str())
        );
        assert!(matches!(
            tmux.resolve(&sid, &other_pane, "a").await,
            Err(TargetError::PaneGone { .. })
        ));
        server.tmux(&["rename-session", "-t", &sid, "c"]);
        assert!(matches!(
            tmux.resolve(&sid, &pane, "a").await,
            Err(TargetError::Renamed { now, .. }) if now == "c"
        ));
        assert!(matches!(
            tmux.resolve("$99", "%99", "a").await,
            Err(TargetError::Gone { .. })
        ));
        assert!(matches!(
            tmux.resolve("=a", &pane, "a").await,
            Err(TargetError::NoIds { .. })
        ));
    }

    #[tokio::test]
    async fn ids_of_an_earlier_server_kill_nothing() {
        let server = Server::new();
        let tmux = Tmux::new(server.socket(), Arc::default());
        let (sid, pane) = new_session(&server, "old");
        let target = tmux.resolve(&sid, &pane, "old").await.expect("resolves");
        // The server goes away and another one starts on the socket: ids start again at $0.
        server.tmux(&["kill-server"]);
        let (again, _) = new_session(&server, "new");
        assert_eq!(again, sid);
        assert!(!tmux.kill_target(&target).await.expect("answers"));
        assert_eq!(server.names(), ["new"]);
        // The same server, the same session: killed.
        let (sid, pane) = new_session(&server, "doomed");
        let target = tmux.resolve(&sid, &pane, "doomed").await.expect("resolves");
        assert!(tmux.kill_target(&target).await.expect("answers"));
        assert_eq!(server.names(), ["new"]);
    }

    #[tokio::test]
    async fn sessions_are_created_under_their_exact_name() {
        let server = Server::new();
        let tmux = Tmux::new(server.socket(), Arc::default());
        new_session(&server, "first");
        let labels = [("restart".to_owned(), "x #{session_id}".to_owned())].into();
        for name in ["$0", "job#(echo hi)x", "client-1", "%0"] {
            let id = tmux
                .create_session(name, "", &["sleep 100".to_owned()], &labels, None)
                .await
                .expect("created");
            let shown = server.tmux(&["show-options", "-v", "-t", &id, "@argus-restart"]);
            assert_eq!(shown, "x #{session_id}", "{name}");
        }
        assert_eq!(
            server.tmux(&["show-options", "-v", "-t", "$0", "@argus-restart"]),
            "",
            "labels landed on the session with id $0"
        );
        let mut names = server.names();
        names.sort();
        assert_eq!(names, ["$0", "%0", "client-1", "first", "job#(echo hi)x"]);
        assert!(matches!(
            tmux.create_session("a.b", "", &[], &labels, None).await,
            Err(CreateError::Name(_))
        ));
        // The directory is expanded as a format too.
        let dir = server.0.path().join("w#{session_id}#(true)");
        std::fs::create_dir(&dir).expect("mkdir");
        let cwd = dir.display().to_string();
        let id = tmux
            .create_session("in-dir", &cwd, &["sleep 100".to_owned()], &labels, None)
            .await
            .expect("created");
        let shown = server.tmux(&["display-message", "-p", "-t", &id, "#{pane_current_path}"]);
        assert_eq!(shown, cwd);
    }

    #[test]
    fn ids() {
        assert!(is_id("$0", '$') && is_id("%12", '%'));
        for bad in ["$", "0", "$1a", "=$0", "%1", "client-1"] {
            assert!(!is_id(bad, '$'), "{bad}");
        }
    }

    #[test]
    fn names_tmux_would_rewrite_are_refused() {
        for ok in [
            "$0",
            "client-123",
            "a#(touch x)b",
            "=x",
            "%3",
            "@2",
            "with space",
        ] {
            assert_eq!(creatable_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a.b", "a:b", "a\\b", "a\tb"] {
            assert!(creatable_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(escape_format("a#(x)#{y}"), "a##(x)##{y}");
    }
}
