"""Sends CloudEvents to switchyard's POST /api/v1/events the way other
systems do: with the CloudEvents Python SDK (PyPI `cloudevents`), in the
HTTP binding's binary and structured modes and as a batch, over plain
urllib. Prints one JSON line per request: {"case", "status", "body"}.

Usage: python cloudevents_sdk.py http://127.0.0.1:PORT/api/v1/events
"""

import json
import sys
import urllib.error
import urllib.request

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


def post(url, headers, body):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main(url):
    fmt = JSONFormat()
    cases = []
    # Binary mode; the data has a `type` key of its own (never an attribute).
    binary = CloudEvent(
        attributes={"type": "order.created", "source": "/shop", "id": "sdk-binary-1",
                    "subject": "order 7", "datacontenttype": "application/json"},
        data={"type": "inner-type-not-an-attribute", "n": 41},
    )
    message = ce_http.to_binary(binary, fmt)
    cases.append(("binary", dict(message.headers), message.body))
    # Structured mode, data without a `type` key.
    structured = CloudEvent(
        attributes={"type": "order.created", "source": "/shop", "id": "sdk-structured-1",
                    "datacontenttype": "application/json"},
        data={"n": 1},
    )
    message = ce_http.to_structured(structured, fmt)
    cases.append(("structured", dict(message.headers), message.body))
    # Binary data in structured mode travels as data_base64.
    raw = CloudEvent(
        attributes={"type": "blob.stored", "source": "/store", "id": "sdk-bytes-1",
                    "datacontenttype": "application/octet-stream"},
        data=b"\x00\x01binary",
    )
    message = ce_http.to_structured(raw, fmt)
    cases.append(("data_base64", dict(message.headers), message.body))
    # A batch: each event as the SDK writes it, in one JSON array.
    batch = [
        CloudEvent(attributes={"type": "order.created", "source": "/shop", "id": f"sdk-batch-{i}",
                               "datacontenttype": "application/json"}, data={"n": i})
        for i in range(3)
    ]
    body = b"[" + b",".join(fmt.write(e) for e in batch) + b"]"
    cases.append(("batch", {"content-type": "application/cloudevents-batch+json"}, body))
    for case, headers, body in cases:
        status, answer = post(url, headers, body)
        print(json.dumps({"case": case, "status": status, "body": answer}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
