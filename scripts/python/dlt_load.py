"""dlt's Arrow path into DuckDB, the comparison in `cargo bench --bench pipeline`.

Usage: dlt_load.py atoms|contacts FILE.jsonl WORKDIR

The file is read with pyarrow's JSON reader and handed to dlt as Arrow tables (dlt's fast path: no
per-row Python objects). atoms: append. contacts: merge on contact_id, keeping the highest version.
"""

import os
import sys

import dlt
import pyarrow.json as pj


def main() -> None:
    case, path, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
    os.environ["DLT_DATA_DIR"] = os.path.join(workdir, "dlt")
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    table = pj.read_json(path)
    if case == "atoms":
        resource = dlt.resource(table, name="atoms", write_disposition="append")
    else:
        resource = dlt.resource(
            table,
            name="contacts_master",
            write_disposition={"disposition": "merge", "strategy": "delete-insert"},
            primary_key="contact_id",
            columns={"version": {"dedup_sort": "desc"}},
        )
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{case}",
        destination=dlt.destinations.duckdb(os.path.join(workdir, "dlt.duckdb")),
        dataset_name="bench",
        pipelines_dir=os.path.join(workdir, "pipelines"),
    )
    pipeline.run(resource)


if __name__ == "__main__":
    main()
