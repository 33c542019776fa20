"""The VM-boot baseline's web server: `python3 -m http.server` (ThreadingHTTPServer +
SimpleHTTPRequestHandler, as in /work/shared/reference/qemu-pxe/e2e-dnsmasq-baseline.sh) plus an
answer to POST, so the test initramfs' "booted" event (the moment both boots are timed to) gets
its 200 here as it does from netbootd. Standard library only.

    python3 bench/baseline_http.py --bind 192.168.77.1 --port 8080 --directory DIR
"""

from __future__ import annotations

import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, 65536))
        body = b'{"ok": true}\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--directory", required=True)
    a = ap.parse_args()
    handler = functools.partial(Handler, directory=a.directory)
    with ThreadingHTTPServer((a.bind, a.port), handler) as httpd:
        print(f"serving {a.directory} on {a.bind}:{a.port}", flush=True)
        httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
