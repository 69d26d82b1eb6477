//! The dashboard on the HTTP side port: one page (`dashboard/index.html`, `app.js` and
//! `style.css`, built into the binary), a small JSON API under `/api/` that calls the admin
//! service in-process (its handlers, validation and audit, nothing duplicated), and the fleet's
//! event stream (`WatchEvents`) as server-sent events.
//!
//! Callers get the admin API's roles: each endpoint needs the role of the RPC it calls
//! ([`auth::role_for`]): viewers see, operators act and capture screens. Under `--insecure` a
//! caller on loopback is admin, as on gRPC. Otherwise the side port also speaks TLS
//! (`crate::http::listener`), and a caller brings a bearer token of the tokens file or, over TLS,
//! a client certificate naming them and their role; a token over plaintext is taken from
//! loopback callers only.

use std::convert::Infallible;
use std::sync::Arc;

use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_server::AdminService;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};

use crate::api::AdminApi;
use crate::auth::{self, Auth, Caller, Identity, Role};
use crate::http::listener::PeerInfo;
use crate::supervisor::Supervisor;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// The page's own files only; no frames (the action buttons must not be clickjacked).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// How many history rows the session page shows.
const HISTORY: u32 = 100;

/// Why a dashboard request was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// No credentials, or unknown ones (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Known caller, too small a role, or a caller this port does not serve (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// The admin service refused or failed the call.
    #[error("{}", .0.message())]
    Api(#[from] tonic::Status),
}

impl DashboardError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Api(s) => match s.code() {
                Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
                    StatusCode::CONFLICT
                }
                Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard request failed");
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The dashboard's state: the admin service it calls and how callers are recognised.
struct Dashboard {
    api: AdminApi,
    auth: Auth,
    /// Ends the open event streams, so that the side port's graceful shutdown completes.
    shutdown: CancellationToken,
}

type Shared = Arc<Dashboard>;

/// Where a request came from, for the checks every `/api/` handler makes.
struct Peer<'a> {
    peer: PeerInfo,
    headers: &'a HeaderMap,
}

// === Who calls ===

/// Who is calling: the admin API's rules. Under `--insecure`, loopback callers are admin;
/// otherwise a bearer token (over plaintext from loopback callers only) or, over TLS, a client
/// certificate naming a user and their role.
fn authenticate(auth: &Auth, from: &Peer<'_>) -> Result<Caller, DashboardError> {
    let tokens = match auth {
        Auth::Insecure => {
            if !from.peer.addr.ip().is_loopback() {
                return Err(DashboardError::Forbidden(
                    "a plaintext controller (--insecure) serves the dashboard to loopback \
                     callers only"
                        .to_owned(),
                ));
            }
            // A page of another site whose name was rebound to 127.0.0.1 is same-origin
            // for the browser; its requests still carry that name as Host.
            if !loopback_host(from.headers) {
                return Err(DashboardError::Forbidden(
                    "the Host header must name a loopback address (127.0.0.1, [::1] or \
                     localhost)"
                        .to_owned(),
                ));
            }
            return Ok(Caller {
                name: "local".to_owned(),
                role: Role::Admin,
                via: "insecure",
            });
        }
        Auth::Tls { tokens } => tokens,
    };
    let bearer = from
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        // A token sent in clear text over a network is anybody's on the path.
        if !from.peer.tls && !from.peer.addr.ip().is_loopback() {
            return Err(DashboardError::Forbidden(
                "a bearer token over plaintext is taken from loopback callers only: use \
                 https:// on this port"
                    .to_owned(),
            ));
        }
        return tokens.check(token.trim()).ok_or_else(|| {
            DashboardError::Unauthenticated("the bearer token is not known".to_owned())
        });
    }
    match from.peer.cert.as_deref().and_then(auth::identity_of) {
        Some(Identity::User(c)) => Ok(c),
        Some(Identity::Node(id)) => Err(DashboardError::Forbidden(format!(
            "node {id:?}'s certificate may not use the dashboard"
        ))),
        Some(Identity::Replica(name)) => Err(DashboardError::Forbidden(format!(
            "replica {name:?}'s certificate may not use the dashboard"
        ))),
        None => Err(DashboardError::Unauthenticated(format!(
            "the dashboard needs `authorization: Bearer <token>` with a token of the tokens \
             file, or (over https://) a client certificate with the URI SAN {}<name>/<role>",
            auth::USER_URI
        ))),
    }
}

// === impl Dashboard ===

impl Dashboard {
    /// The caller, if they hold the role every one of `rpcs` needs.
    fn allow(&self, from: &Peer<'_>, rpcs: &[&str]) -> Result<Caller, DashboardError> {
        let caller = authenticate(&self.auth, from)?;
        for rpc in rpcs {
            let needed = auth::role_for(rpc);
            if caller.role < needed {
                return Err(DashboardError::Forbidden(format!(
                    "{rpc} needs the {needed} role; {} has {}",
                    caller.name, caller.role
                )));
            }
        }
        Ok(caller)
    }
}

/// True when the Host header names a loopback address or `localhost` (any port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A state-changing request must come from the page itself: an `Origin`, when the browser sends
/// one, must be this host (the JSON content type already forces a CORS preflight on others).
fn same_origin(headers: &HeaderMap) -> Result<(), DashboardError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ours = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o == host);
    if ours {
        Ok(())
    } else {
        Err(DashboardError::Forbidden(format!(
            "a request from {origin} may not act on this controller"
        )))
    }
}

/// The dashboard's routes, over `sup`'s admin service; open event streams end at `shutdown`.
/// Needs `ConnectInfo<PeerInfo>` (the side port is served with it: `crate::http::listener`).
pub fn router(sup: Arc<Supervisor>, auth: Auth, shutdown: CancellationToken) -> Router {
    let dashboard = Arc::new(Dashboard {
        api: AdminApi::new(sup),
        auth,
        shutdown,
    });
    Router::new()
        .route("/", get(|| page("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/ui/app.js",
            get(|| page("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/ui/style.css",
            get(|| page("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/api/whoami", get(whoami))
        .route("/api/fleet", get(fleet))
        .route("/api/session", get(session))
        .route("/api/command", post(command))
        .route("/api/events", get(events))
        .with_state(dashboard)
}

/// One of the page's files: no credentials needed (it holds no data), never framed.
async fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

type Reply = Result<Json<Value>, DashboardError>;

/// The caller and what the page should offer them.
async fn whoami(
    State(d): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
) -> Reply {
    let c = d.allow(
        &Peer {
            peer,
            headers: &headers,
        },
        &["ListSessions"],
    )?;
    Ok(Json(json!({
        "name": c.name,
        "role": c.role.as_str(),
        "via": c.via,
        "can_act": c.role >= auth::role_for("Nudge"),
        "can_capture": c.role >= auth::role_for("Capture"),
    })))
}

/// Nodes, live sessions, open incidents and their counts.
async fn fleet(
    State(d): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
) -> Reply {
    let from = Peer {
        peer,
        headers: &headers,
    };
    let c = d.allow(&from, &["ListNodes", "ListSessions", "ListIncidents"])?;
    auth::as_caller(c, async {
        let nodes = d
            .api
            .list_nodes(Request::new(pb::ListNodesRequest {}))
            .await?
            .into_inner()
            .nodes;
        let sessions = d
            .api
            .list_sessions(Request::new(pb::ListSessionsRequest::default()))
            .await?
            .into_inner()
            .sessions;
        let incidents = d
            .api
            .list_incidents(Request::new(pb::ListIncidentsRequest {
                include_closed: false,
                limit: 200,
            }))
            .await?
            .into_inner()
            .incidents;
        Ok(Json(fleet_json(&nodes, &sessions, &incidents)))
    })
    .await
}

/// Which session a request is about.
#[derive(Debug, Deserialize)]
struct SessionQuery {
    node: String,
    name: String,
    #[serde(default)]
    socket: String,
}

impl SessionQuery {
    fn sref(&self) -> Option<pb::SessionRef> {
        Some(pb::SessionRef {
            node_id: self.node.clone(),
            session_name: self.name.clone(),
            tmux_socket: self.socket.clone(),
        })
    }
}

/// One session with its history (transitions, commands, checkpoints, handoffs).
async fn session(
    State(d): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Reply {
    let c = d.allow(
        &Peer {
            peer,
            headers: &headers,
        },
        &["GetSession"],
    )?;
    let r = auth::as_caller(
        c,
        d.api.get_session(Request::new(pb::GetSessionRequest {
            session: q.sref(),
            history_limit: HISTORY,
        })),
    )
    .await?
    .into_inner();
    Ok(Json(session_detail_json(&r)))
}

/// A command from the page: `nudge` (with `text`), `interrupt`, `restart` (the session's own
/// command), `kill` (with an optional `grace_ms`) or `capture` (with an optional `lines`).
#[derive(Debug, Deserialize)]
struct CommandBody {
    node: String,
    name: String,
    #[serde(default)]
    socket: String,
    action: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    grace_ms: u32,
    #[serde(default)]
    lines: u32,
}

/// Sends a command through the admin service and answers with the node agent's result.
async fn command(
    State(d): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Json(b): Json<CommandBody>,
) -> Reply {
    same_origin(&headers)?;
    let rpc = match b.action.as_str() {
        "nudge" => "Nudge",
        "interrupt" => "Interrupt",
        "restart" => "Restart",
        "kill" => "Kill",
        "capture" => "Capture",
        other => {
            return Err(DashboardError::BadRequest(format!(
                "unknown action {other:?}: nudge, interrupt, restart, kill or capture"
            )));
        }
    };
    let c = d.allow(
        &Peer {
            peer,
            headers: &headers,
        },
        &[rpc],
    )?;
    let target = pb::SessionRef {
        node_id: b.node,
        session_name: b.name,
        tmux_socket: b.socket,
    };
    let session = Some(target.clone());
    let api = &d.api;
    let r = auth::as_caller(c, async move {
        match rpc {
            "Nudge" => {
                api.nudge(Request::new(pb::NudgeRequest {
                    session,
                    text: b.text,
                }))
                .await
            }
            "Interrupt" => api.interrupt(Request::new(target)).await,
            // The session's own restart command: a command of the caller's choosing is the
            // admin role's, and the page does not offer it.
            "Restart" => {
                api.restart(Request::new(pb::RestartRequest {
                    session,
                    command: String::new(),
                }))
                .await
            }
            "Kill" => {
                api.kill(Request::new(pb::KillRequest {
                    session,
                    grace_ms: b.grace_ms,
                }))
                .await
            }
            _ => {
                api.capture(Request::new(pb::CaptureRequest {
                    session,
                    lines: b.lines,
                }))
                .await
            }
        }
    })
    .await?
    .into_inner();
    Ok(Json(json!({
        "command_id": r.command_id,
        "status": short(r.status().as_str_name(), "COMMAND_STATUS_"),
        "message": r.message,
        "output": r.output,
    })))
}

/// Which events to stream.
#[derive(Debug, Default, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    node: String,
}

/// The fleet's events as server-sent events (`data:` one JSON object each), from the broadcast
/// `WatchEvents` reads; the stream ends at shutdown.
async fn events(
    State(d): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, DashboardError> {
    let c = d.allow(
        &Peer {
            peer,
            headers: &headers,
        },
        &["WatchEvents"],
    )?;
    let stream = auth::as_caller(
        c,
        d.api
            .watch_events(Request::new(pb::WatchEventsRequest { node_id: q.node })),
    )
    .await?
    .into_inner();
    let events = stream
        .map(|item| {
            Ok(match item {
                Ok(e) => Event::default().data(event_json(&e).to_string()),
                Err(s) => Event::default().event("error").data(s.message()),
            })
        })
        .take_until(d.shutdown.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

// === JSON of the admin service's messages ===

/// `SESSION_STATE_WORKING` -> `working`; an unspecified value is empty.
fn short(name: &str, prefix: &str) -> String {
    match name.strip_prefix(prefix).unwrap_or(name) {
        "UNSPECIFIED" => String::new(),
        rest => rest.to_ascii_lowercase(),
    }
}

fn state_name(state: i32) -> String {
    short(
        pb::SessionState::try_from(state)
            .unwrap_or_default()
            .as_str_name(),
        "SESSION_STATE_",
    )
}

fn fleet_json(nodes: &[pb::Node], sessions: &[pb::Session], incidents: &[pb::Incident]) -> Value {
    let mut by_state = serde_json::Map::new();
    let mut by_condition = serde_json::Map::new();
    for s in sessions {
        for (map, key) in [
            (&mut by_state, state_name(s.state)),
            (
                &mut by_condition,
                short(s.condition().as_str_name(), "CONDITION_"),
            ),
        ] {
            if key.is_empty() {
                continue;
            }
            let n = map.get(&key).and_then(Value::as_u64).unwrap_or(0);
            map.insert(key, json!(n + 1));
        }
    }
    json!({
        "at_ms": argus_shared::time::now_ms(),
        "nodes": nodes.iter().map(node_json).collect::<Vec<_>>(),
        "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
        "incidents": incidents.iter().map(incident_json).collect::<Vec<_>>(),
        "counts": {
            "nodes": nodes.len(),
            "nodes_up": nodes.iter().filter(|n| n.connected && n.health == "up").count(),
            "sessions": sessions.len(),
            "incidents": incidents.len(),
            "by_state": by_state,
            "by_condition": by_condition,
        },
    })
}

fn node_json(n: &pb::Node) -> Value {
    json!({
        "node": n.node_id,
        "hostname": n.hostname,
        "agent_version": n.agent_version,
        "connected": n.connected,
        "health": n.health,
        "epoch": n.epoch,
        "last_seen_ms": n.last_seen_ms,
        "sessions": n.session_count,
        "cert_not_after_ms": n.cert_not_after_ms,
    })
}

fn session_json(s: &pb::Session) -> Value {
    json!({
        "node": s.node_id,
        "name": s.session_name,
        "socket": s.tmux_socket,
        "state": state_name(s.state),
        "condition": short(s.condition().as_str_name(), "CONDITION_"),
        "agent": s.agent_name,
        "agent_pid": s.agent_pid,
        "profile": s.profile,
        "reason": s.reason,
        "last_change_ms": s.last_change_ms,
        "last_activity_ms": s.last_activity_ms,
        "attached_clients": s.attached_clients,
        "rate_limit_reset_at": s.rate_limit_reset_at,
        "decided_by": s.decided_by,
        "acted_on_because": s.acted_on_because,
        "labels": s.labels,
    })
}

fn incident_json(i: &pb::Incident) -> Value {
    json!({
        "id": i.id,
        "kind": i.kind,
        "scope": i.scope,
        "summary": i.summary,
        "opened_ms": i.opened_ms,
        "acked_ms": i.acked_ms,
        "acked_by": i.acked_by,
        "sessions": i.sessions,
        "until_ms": i.until_ms,
    })
}

fn session_detail_json(r: &pb::GetSessionResponse) -> Value {
    json!({
        "session": r.session.as_ref().map(session_json),
        "transitions": r.transitions.iter().map(|t| json!({
            "at_ms": t.at_ms,
            "from": state_name(t.from),
            "to": state_name(t.to),
            "reason": t.reason,
        })).collect::<Vec<_>>(),
        "commands": r.commands.iter().map(|c| json!({
            "command_id": c.command_id,
            "action": c.action,
            "origin": c.origin,
            "reason": c.reason,
            "issued_at_ms": c.issued_at_ms,
            "status": short(c.status().as_str_name(), "COMMAND_STATUS_"),
            "result_message": c.result_message,
            "finished_at_ms": c.finished_at_ms,
        })).collect::<Vec<_>>(),
        "checkpoints": r.checkpoints.iter().filter_map(|c| {
            let k = c.checkpoint.as_ref()?;
            Some(json!({
                "id": k.id,
                "taken_at_ms": k.taken_at_ms,
                "trigger": k.trigger,
                "reason": c.reason,
                "saved_ref": k.git.as_ref().map(|g| g.saved_ref.clone()).unwrap_or_default(),
            }))
        }).collect::<Vec<_>>(),
        "handoffs": r.handoffs.iter().map(|h| json!({
            "id": h.id,
            "reason": h.reason,
            "state": h.state,
            "started_ms": h.started_ms,
            "ended_ms": h.ended_ms,
            "message": h.message,
        })).collect::<Vec<_>>(),
    })
}

fn event_json(e: &pb::FleetEvent) -> Value {
    json!({
        "at_ms": e.at_ms,
        "node": e.node_id,
        "session": e.session_name,
        "kind": e.kind,
        "message": e.message,
        "state": state_name(e.state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).expect("header"));
        m
    }

    #[test]
    fn only_loopback_host_names_pass() {
        for ok in [
            "127.0.0.1:7071",
            "localhost:7071",
            "[::1]:7071",
            "127.0.0.2",
        ] {
            assert!(loopback_host(&host(ok)), "{ok}");
        }
        for bad in ["evil.example:7071", "10.0.0.1:7071", "[fe80::1]:80", ""] {
            assert!(!loopback_host(&host(bad)), "{bad}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn actions_from_another_origin_are_refused() {
        let mut h = host("127.0.0.1:7071");
        assert!(
            same_origin(&h).is_ok(),
            "no Origin: not a browser's cross-site request"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7071"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin(&h).is_err());
    }

    fn peer(addr: &str) -> PeerInfo {
        PeerInfo {
            addr: addr.parse().expect("address"),
            tls: false,
            cert: None,
        }
    }

    #[test]
    fn insecure_means_loopback_callers_are_admin() {
        let h = host("127.0.0.1:7071");
        let local = authenticate(
            &Auth::Insecure,
            &Peer {
                peer: peer("127.0.0.1:50000"),
                headers: &h,
            },
        )
        .expect("loopback");
        assert_eq!((local.role, local.via), (Role::Admin, "insecure"));
        let remote = authenticate(
            &Auth::Insecure,
            &Peer {
                peer: peer("10.1.2.3:50000"),
                headers: &h,
            },
        );
        assert!(
            matches!(remote, Err(DashboardError::Forbidden(_))),
            "{remote:?}"
        );
    }

    #[test]
    fn tokens_count_from_loopback_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, auth::token_entry("vera", Role::Viewer, "t0ken")).expect("write");
        let tls = Auth::Tls {
            tokens: Arc::new(auth::Tokens::load(&path).expect("tokens")),
        };
        let mut h = host("127.0.0.1:7071");
        let at = |addr: &str, h: &HeaderMap| {
            authenticate(
                &tls,
                &Peer {
                    peer: peer(addr),
                    headers: h,
                },
            )
        };
        assert!(matches!(
            at("127.0.0.1:1", &h),
            Err(DashboardError::Unauthenticated(_))
        ));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0ken"),
        );
        let vera = at("127.0.0.1:1", &h).expect("known token");
        assert_eq!((vera.name.as_str(), vera.role), ("vera", Role::Viewer));
        assert!(matches!(
            at("192.0.2.7:1", &h),
            Err(DashboardError::Forbidden(_))
        ));
        let over_tls = Peer {
            peer: PeerInfo {
                tls: true,
                ..peer("192.0.2.7:1")
            },
            headers: &h,
        };
        assert!(authenticate(&tls, &over_tls).is_ok(), "a token over TLS");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer guess"),
        );
        assert!(matches!(
            at("127.0.0.1:1", &h),
            Err(DashboardError::Unauthenticated(_))
        ));
    }

    #[test]
    fn enum_names_are_short() {
        assert_eq!(state_name(pb::SessionState::Working as i32), "working");
        assert_eq!(state_name(0), "");
        assert_eq!(
            short(
                pb::CommandStatus::NoSuchSession.as_str_name(),
                "COMMAND_STATUS_"
            ),
            "no_such_session"
        );
    }
}
