"""Loads every trace in a JSON-lines file with MLflow's own Trace.from_dict and checks that
to_dict() gives the same document back. Prints one JSON summary line; exits 1 on any mismatch."""

import json
import sys

from mlflow.entities import Trace


def main(path):
    problems = []
    count = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            document = json.loads(line)
            count += 1
            try:
                trace = Trace.from_dict(document)
            except Exception as e:  # report every failure, not only the first
                problems.append({"line": number, "error": f"from_dict: {type(e).__name__}: {e}"})
                continue
            again = trace.to_dict()
            if again != document:
                problems.append({"line": number, "error": "to_dict differs",
                                 "expected": document, "got": again})
            # Spans must expose decoded attributes the way MLflow users read them.
            for span in trace.data.spans:
                span.attributes  # noqa: B018 - decoding every value must not raise
    print(json.dumps({"traces": count, "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
