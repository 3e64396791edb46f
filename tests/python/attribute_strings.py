"""Stores each string as MLflow stores a string attribute it receives over OTLP: dumped by
`dump_span_attribute_value` (as `Span.from_otel_proto` does), then `sanitize_attributes`, which
keeps the string itself when `json.loads` reads it as a string, dict or list.

Usage: attribute_strings.py FILE   (FILE: one JSON-encoded string per line)
Prints a JSON list of the stored values, in order.
"""

import json
import sys

from mlflow.tracing.otel.translation import sanitize_attributes
from mlflow.tracing.utils import dump_span_attribute_value


def main(path):
    stored = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            value = json.loads(line)
            stored.append(sanitize_attributes({"v": dump_span_attribute_value(value)})["v"])
    print(json.dumps(stored))


if __name__ == "__main__":
    main(sys.argv[1])
