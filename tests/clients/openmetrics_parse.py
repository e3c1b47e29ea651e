"""Parses an OpenMetrics exposition (stdin) with the Prometheus project's
own Python client, strictly, and prints its families as JSON:
{"<family>": {"type": "...", "samples": [[name, {labels}, value], ...]}}.
Exit 1 with the parser's error when the text is not valid OpenMetrics.
(tests/metrics.rs runs it on switchyard's /metrics.)"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

try:
    families = {
        family.name: {
            "type": family.type,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
        for family in text_string_to_metric_families(sys.stdin.read())
    }
except Exception as e:  # the parser's own error, for the test's message
    print(f"invalid OpenMetrics: {e}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(families))
