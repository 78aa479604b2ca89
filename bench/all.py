"""Every benchmark in one command, their tables collected in one file:

    python bench/all.py [--quick] [--output bench/results.md]

Runs each script of bench/ (sizes as in bench/README.md; ``--quick``: small sizes, to check that they
all run) one after another, printing as it goes, and writes their output under a heading each, with
the date and the machine, to ``--output``. catalogue_queries.py runs when the catalogue database made
by make_catalogue.py exists (``--catalogue``, default dlm_catalogue). The numbers in bench/README.md
and docs/ are copied from such a file.
"""

import argparse
import asyncio
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import asyncpg
import bench_db  # the benches' shared database helpers, beside this script

HERE = Path(__file__).parent
# script, its arguments for the recorded numbers, and for --quick
RUNS = [
    ("cli_startup.py", [], []),
    ("api_query.py", ["--rows", "1000000", "--requests", "1000"], ["--rows", "20000", "--requests", "50"]),
    ("api_register.py", ["--items", "8000"], ["--items", "400"]),
    ("register_bulk.py", ["--rows", "1000000", "--rounds", "1"], ["--items", "500", "--rounds", "1"]),
    ("audit_claim.py", [], ["--rows", "20000"]),
    ("expiry_pass.py", ["--items", "100000"], ["--items", "2000"]),
    ("copy_throughput.py", [], ["--size-mib", "16", "--files", "200"]),
    ("replication_throughput.py", ["--to", "both"], ["--items", "200", "--to", "both"]),
    ("replication_planning.py", [], ["--items", "500"]),
    ("copy_memory.py", [], ["--size-mib", "64"]),
    ("s3_server_side.py", [], ["--size-mib", "16"]),
    ("download.py", [], ["--size-mib", "64", "--files", "50", "--rounds", "1"]),
]


async def catalogue_exists(name: str) -> bool:
    connection = await asyncpg.connect(bench_db.dsn(bench_db.admin_url()))
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: check that every script runs")
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    parser.add_argument("--catalogue", default="dlm_catalogue")
    options = parser.parse_args()
    runs = [(script, quick if options.quick else full) for script, full, quick in RUNS]
    if asyncio.run(catalogue_exists(options.catalogue)):
        runs.append(
            ("catalogue_queries.py", ["--database", options.catalogue, *(["--requests", "50"] * options.quick)])
        )
    sections = [
        f"# bench/all.py{' --quick' * options.quick}: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    ]
    failed = []
    for script, arguments in runs:
        command = [sys.executable, str(HERE / script), *arguments]
        print(f"\n== {' '.join(command[1:])}", flush=True)
        finished = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
        print(finished.stdout, end="", flush=True)
        if finished.returncode != 0:
            failed.append(script)
            print(finished.stderr[-2000:], file=sys.stderr)
        body = finished.stdout.strip() if finished.returncode == 0 else f"FAILED ({finished.returncode})"
        sections.append(f"## `python bench/{script} {' '.join(arguments)}`\n\n```\n{body}\n```\n")
    options.output.write_text("\n".join(sections))
    print(f"\nwritten to {options.output}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
