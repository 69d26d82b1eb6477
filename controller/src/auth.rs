//! Who is calling, and what they may do. A node agent is the node named by its certificate's
//! URI SAN `spiffe://argus/node/<id>`; a person or script is `spiffe://argus/user/<name>/<role>`
//! in its certificate, or a bearer token (`authorization: Bearer ...`) listed, hashed with
//! blake3, in the tokens file. Roles: `viewer` (read), `operator` (plus the commands of the
//! session's own making), `admin` (plus a restart with an arbitrary command, and every RPC this
//! layer does not know yet). Health and reflection need no credentials.
//!
//! A replica of the controller is `spiffe://argus/replica/<name>` in its certificate (the
//! controller's own, which `argusctl certs` issues for both ends): it may call the admin API
//! only to forward a caller's call to the replica that owns the node, naming that caller in
//! [`FORWARDED_FOR`], and the call is then checked as that caller's. The header means nothing
//! from anyone else.
//!
//! The check runs as a tower layer in front of every service: a refused call never reaches a
//! handler. The caller is kept in a task-local for the handler's audit ([`audit_by`]) and the
//! checks that depend on a request's content ([`require`], [`check_node`]).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Deserialize;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI SAN prefix of a node agent's certificate.
pub const NODE_URI: &str = "spiffe://argus/node/";
/// The URI SAN prefix of a person's or script's certificate (`.../<name>/<role>`).
pub const USER_URI: &str = "spiffe://argus/user/";
/// The URI SAN prefix of a controller replica's certificate (`.../<name>`).
pub const REPLICA_URI: &str = "spiffe://argus/replica/";
/// The header in which a replica forwarding a call names its caller: `<role>:<name>`.
pub const FORWARDED_FOR: &str = "argus-forwarded-for";

/// What an admin caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List, get, watch, incidents.
    Viewer,
    /// Plus nudge, interrupt, capture, kill, restart with the session's own command, ack.
    Operator,
    /// Plus restart with an arbitrary command, policy reload, and anything else.
    Admin,
}

impl Role {
    /// The role named `s` (`viewer`, `operator`, `admin`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated admin caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The name from the certificate or the tokens file.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// How they proved it: `certificate`, `token`, or `insecure` (plaintext on loopback, where
    /// anyone who reaches the port is admin, as before TLS).
    pub via: &'static str,
}

/// What a verified client certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A node agent.
    Node(String),
    /// A person or script.
    User(Caller),
    /// A controller replica.
    Replica(String),
}

/// A node agent's verified certificate: the node it names and when it expires.
#[derive(Debug, Clone)]
struct NodeCert {
    id: String,
    not_after_ms: i64,
}

tokio::task_local! {
    static CALLER: Option<Caller>;
    static NODE: Option<NodeCert>;
}

/// How long before its certificate expires a node's Attach publishes `cert_expiring`.
pub const EXPIRY_WARNING_MS: i64 = 14 * 24 * 3600 * 1000;

/// When each node's certificate expires, as last presented (Unix ms). Process-wide: one entry
/// per node that ever attached with a certificate.
fn expiries() -> &'static dashmap::DashMap<String, i64> {
    static EXPIRIES: std::sync::OnceLock<dashmap::DashMap<String, i64>> =
        std::sync::OnceLock::new();
    EXPIRIES.get_or_init(dashmap::DashMap::new)
}

/// When node `id`'s certificate expires (Unix ms), if it attached with one.
pub fn cert_not_after_ms(id: &str) -> Option<i64> {
    expiries().get(id).map(|e| *e)
}

/// The admin caller of the call being handled, if any.
pub fn caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok().flatten()
}

/// " by <role> <name> (<via>)" for the audit record of the call being handled; empty outside an
/// authenticated call.
pub fn audit_by() -> String {
    caller().map_or_else(String::new, |c| {
        format!(" by {} {} ({})", c.role, c.name, c.via)
    })
}

/// Runs `f` as a call by `caller`: [`caller`], [`require`] and [`audit_by`] see them inside it
/// (the dashboard calls the admin service in-process this way, after its own checks).
pub async fn as_caller<F: std::future::Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(Some(caller), f).await
}

/// `PERMISSION_DENIED` unless the caller of the call being handled has at least `role` (outside
/// an authenticated call, e.g. in-process, everything is allowed).
pub fn require(role: Role, what: &str) -> Result<(), Status> {
    match CALLER.try_with(Clone::clone) {
        Ok(Some(c)) if c.role < role => Err(Status::permission_denied(format!(
            "{what} needs the {role} role; {} has {}",
            c.name, c.role
        ))),
        _ => Ok(()),
    }
}

/// `PERMISSION_DENIED` when the Attach being handled came with a node certificate for another
/// node than `hello_node` (a node may speak only for itself). Otherwise records the
/// certificate's expiry, and returns a warning when it is less than [`EXPIRY_WARNING_MS`] away.
pub fn check_node(hello_node: &str, now_ms: i64) -> Result<Option<String>, Status> {
    let Ok(Some(cert)) = NODE.try_with(Clone::clone) else {
        return Ok(None);
    };
    if cert.id != hello_node {
        return Err(Status::permission_denied(format!(
            "this certificate is node {:?}'s; it may not attach as node {hello_node:?}",
            cert.id
        )));
    }
    expiries().insert(cert.id.clone(), cert.not_after_ms);
    let left = cert.not_after_ms - now_ms;
    Ok((left < EXPIRY_WARNING_MS).then(|| {
        warned().insert(cert.id.clone(), now_ms);
        expiry_warning(hello_node, left, cert.not_after_ms)
    }))
}

/// How often a node whose certificate is about to expire is warned about again while it stays
/// attached.
pub const EXPIRY_REPEAT_MS: i64 = 24 * 3600 * 1000;

/// When each node was last warned about its certificate's expiry (Unix ms).
fn warned() -> &'static dashmap::DashMap<String, i64> {
    static WARNED: std::sync::OnceLock<dashmap::DashMap<String, i64>> = std::sync::OnceLock::new();
    WARNED.get_or_init(dashmap::DashMap::new)
}

fn expiry_warning(node: &str, left: i64, not_after_ms: i64) -> String {
    format!(
        "node {node:?}'s certificate expires in {} h ({not_after_ms} ms since the epoch): issue a \
         new one",
        left.max(0) / 3_600_000,
    )
}

/// The nodes among `attached` whose certificate expires within [`EXPIRY_WARNING_MS`] and that
/// were not warned within [`EXPIRY_REPEAT_MS`], with their warning: a node that stays attached
/// for weeks is warned as its certificate nears its end, not only when it attaches.
pub fn due_expiry_warnings<'a>(
    attached: impl IntoIterator<Item = &'a str>,
    now_ms: i64,
) -> Vec<(String, String)> {
    let mut due = Vec::new();
    for node in attached {
        let Some(not_after) = cert_not_after_ms(node) else {
            continue;
        };
        let left = not_after - now_ms;
        let recent = warned()
            .get(node)
            .is_some_and(|t| now_ms - *t < EXPIRY_REPEAT_MS);
        if left < EXPIRY_WARNING_MS && !recent {
            warned().insert(node.to_owned(), now_ms);
            due.push((node.to_owned(), expiry_warning(node, left, not_after)));
        }
    }
    due
}

/// When a certificate (DER) expires, in Unix milliseconds.
pub fn not_after_ms(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp() * 1000)
}

/// The identity in a client certificate (DER): its first `spiffe://argus/...` URI SAN.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => identity_of_uri(uri),
        _ => None,
    })
}

fn identity_of_uri(uri: &str) -> Option<Identity> {
    if let Some(id) = uri.strip_prefix(NODE_URI) {
        return (!id.is_empty() && !id.contains('/')).then(|| Identity::Node(id.to_owned()));
    }
    if let Some(name) = uri.strip_prefix(REPLICA_URI) {
        return (!name.is_empty() && !name.contains('/'))
            .then(|| Identity::Replica(name.to_owned()));
    }
    let (name, role) = uri.strip_prefix(USER_URI)?.split_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some(Identity::User(Caller {
        name: name.to_owned(),
        role: Role::parse(role)?,
        via: "certificate",
    }))
}

/// The [`FORWARDED_FOR`] value naming `caller`.
pub fn forwarded_for(caller: &Caller) -> String {
    format!("{}:{}", caller.role, caller.name)
}

/// The caller a replica named in [`FORWARDED_FOR`].
fn forwarded_caller(value: &str) -> Option<Caller> {
    let (role, name) = value.split_once(':')?;
    let role = Role::parse(role)?;
    (!name.is_empty()).then(|| Caller {
        name: name.to_owned(),
        role,
        via: "forwarded by a replica",
    })
}

/// The smallest role an admin RPC needs; an RPC not listed (one added later) needs `admin`.
pub fn role_for(method: &str) -> Role {
    match method {
        "ListNodes" | "ListSessions" | "GetSession" | "WatchEvents" | "ListIncidents"
        | "ListAlarms" | "ListCheckpoints" | "GetCheckpoint" | "ListHandoffs" => Role::Viewer,
        "ScheduleNudge" | "CancelAlarm" | "TakeCheckpoint" => Role::Operator,
        "Nudge" | "Interrupt" | "Kill" | "Restart" | "Capture" | "AckIncident" => Role::Operator,
        _ => Role::Admin,
    }
}

// === Tokens ===

/// Why the tokens file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("reading tokens file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("in tokens file {path}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    /// An entry is invalid.
    #[error("in tokens file {path}: token {index} ({name:?}): {why}")]
    Invalid {
        path: String,
        index: usize,
        name: String,
        why: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    /// The token's blake3 hash, hex.
    blake3: String,
}

/// Bearer tokens by their blake3 hash: the file never holds a token itself.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], (String, Role)>,
}

impl Tokens {
    /// Reads a tokens file: `[[token]]` tables of `name`, `role` and `blake3` (hex).
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: TokensFile = toml::from_str(&text).map_err(|source| TokensError::Parse {
            path: shown.clone(),
            source,
        })?;
        let mut by_hash = HashMap::new();
        for (index, t) in file.token.into_iter().enumerate() {
            let invalid = |why: &str| TokensError::Invalid {
                path: shown.clone(),
                index,
                name: t.name.clone(),
                why: why.to_owned(),
            };
            let hash = blake3::Hash::from_hex(t.blake3.trim())
                .map_err(|_| invalid("blake3 must be 64 hex digits"))?;
            if t.name.is_empty() {
                return Err(invalid("name must not be empty"));
            }
            by_hash.insert(*hash.as_bytes(), (t.name, t.role));
        }
        Ok(Self { by_hash })
    }

    /// The caller holding `token`, if it is listed.
    pub fn check(&self, token: &str) -> Option<Caller> {
        let hash = blake3::hash(token.as_bytes());
        // HashMap lookup by a hash of the secret: no timing leak of the secret itself.
        self.by_hash
            .get(hash.as_bytes())
            .map(|(name, role)| Caller {
                name: name.clone(),
                role: *role,
                via: "token",
            })
    }
}

/// The line of a tokens file for `token`.
pub fn token_entry(name: &str, role: Role, token: &str) -> String {
    format!(
        "[[token]]\nname = {name:?}\nrole = \"{role}\"\nblake3 = \"{}\"\n",
        blake3::hash(token.as_bytes()).to_hex()
    )
}

// === Layer ===

/// How callers are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Plaintext on loopback: every caller is admin (as before TLS).
    Insecure,
    /// mTLS: identities from client certificates, or bearer tokens.
    Tls { tokens: Arc<Tokens> },
}

/// What the layer decided for one request.
enum Decision {
    /// No check applies (health, reflection).
    Open,
    Admin(Caller),
    Node(Option<NodeCert>),
}

impl Auth {
    fn decide<B>(&self, req: &http::Request<B>) -> Result<Decision, Status> {
        let path = req.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let admin = service == "argus.v1.AdminService";
        let agent = service == "argus.v1.NodeAgentService";
        if !admin && !agent {
            return Ok(Decision::Open);
        }
        let tokens = match self {
            Self::Insecure if admin => {
                return Ok(Decision::Admin(Caller {
                    name: "local".to_owned(),
                    role: Role::Admin,
                    via: "insecure",
                }));
            }
            Self::Insecure => return Ok(Decision::Node(None)),
            Self::Tls { tokens } => tokens,
        };
        let leaf = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|certs| certs.first().cloned());
        let identity = leaf.as_ref().and_then(|c| identity_of(c));
        if agent {
            return match identity {
                Some(Identity::Node(id)) => Ok(Decision::Node(Some(NodeCert {
                    id,
                    not_after_ms: leaf.as_ref().and_then(|c| not_after_ms(c)).unwrap_or(0),
                }))),
                Some(Identity::User(c)) => Err(Status::permission_denied(format!(
                    "{}'s certificate is a user's, not a node's (URI SAN {NODE_URI}<id>)",
                    c.name
                ))),
                Some(Identity::Replica(name)) => Err(Status::permission_denied(format!(
                    "{name}'s certificate is a replica's, not a node's (URI SAN {NODE_URI}<id>)"
                ))),
                None => Err(Status::unauthenticated(format!(
                    "a node agent must present a client certificate with the URI SAN \
                     {NODE_URI}<id>"
                ))),
            };
        }
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let caller = match (bearer, identity) {
            (Some(token), _) => tokens
                .check(token.trim())
                .ok_or_else(|| Status::unauthenticated("the bearer token is not known"))?,
            (None, Some(Identity::User(c))) => c,
            (None, Some(Identity::Node(id))) => {
                return Err(Status::permission_denied(format!(
                    "node {id:?}'s certificate may not call the admin API"
                )));
            }
            (None, Some(Identity::Replica(name))) => {
                let named = req
                    .headers()
                    .get(FORWARDED_FOR)
                    .and_then(|v| v.to_str().ok())
                    .and_then(forwarded_caller);
                match named {
                    Some(c) => {
                        tracing::debug!(replica = %name, caller = %c.name, "a forwarded call");
                        c
                    }
                    None => {
                        return Err(Status::permission_denied(format!(
                            "replica {name:?}'s certificate may call the admin API only to \
                             forward a caller's call, named in {FORWARDED_FOR} as ROLE:NAME"
                        )));
                    }
                }
            }
            (None, None) => {
                return Err(Status::unauthenticated(format!(
                    "the admin API needs a client certificate with the URI SAN \
                     {USER_URI}<name>/<role> or an `authorization: Bearer <token>` header"
                )));
            }
        };
        let needed = role_for(method);
        if caller.role < needed {
            return Err(Status::permission_denied(format!(
                "{method} needs the {needed} role; {} has {}",
                caller.name, caller.role
            )));
        }
        Ok(Decision::Admin(caller))
    }
}

/// The tower layer that authenticates and authorizes every call.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    /// A layer applying `auth`.
    pub fn new(auth: Auth) -> Self {
        Self {
            auth: Arc::new(auth),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let decision = self.auth.decide(&req);
        // The clone that was made ready is the one that serves (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match decision {
            Err(status) => {
                tracing::info!(path = %req.uri().path(), code = ?status.code(), message = status.message(), "call refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(Decision::Open) => Box::pin(inner.call(req)),
            Ok(Decision::Admin(c)) => Box::pin(CALLER.scope(Some(c), inner.call(req))),
            Ok(Decision::Node(n)) => Box::pin(NODE.scope(n, inner.call(req))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attached_node_is_warned_as_its_certificate_nears_its_end_once_a_day() {
        let day = 24 * 3600 * 1000;
        let now = 1_000 * day;
        expiries().insert("expiry-soon".into(), now + 20 * day);
        expiries().insert("expiry-far".into(), now + 400 * day);
        let nodes = ["expiry-soon", "expiry-far", "expiry-unknown"];
        // Not yet within the warning window.
        assert!(due_expiry_warnings(nodes, now).is_empty());
        let at = now + 7 * day;
        let due = due_expiry_warnings(nodes, at);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, "expiry-soon");
        assert!(due[0].1.contains("expires in 312 h"), "{due:?}");
        assert!(
            due_expiry_warnings(nodes, at + 3_600_000).is_empty(),
            "twice in a day"
        );
        assert_eq!(
            due_expiry_warnings(nodes, at + day).len(),
            1,
            "again a day later"
        );
    }

    #[test]
    fn uris_name_nodes_and_users() {
        assert_eq!(
            identity_of_uri("spiffe://argus/node/web-1"),
            Some(Identity::Node("web-1".into()))
        );
        assert_eq!(
            identity_of_uri("spiffe://argus/user/alice/operator"),
            Some(Identity::User(Caller {
                name: "alice".into(),
                role: Role::Operator,
                via: "certificate"
            }))
        );
        assert_eq!(identity_of_uri("spiffe://argus/user/alice/root"), None);
        assert_eq!(
            identity_of_uri("spiffe://argus/replica/ctl-a"),
            Some(Identity::Replica("ctl-a".into()))
        );
        assert_eq!(identity_of_uri("spiffe://argus/replica/"), None);
        let alice = Caller {
            name: "alice:ops".into(),
            role: Role::Operator,
            via: "certificate",
        };
        let back = forwarded_caller(&forwarded_for(&alice)).expect("parses");
        assert_eq!(
            (back.name.as_str(), back.role),
            ("alice:ops", Role::Operator)
        );
        assert_eq!(forwarded_caller("root:mallory"), None);
        assert_eq!(forwarded_caller("admin:"), None);
        assert_eq!(identity_of_uri("spiffe://argus/node/"), None);
        assert_eq!(identity_of_uri("spiffe://other/node/x"), None);
    }

    #[test]
    fn roles_order_and_unknown_rpcs_need_admin() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(role_for("ListSessions"), Role::Viewer);
        assert_eq!(role_for("Kill"), Role::Operator);
        assert_eq!(role_for("ListAlarms"), Role::Viewer);
        assert_eq!(role_for("ScheduleNudge"), Role::Operator);
        assert_eq!(role_for("ReloadPolicy"), Role::Admin);
    }

    #[test]
    fn tokens_are_matched_by_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, token_entry("ci", Role::Operator, "s3cret")).expect("write");
        let tokens = Tokens::load(&path).expect("loads");
        assert_eq!(
            tokens.check("s3cret").map(|c| (c.name, c.role)),
            Some(("ci".into(), Role::Operator))
        );
        assert!(tokens.check("guess").is_none());
        std::fs::write(
            &path,
            "[[token]]\nname = \"x\"\nrole = \"admin\"\nblake3 = \"zz\"\n",
        )
        .expect("write");
        let e = Tokens::load(&path).expect_err("bad hash");
        assert!(e.to_string().contains("blake3 must be 64 hex"), "{e}");
    }
}
