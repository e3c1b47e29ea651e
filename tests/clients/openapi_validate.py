"""Validates an OpenAPI document (stdin) with openapi-spec-validator, the
validator most OpenAPI tooling uses; exit 1 with its error when invalid.
(tests/api.rs runs it on GET /api/v1/openapi.json.)"""

import json
import sys

from openapi_spec_validator import validate

try:
    validate(json.load(sys.stdin))
except Exception as e:  # the validator's own message, for the test
    print(f"invalid OpenAPI document: {e}", file=sys.stderr)
    sys.exit(1)
print("valid")
