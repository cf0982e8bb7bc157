"""A request too large for the server's work budget, then a large job that fits, with /health
and another client's one sentence timed while it runs (issue 32).

    python scripts/bench/serve_bigjob.py URL [SENTENCES_REFUSED [SENTENCES_ALLOWED]]

URL is a running `translator serve` with an en->de model (for the allowed job, give the server
`--max-chars 30000 --max-lines 2000`). Prints two JSON lines.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx


def main() -> None:
    url = sys.argv[1]
    refused = int(sys.argv[2]) if len(sys.argv) > 2 else 1250
    allowed = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    start = time.perf_counter()
    r = httpx.post(f"{url}/translate", json={"q": "Ab. " * refused, "source": "en",
                                             "target": "de", "beam": 1}, timeout=120)
    print(json.dumps({"big_status": r.status_code,
                      "big_seconds": round(time.perf_counter() - start, 3),
                      "big_body": r.text[:200]}))
    done: dict[str, float] = {}

    def large_job() -> None:
        t0 = time.perf_counter()
        rr = httpx.post(f"{url}/translate", json={"q": "A man rides a bike. " * allowed,
                                                  "source": "en", "target": "de", "beam": 1},
                        timeout=300)
        done["status"], done["seconds"] = rr.status_code, time.perf_counter() - t0

    job = threading.Thread(target=large_job)
    job.start()
    time.sleep(0.2)
    health: list[float] = []
    single: list[float] = []
    while job.is_alive() and len(single) < 20:
        t0 = time.perf_counter()
        httpx.get(f"{url}/health", timeout=30)
        health.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        httpx.post(f"{url}/translate", json={"q": "A dog runs.", "source": "en", "target": "de"},
                   timeout=30)
        single.append(time.perf_counter() - t0)
        time.sleep(0.2)
    job.join()
    print(json.dumps({"large_job": done, "samples": len(single),
                      "health_max_s": round(max(health), 3) if health else None,
                      "single_max_s": round(max(single), 3) if single else None}))


if __name__ == "__main__":
    main()
