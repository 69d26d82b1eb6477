"""The states each CLI is driven into: the fake server's scenario, what is typed, what to wait for,
and the condition a right classification reports."""

from dataclasses import dataclass


@dataclass
class State:
    name: str
    expect: str                 # Argus condition, kebab-case
    mode: str = "answer"        # fake server scenario
    prompt: str | None = "Reply with one line please."
    variant: str = "normal"     # agents.Agent.launch variant
    retries: bool = False       # let the CLI retry failed requests by itself
    until: str = "settled"      # settled | text:<regex> | requests:<n> | hang
    reset_in: int = 3600        # seconds until the reset the limit responses name
    only: tuple = ()            # CLIs this state applies to (empty: all)
    no_reset: tuple = ()        # CLIs whose screen names no reset time in this state
    no_retry_after: bool = False  # the 429 comes without a retry-after header
    reset_from_capture: bool = False  # the screen's reset is relative to when it is read
    smoke: bool = False         # part of the CI smoke set


STATES = [
    State("fresh-prompt", "at-prompt", prompt=None, smoke=True),
    State("after-answer", "at-prompt", smoke=True),
    State("streaming", "thinking", mode="slow", until="text:streaming slowly word", smoke=True),
    State("retrying-500", "thinking", mode="server_error", retries=True, until="requests:2"),
    State("retrying-429", "thinking", mode="rate_limit", retries=True, until="requests:2",
          reset_in=30),
    # Aider's own back-off line ("Retrying in 1.0 seconds...") after litellm's retries.
    State("retrying-backoff", "thinking", mode="rate_limit", retries=True,
          until="text:Retrying in", reset_in=600, only=("aider",)),
    State("hang", "thinking", mode="hang", until="hang"),
    State("permission-shell", "waiting-permission", mode="tool_shell", smoke=True,
          prompt="Create the probe file please."),
    State("permission-edit", "waiting-permission", mode="tool_edit",
          prompt="Create the edit file please."),
    # Claude and Codex show the 429 without the provider's time (retry-after is in a header).
    State("rate-limit", "rate-limited", mode="rate_limit", reset_in=600,
          no_reset=("claude", "codex"), only=("claude", "codex", "gemini")),
    # Aider waits out the retry-after header inside litellm on every attempt, for longer than
    # the lane waits (retrying-backoff records that screen). Without the header it gives up
    # after its own minute of back-off and asks "Open URL for more info?" while its spinner
    # still draws over the question: a person must answer.
    State("rate-limit", "waiting-permission", mode="rate_limit", reset_in=600, only=("aider",),
          no_retry_after=True, until=r"text:\[(?:Yes|No)\]:\s*$"),
    # Gemini's daily-quota screen names no time; neither does the usage-limit error Aider prints.
    State("usage-limit", "rate-limited", mode="usage_limit", variant="subscription",
          reset_in=7200, smoke=True, no_reset=("gemini", "aider")),
    # Gemini 0.61 retries a 500 or 503 for more than 7 minutes, showing only its thinking line
    # (retrying-500 records that); it never reaches a final error screen here.
    State("error-500", "error", mode="server_error", only=("claude", "codex", "aider")),
    State("error-overloaded", "error", mode="overloaded", only=("claude", "codex", "aider")),
    State("error-bad-request", "error", mode="bad_request"),
    State("dialog-trust", "dialog", prompt=None, variant="trust"),
    # Codex's first run is its login screen (dialog-login); Gemini's its trust and auth dialogs.
    State("dialog-onboarding", "dialog", prompt=None, variant="onboarding",
          only=("claude", "aider")),
    State("dialog-login", "dialog", prompt=None, variant="login", smoke=True),
]
