"""A private tmux server and the one pane the driver works with: start, type, read, wait."""

import re
import subprocess
import time


class Timeout(Exception):
    pass


class Tmux:
    """A tmux server of our own on socket `sock`; never the user's default server."""

    def __init__(self, sock):
        self.sock = sock

    def run(self, *args, check=True):
        out = subprocess.run(["tmux", "-S", self.sock, "-f", "/dev/null", *args],
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def kill_server(self):
        self.run("kill-server", check=False)


class Pane:
    def __init__(self, tmux, name):
        self.tmux = tmux
        self.name = name
        # (regex, keys): dialogs a CLI may raise mid-state, answered while waiting; the screens
        # seen are kept in `dialogs` (a fixture of their own).
        self.hooks = []
        self.dialogs = []

    def poll(self):
        """The screen, after answering one of the `hooks` dialogs if it shows."""
        screen = self.text()
        for rx, keys in self.hooks:
            if re.search(rx, screen, re.M):
                self.dialogs.append((screen, self.text(escapes=True)))
                self.keys(*keys)
                time.sleep(0.5)
                return self.text()
        return screen

    @classmethod
    def start(cls, tmux, name, argv, env, cwd, width=120, height=40):
        envv = [f"{k}={v}" for k, v in sorted(env.items())]
        tmux.run("new-session", "-d", "-x", str(width), "-y", str(height), "-s", name, "-c", cwd,
                 "env", "-i", *envv, *argv)
        # Keep the last screen of a CLI that exits, for the capture.
        tmux.run("set-option", "-t", name, "remain-on-exit", "on")
        return cls(tmux, name)

    def text(self, escapes=False):
        """The screen as the node agent reads it (`-J`: wrapped lines joined)."""
        args = ["capture-pane", "-p", "-J", "-t", self.name]
        if escapes:
            args.insert(2, "-e")
        return self.tmux.run(*args)

    def pid(self):
        return int(self.tmux.run("display-message", "-p", "-t", self.name, "#{pane_pid}").strip())

    def dead(self):
        return self.tmux.run("display-message", "-p", "-t", self.name, "#{pane_dead}").strip() == "1"

    def type_text(self, text):
        """Types `text` literally (no Enter) and waits until it shows."""
        self.tmux.run("send-keys", "-t", self.name, "-l", text)
        self.wait_for(re.escape(text[:20]), 10)

    def keys(self, *keys):
        self.tmux.run("send-keys", "-t", self.name, *keys)

    def submit(self, text, pause=0.3):
        """Types `text`, then sends Enter separately: several TUIs drop an Enter that arrives in
        the same read as pasted text."""
        self.type_text(text)
        time.sleep(pause)
        self.keys("Enter")

    def wait_for(self, pattern, timeout, absent=False):
        """Polls the screen until a line matches `pattern` (or none does, with `absent`)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            screen = self.poll()
            if bool(rx.search(screen)) != absent:
                return screen
            if time.monotonic() > deadline:
                raise Timeout(f"{self.name}: {'still' if absent else 'never'} saw /{pattern}/ "
                              f"within {timeout}s; screen:\n{screen}")
            time.sleep(0.2)

    def wait_quiet(self, quiet, timeout, unless=None):
        """Polls until the screen stays the same for `quiet` seconds (and shows no `unless`)."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            screen = self.poll()
            if screen != last:
                last, since = screen, time.monotonic()
            elif time.monotonic() - since >= quiet and not (
                    unless and re.search(unless, screen, re.M)):
                return screen
            if time.monotonic() > deadline:
                raise Timeout(f"{self.name}: screen never settled within {timeout}s:\n{screen}")
            time.sleep(0.2)
