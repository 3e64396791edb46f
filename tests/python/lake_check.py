"""Reads a traceloom Parquet dataset as a lake would, with DuckDB, pyarrow and MLflow.

Usage: lake_check.py LAKE_DIR [--text]
Prints one JSON object: row counts, column types as each engine sees them, a traces x spans join,
how many `trace_json` values MLflow's `Trace.from_json` loads, and a summary per trace (with
`--text`, also its JSON and the text of its span rows).
"""

import json
import sys

import duckdb
import pyarrow.dataset as ds
from mlflow.entities import Trace


def duckdb_view(con, lake, table):
    con.execute(
        f"CREATE VIEW {table} AS SELECT * FROM read_parquet("
        f"'{lake}/{table}/**/*.parquet', hive_partitioning = true)"
    )
    return {name: kind for name, kind, *_ in con.execute(f"DESCRIBE {table}").fetchall()}


def main(lake, text):
    con = duckdb.connect()
    out = {
        "duckdb_types": {
            "traces": duckdb_view(con, lake, "traces"),
            "spans": duckdb_view(con, lake, "spans"),
        }
    }
    out["traces"] = con.execute("SELECT count(*) FROM traces").fetchone()[0]
    out["spans"] = con.execute("SELECT count(*) FROM spans").fetchone()[0]
    out["join_rows"] = con.execute(
        "SELECT count(*) FROM traces t JOIN spans s "
        "ON s.trace_id = t.trace_id AND s.revision = t.revision"
    ).fetchone()[0]
    rows = con.execute(
        "SELECT trace_id, revision, span_count, services, state, tags['mlflow.traceName'], "
        "trace_json FROM traces"
    ).fetchall()
    # One pass over `spans` for every trace: its span names, and every text value of its rows
    # (to check what a stage removed).
    per_trace = {
        (trace_id, revision): (sorted(names), text)
        for trace_id, revision, names, text in con.execute(
            "SELECT trace_id, revision, list(name), string_agg(coalesce(inputs, '') || "
            "coalesce(outputs, '') || CAST(attributes AS VARCHAR) || CAST(events AS VARCHAR), '|') "
            "FROM spans GROUP BY trace_id, revision"
        ).fetchall()
    }
    out["by_trace"] = {}
    loaded = 0
    for trace_id, revision, span_count, services, state, name, trace_json in rows:
        trace = Trace.from_json(trace_json)
        assert trace.info.trace_id == trace_id, (trace.info.trace_id, trace_id)
        assert len(trace.data.spans) == span_count, (len(trace.data.spans), span_count)
        loaded += 1
        out["by_trace"][f"{trace_id}@{revision}"] = {
            "span_count": span_count,
            "services": list(services),
            "state": state,
            "name": name,
            "span_names": per_trace.get((trace_id, revision), ([], ""))[0],
            "experiment_id": trace.info.experiment_id,
            "tags": dict(trace.info.tags),
        }
        if text:
            out["by_trace"][f"{trace_id}@{revision}"].update(
                trace_json=trace_json,
                span_text=per_trace.get((trace_id, revision), ([], ""))[1],
            )
    out["from_json"] = loaded
    arrow = {}
    for table in ("traces", "spans"):
        t = ds.dataset(f"{lake}/{table}", format="parquet", partitioning="hive").to_table()
        arrow[table] = {"rows": t.num_rows, "types": {f.name: str(f.type) for f in t.schema}}
    out["pyarrow"] = arrow
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], "--text" in sys.argv[2:])
