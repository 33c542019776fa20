"""Run inside a private mount namespace (`unshare --mount`, see test_disk_full.py): a 2 MB tmpfs
holds netbootd's state; the disk is filled and the real CLI and daemon are asked to write.
Prints one JSON object with what each step returned, for the test to judge."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MAC, MAC2, MAC3 = "52:54:00:0d:15:01", "52:54:00:0d:15:02", "52:54:00:0d:15:03"


def main() -> int:
    root = Path(sys.argv[1])
    port, https_port = int(sys.argv[2]), int(sys.argv[3])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], check=True)
    state = root / "state"
    env = {**os.environ, "NETBOOTD_STATE_DIR": str(state)}
    env.pop("NETBOOTD_CONFIG", None)

    def cli(*args: str) -> dict[str, object]:
        p = subprocess.run([sys.executable, "-m", "netbootd", *args], capture_output=True,
                           text=True, env=env, timeout=60)
        return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}

    out: dict[str, object] = {}
    k, i = root / "k", root / "i"
    k.write_bytes(os.urandom(20_000))
    i.write_bytes(os.urandom(20_000))
    out["role"] = cli("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    k.unlink()
    i.unlink()
    out["enroll1"] = cli("enroll", MAC, "web", "--no-identity")
    out["reprovision"] = cli("reprovision", MAC)
    log = open(root / "serve.log", "w")  # noqa: SIM115 (the daemon writes it until the end)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "netbootd", "serve", "--no-dhcp",
         "--no-tftp", "--http-port", str(port), "--https-port", str(https_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(path: str, body: object) -> tuple[int, str]:
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        for _ in range(100):
            try:
                if get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        status, script = get(f"/boot/{MAC.replace(':', '-')}.ipxe")  # counts a flagged boot
        token = re.search(r"netbootd\.boot=(\S+)", script)
        out["script_before"] = status
        # fill the file system to the last block
        with open(root / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                out["filled"] = e.strerror
        out["enroll_full"] = cli("enroll", MAC2, "web", "--no-identity")
        out["enroll_identity_full"] = cli("enroll", MAC3, "web")
        out["script_full"] = get(f"/boot/{MAC.replace(':', '-')}.ipxe")
        out["booted_full"] = post(f"/api/v1/hosts/{MAC.replace(':', '-')}/events",
                                  {"event": "booted", "token": token.group(1) if token else ""})
        out["healthz_full"] = get("/healthz")[0]
        (root / "filler").unlink()
        out["healthz_after"] = get("/healthz")[0]
        out["enroll_after"] = cli("enroll", MAC2, "web", "--no-identity")
        out["hosts_after"] = cli("hosts", "--json")
        out["keys_after"] = cli("keys", "list", "--json")
    finally:
        daemon.terminate()
        daemon.wait(10)
        log.close()
    out["serve_log"] = (root / "serve.log").read_text()
    subprocess.run(["umount", "-l", str(root)], check=False)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
