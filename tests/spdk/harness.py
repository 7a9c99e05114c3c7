"""Runs stock SPDK apps with libilog_spdk.so preloaded, and talks to them
with SPDK's own scripts/rpc.py (plus the rpc_ilog plugin)."""

import json
import os
import signal
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPDK = os.environ.get("SPDK_DIR", "/opt/spdk")
LIB = os.environ.get("ILOG_SPDK_LIB", os.path.join(REPO, "target", "release", "libilog_spdk.so"))
RPC_PY = os.path.join(SPDK, "scripts", "rpc.py")
BDEVPERF_PY = os.path.join(SPDK, "examples", "bdev", "bdevperf", "bdevperf.py")
# No hugepages on CI machines; several apps share core 0 in one test.
APP_ARGS = ["--no-huge", "-u", "--disable-cpumask-locks"]
RUNNING = []


def env(preload=True):
    e = dict(os.environ)
    e["LD_LIBRARY_PATH"] = ":".join([f"{SPDK}/build/lib", f"{SPDK}/isa-l/.libs", e.get("LD_LIBRARY_PATH", "")])
    e["PYTHONPATH"] = ":".join([os.path.join(REPO, "scripts"), os.path.join(SPDK, "python"), e.get("PYTHONPATH", "")])
    if preload:
        e["LD_PRELOAD"] = LIB
    else:
        e.pop("LD_PRELOAD", None)
    return e


class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{message} (code {code})")
        self.code = code


def rpc(sock, *args, timeout=60):
    """Calls rpc.py with the ilog plugin; returns the decoded result."""
    cmd = ["python3", RPC_PY, "-s", sock, "-t", str(timeout), "--plugin", "rpc_ilog", *map(str, args)]
    p = subprocess.run(cmd, env=env(preload=False), capture_output=True, text=True, timeout=timeout + 10)
    if p.returncode != 0:
        out = p.stdout + p.stderr
        start = out.rfind("response:")
        if start >= 0:
            body = out[start + len("response:"):]
            body = body[: body.rfind("}") + 1]
            try:
                err = json.loads(body)
                raise RpcError(err["code"], err["message"])
            except (ValueError, KeyError):
                pass
        raise AssertionError(f"{' '.join(cmd[2:])} failed:\n{out}")
    out = p.stdout.strip()
    if not out:
        return None
    try:
        return json.loads(out)
    except ValueError:
        return out


def expect_error(code, sock, *args):
    try:
        rpc(sock, *args)
    except RpcError as e:
        assert e.code == code, f"{args}: expected code {code}, got {e}"
        return str(e)
    raise AssertionError(f"{args}: expected error {code}, it succeeded")


class App:
    """A running SPDK app with the module preloaded (unless preload=False)."""

    def __init__(self, workdir, binary, *args, mem=1024, cores="0x1", preload=True, name="app"):
        self.sock = os.path.join(workdir, f"{name}.sock")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        cmd = [binary, *APP_ARGS, "-s", str(mem), "-m", cores, "-r", self.sock, *map(str, args)]
        self.proc = subprocess.Popen(cmd, env=env(preload), stdout=self.log, stderr=subprocess.STDOUT)
        RUNNING.append(self)
        deadline = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{binary} exited ({self.proc.returncode}) at start:\n{self.tail()}")
            if os.path.exists(self.sock):
                try:
                    rpc(self.sock, "spdk_get_version", timeout=5)
                    break
                except (AssertionError, RpcError, subprocess.TimeoutExpired):
                    pass
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f"{binary} did not answer RPCs:\n{self.tail()}")
            time.sleep(0.2)

    def rpc(self, *args, **kw):
        return rpc(self.sock, *args, **kw)

    def tail(self, n=40):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM (a clean shutdown); asserts it exits 0."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"app did not stop:\n{self.tail()}")
        self.log.close()
        assert rc == 0, f"app exited {rc}:\n{self.tail()}"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_app(workdir, binary, *args, mem=1024, cores="0x1", timeout=120, name="run"):
    """Runs an app to completion (spdk_dd, bdevperf); returns its output."""
    cmd = [binary, *APP_ARGS, "-s", str(mem), "-m", cores, *map(str, args)]
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        out += f"\n(killed after {timeout} s)"
    with open(os.path.join(workdir, f"{name}.log"), "a") as f:
        f.write(out)
    assert p.returncode == 0, f"{os.path.basename(binary)} {' '.join(map(str, args))} exited {p.returncode}:\n{out[-3000:]}"
    return out


def write_config(workdir, name, bdev_config):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        json.dump({"subsystems": [{"subsystem": "bdev", "config": bdev_config}]}, f, indent=1)
    return path


def workdir():
    return tempfile.mkdtemp(prefix="ilog-spdk-")


def kill_all():
    """Kills every app a test left running (after a failure)."""
    while RUNNING:
        RUNNING.pop().kill()


def bdevperf_total(out):
    """(IOPS, Fail/s) of bdevperf's last "Total" line."""
    import re
    rows = re.findall(r"^\s*Total\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert rows, f"no bdevperf result in:\n{out[-2000:]}"
    iops, _mib, fails = rows[-1]
    return float(iops), float(fails)
