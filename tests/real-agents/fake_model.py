#!/usr/bin/env python3
"""A local fake model server speaking the real wire APIs of the agent CLIs.

Anthropic Messages (SSE), OpenAI Responses and Chat Completions (SSE), Gemini generateContent and
streamGenerateContent. What it answers is scripted by a JSON scenario file that is read again on
every request, so a driver switches scenarios by rewriting the file:

    {"mode": "answer"}            a short text answer
    {"mode": "slow"}              a long answer streamed one word per `interval` seconds
    {"mode": "tool_shell"}        ask to run a shell command (needs permission), then answer
    {"mode": "tool_edit"}         ask to write a file (needs permission), then answer; the
                                  file goes to `cwd` when the scenario names one
    {"mode": "rate_limit"}        429 with the provider's real body and rate-limit headers
    {"mode": "usage_limit"}       the subscription usage limit (Claude: unified headers)
    {"mode": "server_error"}      500
    {"mode": "overloaded"}        529 (Anthropic) / 503 (others)
    {"mode": "bad_request"}       400
    {"mode": "hang"}              accept the request, never answer

`reset_in` (seconds, default 3600) sets the reset time the limit responses name;
`no_retry_after` leaves the retry-after header out of an OpenAI 429 (the body still names the
time), so that clients back off on their own schedule. Every request
is appended to the log file as one JSON line (method, path, status) for drivers to wait on.

Usage: fake_model.py PORT SCENARIO_FILE LOG_FILE
"""

import json
import re
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "The answer is 42. Nothing else to do here."
SLOW_WORDS = ("streaming slowly word by word so that the screen keeps changing " * 40).split()
SHELL_COMMAND = "touch argus-probe.txt"
EDIT_FILE = "argus-edit.txt"
EDIT_CONTENT = "written by the fake model\n"


CWD = re.compile(r"(?i)(?:Working directory|working in the directory|Current working directory)"
                 r"[:\s`'*]*(/[^\s\"'`\\]+)")


MARKER = re.compile(r"argus-marker-[a-z0-9]+")


class Scenario:
    def __init__(self, path):
        self.path = path

    def get(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"mode": "answer"}


# === errors, per provider ===


def reset_epoch(sc):
    return int(time.time()) + int(sc.get("reset_in", 3600))


def anthropic_error(sc, mode):
    """(status, headers, body) for an Anthropic error mode."""
    reset = reset_epoch(sc)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset))
    if mode == "rate_limit":
        return 429, {
            "retry-after": str(int(sc.get("reset_in", 3600))),
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": iso,
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": iso,
        }, {"type": "error", "error": {"type": "rate_limit_error", "message":
            "This request would exceed the rate limit for your organization "
            "(2f8c1c3e-0000-4000-8000-000000000000) of 50 requests per minute. For details, "
            "refer to: https://docs.claude.com/en/api/rate-limits. You can see the response "
            "headers for current usage. Please reduce the prompt length or the maximum tokens "
            "requested, or try again later. You may also contact sales at "
            "https://www.anthropic.com/contact-sales to discuss your options for a rate limit "
            "increase."}}
    if mode == "usage_limit":
        return 429, {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(reset),
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-fallback-percentage": "0.5",
            "anthropic-ratelimit-unified-5h-status": "rejected",
            "anthropic-ratelimit-unified-5h-reset": str(reset),
            "anthropic-ratelimit-unified-5h-utilization": "1.0",
            "anthropic-ratelimit-unified-7d-status": "allowed",
            "anthropic-ratelimit-unified-7d-reset": str(reset + 6 * 86400),
            "anthropic-ratelimit-unified-7d-utilization": "0.4",
            "anthropic-ratelimit-unified-overage-status": "rejected",
            "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
        }, {"type": "error", "error": {"type": "rate_limit_error",
                                       "message": "Rate limited. Please try again later."}}
    if mode == "overloaded":
        return 529, {}, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    if mode == "bad_request":
        return 400, {}, {"type": "error", "error": {"type": "invalid_request_error", "message":
            "messages.1.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
            "toolu_01ABCDEF. Each `tool_result` block must have a corresponding `tool_use` block "
            "in the previous message."}}
    return 500, {}, {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}


def openai_error(sc, mode):
    reset_in = int(sc.get("reset_in", 3600))
    if mode == "rate_limit":
        return 429, {} if sc.get("no_retry_after") else {"retry-after": str(reset_in)} | {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{reset_in // 60}m{reset_in % 60}s",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": f"{reset_in // 60}m{reset_in % 60}s",
        }, {"error": {"message":
            "Rate limit reached for gpt-5 in organization org-argusfake on tokens per min (TPM): "
            "Limit 30000, Used 30000, Requested 1200. Please try again in "
            f"{reset_in // 60}m{reset_in % 60}s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}
    if mode == "usage_limit":
        return 429, {}, {"error": {"type": "usage_limit_reached",
                                   "message": "The usage limit has been reached",
                                   "plan_type": "plus", "resets_at": reset_epoch(sc),
                                   "resets_in_seconds": reset_in}}
    if mode == "overloaded":
        return 503, {}, {"error": {"message": "The server is overloaded or not ready yet.",
                                   "type": "server_error", "param": None, "code": None}}
    if mode == "bad_request":
        return 400, {}, {"error": {"message":
            "Invalid type for 'input[2].content': expected an array of objects, but got a "
            "string instead.", "type": "invalid_request_error", "param": "input[2].content",
            "code": "invalid_type"}}
    return 500, {}, {"error": {"message":
        "The server had an error while processing your request. Sorry about that!",
        "type": "server_error", "param": None, "code": None}}


def gemini_error(sc, mode):
    reset_in = int(sc.get("reset_in", 3600))
    if mode in ("rate_limit", "usage_limit"):
        per = "PerMinute" if mode == "rate_limit" else "PerDay"
        return 429, {}, {"error": {"code": 429, "message":
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, head to: "
            "https://ai.google.dev/gemini-api/docs/rate-limits.\n"
            f"* Quota exceeded for metric: generativelanguage.googleapis.com/"
            f"generate_content_free_tier_requests, limit: 50, model: gemini-2.5-pro\n"
            f"Please retry in {reset_in}s.",
            "status": "RESOURCE_EXHAUSTED", "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": f"GenerateRequests{per}PerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"},
                    "quotaValue": "50"}]},
                {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{reset_in}s"}]}}
    if mode == "overloaded":
        return 503, {}, {"error": {"code": 503, "message":
            "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}
    if mode == "bad_request":
        return 400, {}, {"error": {"code": 400, "message":
            "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}
    return 500, {}, {"error": {"code": 500, "message":
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting", "status": "INTERNAL"}}


ERROR_MODES = ("rate_limit", "usage_limit", "server_error", "overloaded", "bad_request")


# === the handler ===


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-model/1"

    def log_message(self, fmt, *args):  # quiet: requests go to the log file instead
        pass

    def handle(self):
        # A CLI ended mid-stream (the driver is done with it): not an error of the server.
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def record(self, status, note=""):
        line = json.dumps({"t": time.time(), "method": self.command, "path": self.path,
                           "status": status, "mode": self.sc.get("mode"), "note": note,
                           "tools": getattr(self, "tool_names", []),
                           "markers": getattr(self, "markers", [])})
        with self.server.log_lock, open(self.server.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        # The CLIs tell the model their working directory; file edits go there.
        text = raw.decode("utf-8", "replace")
        # Markers typed by the action checks: which earlier inputs a request carries.
        self.markers = sorted(set(MARKER.findall(text)))
        m = CWD.search(text)
        self.cwd = self.sc.get("cwd") or (m.group(1) if m else self.server.workdir)
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def send_json(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("date", formatdate(usegmt=True))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.record(status)

    def start_sse(self, headers=None):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        self.record(200, "sse")

    def event(self, data, name=None):
        out = ""
        if name:
            out += f"event: {name}\n"
        out += "data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n\n"
        self.wfile.write(out.encode())
        self.wfile.flush()

    def hang(self):
        self.record(0, "hang")
        while True:
            time.sleep(3600)

    def words(self, sc):
        """(word, pause) pairs of the text answer for the scenario."""
        if sc.get("mode") == "slow":
            return [(w + " ", float(sc.get("interval", 0.5))) for w in SLOW_WORDS]
        return [(w + " ", 0.0) for w in sc.get("text", ANSWER).split()]

    # --- routing ---

    def do_GET(self):
        self.sc = self.server.scenario.get()
        if "models" in self.path:
            self.send_json(200, {"object": "list", "data": [
                {"id": "gpt-5", "object": "model", "owned_by": "fake"}], "models": []})
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_HEAD(self):
        self.sc = self.server.scenario.get()
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        self.record(200)

    def do_POST(self):
        self.sc = self.server.scenario.get()
        req = self.body()
        path = self.path.split("?")[0]
        if path.endswith("/messages/count_tokens"):
            return self.send_json(200, {"input_tokens": 100})
        if path.endswith(":countTokens"):
            return self.send_json(200, {"totalTokens": 100})
        tools = req.get("tools") or []
        self.tool_names = [f'{t.get("name")}:{t.get("type")}' for t in tools if isinstance(t, dict)]
        if path.endswith("/messages"):
            return self.anthropic(req)
        if path.endswith("/responses"):
            return self.openai_responses(req)
        if path.endswith("/chat/completions"):
            return self.chat(req)
        if ":streamGenerateContent" in path or ":generateContent" in path:
            return self.gemini(req, stream=":streamGenerateContent" in path)
        self.send_json(404, {"error": {"message": f"no route {path}"}})

    def failing(self, error_fn):
        mode = self.sc.get("mode")
        if mode == "hang":
            self.hang()
        if mode in ERROR_MODES:
            status, headers, body = error_fn(self.sc, mode)
            self.send_json(status, body, headers)
            return True
        return False

    def tool_wanted(self, answered):
        return self.sc.get("mode") in ("tool_shell", "tool_edit") and not answered

    # --- Anthropic Messages ---

    def anthropic(self, req):
        if self.failing(anthropic_error):
            return
        msgs = req.get("messages") or []
        last = msgs[-1] if msgs else {}
        content = last.get("content") if isinstance(last.get("content"), list) else []
        answered = any(isinstance(c, dict) and c.get("type") == "tool_result" for c in content)
        # Side requests (titles, topic checks) come without tools: answer them plainly.
        tool = self.tool_wanted(answered) and bool(req.get("tools"))
        model = req.get("model", "claude-sonnet-4-5")
        usage = {"input_tokens": 12, "output_tokens": 1}
        if not req.get("stream"):
            return self.send_json(200, {"id": "msg_fake", "type": "message", "role": "assistant",
                                        "model": model, "content": [{"type": "text", "text": ANSWER}],
                                        "stop_reason": "end_turn", "stop_sequence": None,
                                        "usage": usage})
        self.start_sse()
        self.event({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}}, "message_start")
        if tool:
            if self.sc["mode"] == "tool_shell":
                name, args = "Bash", {"command": SHELL_COMMAND, "description": "Create a probe file"}
            else:
                name, args = "Write", {"file_path": f"{self.cwd}/{EDIT_FILE}", "content": EDIT_CONTENT}
            self.event({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}}}, "content_block_start")
            self.event({"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(args)}}, "content_block_delta")
            stop = "tool_use"
        else:
            self.event({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}, "content_block_start")
            for word, pause in self.words(self.sc):
                time.sleep(pause)
                self.event({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": word}}, "content_block_delta")
            stop = "end_turn"
        self.event({"type": "content_block_stop", "index": 0}, "content_block_stop")
        self.event({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": 20}}, "message_delta")
        self.event({"type": "message_stop"}, "message_stop")

    # --- OpenAI Responses ---

    def openai_responses(self, req):
        if self.failing(openai_error):
            return
        items = req.get("input") or []
        answered = bool(items) and isinstance(items[-1], dict) and \
            items[-1].get("type", "").endswith("_output")
        model = req.get("model", "gpt-5")
        resp = {"id": "resp_fake", "object": "response", "created_at": int(time.time()),
                "model": model, "status": "in_progress", "output": []}
        self.start_sse()
        self.event({"type": "response.created", "response": resp}, "response.created")
        if self.tool_wanted(answered):
            item = self.codex_tool_call(req)
            self.event({"type": "response.output_item.added", "output_index": 0, "item": item},
                       "response.output_item.added")
            self.event({"type": "response.output_item.done", "output_index": 0, "item": item},
                       "response.output_item.done")
        else:
            item = {"type": "message", "id": "msg_fake", "role": "assistant",
                    "status": "in_progress", "content": []}
            self.event({"type": "response.output_item.added", "output_index": 0, "item": item},
                       "response.output_item.added")
            text = ""
            for word, pause in self.words(self.sc):
                time.sleep(pause)
                text += word
                self.event({"type": "response.output_text.delta", "item_id": "msg_fake",
                            "output_index": 0, "content_index": 0, "delta": word},
                           "response.output_text.delta")
            item = dict(item, status="completed",
                        content=[{"type": "output_text", "text": text, "annotations": []}])
            self.event({"type": "response.output_item.done", "output_index": 0, "item": item},
                       "response.output_item.done")
        done = dict(resp, status="completed", usage={
            "input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 32})
        self.event({"type": "response.completed", "response": done}, "response.completed")

    def codex_tool_call(self, req):
        """A tool call in the shape of the tools the request offers: Codex's tool set changes
        between versions (shell, shell_command, exec_command; apply_patch as function or
        custom tool). Commands ask for escalation, which needs the user's approval."""
        tools = {t.get("name"): t.get("type") for t in req.get("tools") or [] if isinstance(t, dict)}
        ask = {"sandbox_permissions": "require_escalated", "justification": "Create a probe file"}
        patch = (f"*** Begin Patch\n*** Add File: {EDIT_FILE}\n+{EDIT_CONTENT.strip()}\n"
                 "*** End Patch\n")
        base = {"id": "fc_fake1", "call_id": "call_fake1", "status": "completed"}
        if self.sc["mode"] == "tool_edit" and "apply_patch" in tools:
            if tools["apply_patch"] == "custom":
                return base | {"type": "custom_tool_call", "name": "apply_patch", "input": patch}
            return base | {"type": "function_call", "name": "apply_patch",
                           "arguments": json.dumps({"input": patch})}
        if self.sc["mode"] == "tool_edit":
            command = f"printf '%s' '{EDIT_CONTENT.strip()}' > {EDIT_FILE}"
        else:
            command = SHELL_COMMAND
        if "shell_command" in tools:
            name, args = "shell_command", {"command": command} | ask
        elif "exec_command" in tools:
            name, args = "exec_command", {"cmd": command} | ask
        else:
            name, args = "shell", {"command": ["bash", "-lc", command]} | ask
        return base | {"type": "function_call", "name": name, "arguments": json.dumps(args)}

    # --- OpenAI Chat Completions ---

    def chat(self, req):
        if self.failing(openai_error):
            return
        model = req.get("model", "gpt-5")
        msgs = req.get("messages") or []
        answered = bool(msgs) and msgs[-1].get("role") == "tool"
        if self.sc.get("mode") == "tool_shell" and not answered:
            text = f"Run this:\n\n```bash\n{SHELL_COMMAND}\n```\n"
        elif self.sc.get("mode") == "tool_edit" and not answered:
            text = (f"{EDIT_FILE}\n```\n<<<<<<< SEARCH\n=======\n{EDIT_CONTENT}"
                    ">>>>>>> REPLACE\n```\n")
        else:
            text = None

        def chunk(delta, finish=None):
            return {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        pieces = [(text, 0.0)] if text else self.words(self.sc)
        if not req.get("stream"):
            return self.send_json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "".join(p for p, _ in pieces)}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}})
        self.start_sse()
        self.event(chunk({"role": "assistant", "content": ""}))
        for piece, pause in pieces:
            time.sleep(pause)
            self.event(chunk({"content": piece}))
        self.event(chunk({}, "stop"))
        self.event("[DONE]")

    # --- Gemini ---

    def gemini(self, req, stream):
        if self.failing(gemini_error):
            return
        contents = req.get("contents") or []
        parts = contents[-1].get("parts", []) if contents else []
        answered = any("functionResponse" in p for p in parts)
        if answered:
            self.tool_names = [json.dumps(parts)[:300]]
        has_tools = bool(req.get("tools"))

        def response(parts, finish="STOP"):
            return {"candidates": [{"content": {"role": "model", "parts": parts},
                                    "finishReason": finish, "index": 0}],
                    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 20,
                                      "totalTokenCount": 32},
                    "modelVersion": "gemini-2.5-pro"}

        if self.tool_wanted(answered) and has_tools:
            if self.sc["mode"] == "tool_shell":
                call = {"name": "run_shell_command", "args": {"command": SHELL_COMMAND,
                                                              "description": "Create a probe file"}}
            else:
                call = {"name": "write_file", "args": {"file_path": f"{self.cwd}/{EDIT_FILE}",
                                                       "content": EDIT_CONTENT}}
            pieces = None
            final = response([{"functionCall": call}])
        else:
            pieces = self.words(self.sc)
            final = None
        if not stream:
            if final is None:
                # Side requests (next-speaker checks, summaries) want JSON or text back.
                final = response([{"text": json.dumps({"reasoning": "done", "next_speaker": "user"})
                                   if req.get("generationConfig", {}).get("responseMimeType") == "application/json"
                                   else ANSWER}])
            return self.send_json(200, final)
        self.start_sse()
        if final is not None:
            self.event(final)
            return
        for i, (word, pause) in enumerate(pieces):
            time.sleep(pause)
            last = i == len(pieces) - 1
            body = response([{"text": word}], "STOP" if last else None)
            if not last:
                del body["candidates"][0]["finishReason"]
            self.event(body)


def main():
    port, scenario, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.scenario = Scenario(scenario)
    server.log_path = log
    server.log_lock = threading.Lock()
    server.workdir = sys.argv[4] if len(sys.argv) > 4 else "/tmp"
    print(f"fake model listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
