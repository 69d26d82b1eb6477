//! Triage, the ladder's judgement seam: the built-in heuristic by default, an external command
//! (the case as JSON on stdin, a verdict as JSON on stdout) or an OpenAI-compatible chat endpoint.
//! Whatever goes wrong (timeout, bad answer), the verdict is "extend", never "kill".

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use argus_decide::detect::TriageCase;
use argus_decide::escalate::Verdict;
use argus_decide::policy::TriageConfig;
use argus_decide::triage::heuristic;

/// The wire form of a verdict for external triagers: `{"verdict": "restart"}`,
/// `{"verdict": "nudge", "text": "..."}`, `{"verdict": "needs_human", "reason": "..."}`.
#[derive(Debug, Deserialize, Serialize)]
struct WireVerdict {
    verdict: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    reason: String,
}

fn parse_verdict(text: &str) -> Option<Verdict> {
    // Models wrap JSON in prose or code fences: take the outermost object.
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let w: WireVerdict = serde_json::from_str(text.get(start..=end)?).ok()?;
    Some(match w.verdict.as_str() {
        "continue" => Verdict::Continue,
        "extend" => Verdict::Extend,
        "nudge" if !w.text.is_empty() => Verdict::Nudge(w.text),
        "restart" => Verdict::Restart,
        "kill" => Verdict::Kill,
        "needs_human" => Verdict::NeedsHuman(if w.reason.is_empty() {
            "triage asked for a person".into()
        } else {
            w.reason
        }),
        _ => return None,
    })
}

/// What triage sees: the case plus the screen's last lines.
#[derive(Debug, Serialize)]
struct Request<'a> {
    node_id: &'a str,
    session_name: &'a str,
    #[serde(flatten)]
    case: &'a TriageCase,
    screen: &'a str,
}

/// Asks the configured triager; any failure or timeout is `Extend`.
pub async fn ask(
    config: &TriageConfig,
    timeout: Duration,
    node_id: &str,
    session_name: &str,
    case: &TriageCase,
    screen: &str,
) -> Verdict {
    let req = Request {
        node_id,
        session_name,
        case,
        screen,
    };
    let answer = match config {
        TriageConfig::Builtin => return heuristic(case),
        TriageConfig::Command { argv } => tokio::time::timeout(timeout, run_command(argv, &req))
            .await
            .ok()
            .flatten(),
        TriageConfig::Openai {
            url,
            model,
            api_key_env,
        } => ask_openai(url, model, api_key_env, &req, timeout).await,
    };
    match answer.as_deref().and_then(parse_verdict) {
        Some(v) => v,
        None => {
            tracing::warn!(node = %node_id, session = %session_name, "triage gave no usable verdict in time: extend");
            Verdict::Extend
        }
    }
}

async fn run_command(argv: &[String], req: &Request<'_>) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(
            |e| tracing::warn!(program = %program, error = %e, "triage command failed to start"),
        )
        .ok()?;
    let input = serde_json::to_vec(req).ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input).await;
    }
    let out = child.wait_with_output().await.ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn ask_openai(
    url: &str,
    model: &str,
    api_key_env: &str,
    req: &Request<'_>,
    timeout: Duration,
) -> Option<String> {
    let case = serde_json::to_string_pretty(req).ok()?;
    let body = serde_json::json!({
        "model": model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You supervise AI coding agents running in terminals. Given a session's state and the last lines of its screen, answer with one JSON object: {\"verdict\": \"continue\"|\"extend\"|\"nudge\"|\"restart\"|\"kill\"|\"needs_human\", \"text\": \"(for nudge) what to type\", \"reason\": \"(for needs_human) why\"}. Prefer extend when unsure; never kill an agent that is making progress."},
            {"role": "user", "content": case}
        ]
    });
    let mut headers = Vec::new();
    if !api_key_env.is_empty()
        && let Ok(key) = std::env::var(api_key_env)
    {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    let endpoint = format!("{}/chat/completions", url.trim_end_matches('/'));
    let text = crate::outbound::post_json(&endpoint, &body.to_string(), &headers, timeout)
        .await
        .map_err(|e| tracing::warn!(error = %e, "triage endpoint failed"))
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case() -> TriageCase {
        TriageCase {
            condition: "none".into(),
            ..TriageCase::default()
        }
    }

    #[test]
    fn verdicts_parse_from_noisy_answers() {
        assert_eq!(
            parse_verdict("```json\n{\"verdict\": \"restart\"}\n```"),
            Some(Verdict::Restart)
        );
        assert_eq!(
            parse_verdict("{\"verdict\":\"nudge\",\"text\":\"go on\"}"),
            Some(Verdict::Nudge("go on".into()))
        );
        assert_eq!(parse_verdict("{\"verdict\":\"explode\"}"), None);
        assert_eq!(parse_verdict("no json"), None);
    }

    #[tokio::test]
    async fn a_slow_command_means_extend() {
        let config = TriageConfig::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "sleep 5; echo '{\"verdict\":\"kill\"}'".into(),
            ],
        };
        let v = ask(&config, Duration::from_millis(200), "n", "s", &case(), "").await;
        assert_eq!(v, Verdict::Extend);
        let config = TriageConfig::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "cat >/dev/null; echo '{\"verdict\":\"restart\"}'".into(),
            ],
        };
        let v = ask(&config, Duration::from_secs(5), "n", "s", &case(), "").await;
        assert_eq!(v, Verdict::Restart);
    }
}
