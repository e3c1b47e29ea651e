"""The Celery side of `cargo bench --bench amqp` (SPEC §13's Celery row).

The same scenario as switchyard's AMQP bench, the way a Celery user builds
it: a 3-task chain of no-op tasks on the same RabbitMQ, persistent messages,
`acks_late`, a prefork worker with 2 processes. Each task appends its time to
a file so the driver can tell when chains finish, without a result backend.

    python3 benches/celery_chain.py            # prints one JSON line

Run by benches/amqp.rs when `celery` imports (set CELERY_PYTHON to a
virtualenv's python otherwise); it prints SKIPPED when it does not.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from celery import Celery, chain

BROKER = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
QUEUE = os.environ.get("SY_CELERY_QUEUE", "sy-celery")
OUT = os.environ.get("SY_CELERY_OUT", "/tmp")

app = Celery("celery_chain", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


def mark(name, value):
    with open(os.path.join(OUT, name), "a") as f:
        f.write(f"{value}\n")


@app.task(name="a")
def a(sent):
    mark("starts", time.time())
    return sent


@app.task(name="b")
def b(sent):
    return sent


@app.task(name="c")
def c(sent):
    now = time.time()
    mark("ends", f"{now} {now - sent}")


def lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_for(path, n, timeout):
    deadline = time.time() + timeout
    while len(lines(path)) < n:
        if time.time() > deadline:
            raise SystemExit(f"only {len(lines(path))} of {n} chains finished")
        time.sleep(0.05)
    return lines(path)


def publish(n, rate):
    start = time.time()
    for i in range(n):
        if rate:
            due = start + i / rate
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
        chain(a.s(time.time()), b.s(), c.s()).apply_async()


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def main():
    backlog = int(os.environ.get("SY_CELERY_BACKLOG", "5000"))
    out = tempfile.mkdtemp(prefix="sy-celery-")
    queue = f"sy-celery.{uuid.uuid4().hex}"
    env = dict(os.environ, SY_CELERY_QUEUE=queue, SY_CELERY_OUT=out)
    os.environ.update(SY_CELERY_QUEUE=queue, SY_CELERY_OUT=out)
    app.conf.task_default_queue = queue
    global OUT
    OUT = out

    # 1. Backlog: chains queued before the worker starts.
    publish(backlog, 0)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_chain", "worker",
         "--pool=prefork", "--concurrency=2", "-Q", queue, "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=os.path.dirname(os.path.abspath(__file__)), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ends = wait_for(os.path.join(out, "ends"), backlog, 600)
        first = min(float(x) for x in lines(os.path.join(out, "starts")))
        last = max(float(x.split()[0]) for x in ends)
        result = {"backlog": backlog, "backlog_runs_per_s": backlog / (last - first)}

        # 2. Latency at 50 chains/s.
        for name in ("starts", "ends"):
            os.remove(os.path.join(out, name))
        publish(500, 50)
        ends = wait_for(os.path.join(out, "ends"), 500, 120)
        latencies = sorted(float(x.split()[1]) * 1000 for x in ends)
        result["p50_ms_at_50"] = percentile(latencies, 0.5)
        result["p99_ms_at_50"] = percentile(latencies, 0.99)
        print(json.dumps(result), flush=True)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


if __name__ == "__main__":
    main()
