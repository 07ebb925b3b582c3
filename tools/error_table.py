"""Print docs/api.md's table of error codes from an OpenAPI document read on standard input.

Usage: curl -s http://127.0.0.1:6385/openapi.json | python tools/error_table.py

tests/unit/api/test_contract.py keeps the table in docs/api.md equal to
what the API's own document gives.
"""

from __future__ import annotations

import json
import sys

from conductor.api.contract import error_table

if __name__ == "__main__":
    print(error_table(json.load(sys.stdin)))
