"""The real Argus binaries for the lane: `argus-controller --insecure` on a free loopback port
with a temp SQLite store, and `argus-node-agent` watching one private tmux server; `argusctl`
to read sessions and send commands. Ended by pid when done."""

import os
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.path.join(HERE, "../../target/debug")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Argus:
    def __init__(self, root, tmux_socket, node_agent=None, bin_dir=BIN_DIR, node_id="lane"):
        self.bin_dir = bin_dir
        self.node_id = node_id
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.path.join(root, "argus.log"), "w")
        self.procs = [
            subprocess.Popen(
                [os.path.join(bin_dir, "argus-controller"), "--insecure",
                 "--listen", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{free_port()}",
                 "--db", f"sqlite://{root}/argus.db"], stdout=self.log, stderr=self.log),
            subprocess.Popen(
                [node_agent or os.path.join(bin_dir, "argus-node-agent"), "--insecure",
                 "--controller", self.url, "--node-id", node_id, "--tmux-socket", tmux_socket,
                 "--state-dir", os.path.join(root, "node"), "--probe-interval", "1s"],
                stdout=self.log, stderr=self.log),
        ]

    def ctl(self, *args, timeout=20):
        out = subprocess.run([os.path.join(self.bin_dir, "argusctl"), "--controller", self.url,
                              *args], capture_output=True, text=True, timeout=timeout)
        return out.returncode, out.stdout + out.stderr

    def conditions(self):
        """session name -> condition, from `argusctl sessions` (NODE SESSION STATE CONDITION …;
        names hold no spaces)."""
        try:
            _, out = self.ctl("sessions")
        except subprocess.TimeoutExpired:
            return {}
        found = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 4:
                found[cols[1]] = cols[3]
        return found

    def wait_listed(self, names, timeout):
        deadline = time.monotonic() + timeout
        got = {}
        while time.monotonic() < deadline:
            got = self.conditions()
            if set(names) <= set(got):
                break
            time.sleep(0.5)
        return got

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()
