"""The Celery side of `cargo bench --bench workers` (remote shell tasks).

The same work as switchyard's remote-task bench, the way a Celery user
builds it: a task that runs `true` as a subprocess (what a `shell` task
does), `acks_late`, persistent messages on the same RabbitMQ, a prefork
worker with N processes; N = 1, 2, 4. A backlog of tasks is queued before
the worker starts; the rate is tasks finished per second from the first
start to the last end. Each task appends its times to a file, so no
result backend is needed.

    python3 benches/celery_workers.py      # prints one JSON line

Run by benches/workers.rs when `celery` imports (set CELERY_PYTHON to a
virtualenv's python otherwise); it prints SKIPPED when it does not.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from celery import Celery

BROKER = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
QUEUE = os.environ.get("SY_CELERY_QUEUE", "sy-celery-shell")
OUT = os.environ.get("SY_CELERY_OUT", "/tmp")

app = Celery("celery_workers", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


def mark(name, value):
    with open(os.path.join(OUT, name), "a") as f:
        f.write(f"{value}\n")


@app.task(name="shell")
def shell():
    start = time.time()
    subprocess.run(["true"], check=True)
    mark("done", f"{start} {time.time()}")


def lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def main():
    backlog = int(os.environ.get("SY_CELERY_BACKLOG", "2000"))
    result = {"backlog": backlog}
    for processes in (1, 2, 4):
        out = tempfile.mkdtemp(prefix="sy-celery-")
        queue = f"sy-celery-shell.{uuid.uuid4().hex}"
        env = dict(os.environ, SY_CELERY_QUEUE=queue, SY_CELERY_OUT=out)
        app.conf.task_default_queue = queue
        for _ in range(backlog):
            shell.apply_async(queue=queue)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_workers", "worker",
             "--pool=prefork", f"--concurrency={processes}", "-Q", queue,
             "--loglevel=WARNING", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=os.path.dirname(os.path.abspath(__file__)), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            path = os.path.join(out, "done")
            deadline = time.time() + 600
            while len(lines(path)) < backlog:
                if time.time() > deadline:
                    raise SystemExit(f"only {len(lines(path))} of {backlog} tasks finished")
                time.sleep(0.05)
            done = [tuple(map(float, x.split())) for x in lines(path)]
            first = min(s for s, _ in done)
            last = max(e for _, e in done)
            result[f"tasks_per_s_{processes}"] = backlog / (last - first)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            with app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
