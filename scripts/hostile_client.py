"""Issue 31's hostile-client repros against a real `python -m infer serve` process on loopback (with --api-key).

    python scripts/hostile_client.py [MODEL] [PORT]     # default models/target (5M, fast to start), 8931

Prints: 401 without the key; a top_k of 2**31 sent while 8 streams run (400, the 8 still end with [DONE]);
a 50 MB chat body sent by curl (413, /health latency meanwhile, the server's RSS change); a 1 MB prompt
(tokenized off the event loop: /health latency meanwhile); how long an idle connection stays open.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import psutil

MODEL = sys.argv[1] if len(sys.argv) > 1 else "models/target"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 8931
NAME = os.path.basename(os.path.normpath(MODEL)) if os.path.exists(MODEL) else MODEL
URL, KEY = f"http://127.0.0.1:{PORT}", "k31"
AUTH = {"Authorization": f"Bearer {KEY}"}


def health_while(thread: threading.Thread) -> list:
    """Start `thread`; /health latencies (s), polled until it ends (at least once)."""
    thread.start()
    lat = []
    while thread.is_alive() or not lat:
        t0 = time.perf_counter()
        httpx.get(URL + "/health")
        lat.append(time.perf_counter() - t0)
    thread.join()
    return lat


def main() -> None:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    server = subprocess.Popen([sys.executable, "-m", "infer", "serve", "--model", MODEL, "--port", str(PORT),
                               "--api-key", KEY, "--no-warmup", "--max-model-len", "512", "--max-num-seqs", "8",
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body_path = os.path.join(tempfile.mkdtemp(), "body50")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(URL + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        proc = psutil.Process(server.pid)
        print("no key:", httpx.get(URL + "/v1/models").status_code, "| with key:",
              httpx.get(URL + "/v1/models", headers=AUTH).status_code, "| /health:", httpx.get(URL + "/health").status_code)

        body = {"model": NAME, "prompt": "def f(x):", "max_tokens": 64, "temperature": 0, "stream": True}
        last_lines = []

        def stream():
            with httpx.stream("POST", URL + "/v1/completions", json=body, headers=AUTH, timeout=300) as r:
                last_lines.append([line for line in r.iter_lines() if line][-1])
        streams = [threading.Thread(target=stream) for _ in range(8)]
        for t in streams:
            t.start()
        time.sleep(0.5)
        bad = httpx.post(URL + "/v1/completions", headers=AUTH,
                         json={"model": NAME, "prompt": "hi", "top_k": 2 ** 31, "max_tokens": 4})
        for t in streams:
            t.join()
        print("top_k=2**31 while 8 streams:", bad.status_code, bad.json()["error"]["param"],
              "| streams ending [DONE]:", last_lines.count("data: [DONE]"), "of 8")

        with open(body_path, "wb") as f:
            f.write(b'{"model":"' + NAME.encode() + b'","messages":[{"role":"user","content":"' + b"x" * (50 << 20)
                    + b'"}]}')
        rss0, out = proc.memory_info().rss, {}

        def huge():
            t0 = time.perf_counter()
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                                "content-type: application/json", "-H", f"Authorization: Bearer {KEY}",
                                "--data-binary", "@" + body_path, URL + "/v1/chat/completions"],
                               capture_output=True, text=True)
            out["code"], out["s"] = r.stdout, time.perf_counter() - t0
        lat = health_while(threading.Thread(target=huge, daemon=True))
        print(f"50 MB body: {out['code']} after {out['s'] * 1e3:.0f} ms (curl, from its start); /health max "
              f"{max(lat) * 1e3:.0f} ms over {len(lat)}; server RSS {(proc.memory_info().rss - rss0) / 2 ** 20:+.1f} MB")

        def long_prompt():
            out["r"] = httpx.post(URL + "/v1/completions", headers=AUTH, timeout=60,
                                  json={"model": NAME, "prompt": "word " * 200_000, "max_tokens": 4})
        lat = health_while(threading.Thread(target=long_prompt, daemon=True))
        print(f"1 MB prompt: {out['r'].status_code} {out['r'].json()['error']['code']}; /health max "
              f"{max(lat) * 1e3:.0f} ms over {len(lat)}")

        with socket.create_connection(("127.0.0.1", PORT), timeout=60) as s:
            t0 = time.perf_counter()
            closed = s.recv(1) == b""
            print(f"an idle connection (no request head): {'closed' if closed else 'answered'} after "
                  f"{time.perf_counter() - t0:.1f} s")
    finally:
        server.terminate()
        server.wait(30)
        if os.path.exists(body_path):
            os.remove(body_path)


if __name__ == "__main__":
    main()
