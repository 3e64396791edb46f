"""What a crash test needs to know about a traceloom Parquet dataset, read with DuckDB.

Usage: lake_revisions.py LAKE_DIR
Prints one JSON object:
  duplicate_revisions: (trace_id, revision) pairs found in more than one `traces` row
  duplicate_span_rows: (trace_id, revision, span_id) triples found in more than one `spans` row
  newest: {trace_id (32 hex): [span_id (16 hex), ...]} for each trace's highest revision
"""

import json
import sys

import duckdb


def main(lake):
    con = duckdb.connect()
    for table in ("traces", "spans"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet("
            f"'{lake}/{table}/**/*.parquet', hive_partitioning = true)"
        )
    duplicate_revisions = con.execute(
        "SELECT count(*) FROM (SELECT trace_id, revision FROM traces "
        "GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]
    duplicate_span_rows = con.execute(
        "SELECT count(*) FROM (SELECT trace_id, revision, span_id FROM spans "
        "GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]
    rows = con.execute(
        "WITH newest AS (SELECT trace_id, max(revision) AS revision FROM traces GROUP BY 1) "
        "SELECT s.trace_id, list(s.span_id) FROM spans s JOIN newest n "
        "ON s.trace_id = n.trace_id AND s.revision = n.revision GROUP BY 1"
    ).fetchall()
    newest = {trace[3:]: spans for trace, spans in rows}
    print(json.dumps({
        "duplicate_revisions": duplicate_revisions,
        "duplicate_span_rows": duplicate_span_rows,
        "newest": newest,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
