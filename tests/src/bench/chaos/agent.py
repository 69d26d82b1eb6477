# The chaos benchmark's fake agent (and bystander): draws a Claude-like screen for the mode the
# benchmark writes into NAME.mode ("SEQ MODE"), and appends to NAME.log, one line each, its
# start, every mode it takes, every byte typed into it and every signal it receives. That log is
# the ground truth of "this agent received a kill, a restart, an interrupt or a nudge".
# Usage: agent.py NAME DIR BY ROLE   (BY: runner | label; ROLE: agent | bystander)
import os, select, signal, sys, time

# Flags (a restart inserts the profile's resume flag, `--continue`) are ignored.
name, d, by, role = [a for a in sys.argv[1:] if not a.startswith("-")][:4]
log = open(os.path.join(d, name + ".log"), "a", buffering=1)
mode_file = os.path.join(d, name + ".mode")


def rec(*words):
    log.write("%.3f %d %s\n" % (time.time(), os.getpid(), " ".join(words)))
    log.flush()


def read_mode():
    try:
        with open(mode_file) as f:
            seq, mode = f.read().split()
            return int(seq), mode
    except Exception:
        return 0, "work"


def on_signal(n, _frame):
    rec("signal", signal.Signals(n).name)
    if n in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        rec("exit", "signal")
        os._exit(128 + n)


for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
          signal.SIGUSR2):
    signal.signal(s, on_signal)

if os.isatty(0):
    import tty
    tty.setraw(0)

RULE = "\u2500" * 100
SCREENS = {
    "idle": ["\u23fa Done. The tests pass.", "", "\u273b Worked for 12s", "", RULE, "> ", RULE,
             "  ? for shortcuts"],
    "permission": [
        "\u256d" + "\u2500" * 60 + "\u256e",
        "\u2502 Bash command",
        "\u2502   cargo test -p argus-controller store::",
        "\u2502 Do you want to proceed?",
        "\u2502 \u276f 1. Yes",
        "\u2502   2. No, and tell Claude what to do differently (esc)",
        "\u2570" + "\u2500" * 60 + "\u256f"],
    "hang": ["\u23fa Update(src/lib.rs)", "  \u23bf  Updated src/lib.rs with 3 additions",
             "", "waiting for the build lock"],
}

seq0, _ = read_mode()
seen = seq0
mode = "work" if role == "agent" else "bystander"
rec("start", by, role)
rec("mode", mode)
last = None
step = 0
started = time.time()
while True:
    seq, want = read_mode()
    if role == "agent" and seq != seen:
        seen = seq
        if want == "die":
            rec("exit", "die")
            os._exit(1)
        mode = want
        started = time.time()
        rec("mode", mode)
    step += 1
    if mode == "work":
        lines = ["\u23fa Bash(cargo build)", "  \u23bf  Compiling step %d of the build" % step]
    elif mode == "think":
        spin = "\u2736\u2733\u273b\u273d"[step % 4]
        lines = ["\u23fa Reading the code.", "",
                 "%s Cooking\u2026 (%ds \u00b7 \u2193 %d tokens \u00b7 esc to interrupt)"
                 % (spin, time.time() - started, step), "", RULE, "> ", RULE]
    elif mode == "ratelimit":
        lines = ["\u23fa Working on it.",
                 "  \u23bf  Claude AI usage limit reached|%d" % (int(time.time()) // 3600 * 3600
                                                             + 6 * 3600),
                 "", RULE, "> ", RULE]
    elif mode == "bystander":
        lines = ["%s: a shell that is nobody's agent" % name, "$ "]
    else:
        lines = SCREENS.get(mode, SCREENS["hang"])
    out = "\x1b[2J\x1b[H" + "\r\n".join(lines)
    if out != last:
        last = out
        try:
            os.write(1, out.encode())
        except OSError:
            pass
    r, _, _ = select.select([0], [], [], 0.25 if mode == "work" else 0.1)
    if r:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            rec("exit", "eof")
            os._exit(0)
        rec("input", data.hex())
