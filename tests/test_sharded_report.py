"""A report computed in shards of stores (in worker processes or here) is byte-identical to one computation
over every store, with the same metadata."""
import pandas as pd
import pytest

import database
import sample_data
from report_generator import generate_report


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Random generated data with special hours, plus a store polled only long before the week."""
    folder = tmp_path_factory.mktemp("sharded")
    files = sample_data.generate_dataset(folder / "csv", stores=120, days=16, seed=11, special_share=0.4)
    path = folder / "db.sqlite3"
    conn = database.connect(path)
    database.load_tables(conn, files)
    database.ingest_store_status(conn, pd.DataFrame(
        {"store_id": ["zz-old"], "status": ["inactive"], "timestamp_utc": ["2022-12-20 00:00:00 UTC"]}))
    conn.close()
    return path


def unsharded(loaded, folder, **options):
    """Today's report: every store in one shard, in this process."""
    outcome = generate_report(loaded, folder / "whole.csv", shard_stores=10**9, processes=0, **options)
    return (folder / "whole.csv").read_bytes(), outcome


@pytest.mark.parametrize("reach", [120, None])
@pytest.mark.parametrize("shard_stores", [1, 7, 50, 10**6])
@pytest.mark.parametrize("as_of", [None, "2023-01-20 09:30:00"])
def test_sharded_report_is_byte_identical(loaded, tmp_path, reach, shard_stores, as_of):
    expected, whole = unsharded(loaded, tmp_path, reach_minutes=reach, as_of=as_of, extended=True)
    outcome = generate_report(loaded, tmp_path / "sharded.csv", shard_stores=shard_stores, processes=0,
                              reach_minutes=reach, as_of=as_of, extended=True)
    assert (tmp_path / "sharded.csv").read_bytes() == expected
    assert outcome.meta == whole.meta and outcome.rows == whole.rows and outcome.as_of == whole.as_of
    if as_of is None:
        assert whole.meta["stores_without_polls_this_week"] >= 1  # zz-old: summed over shards


@pytest.mark.parametrize("shard_stores", [7, 50])
def test_sharded_report_in_worker_processes(loaded, tmp_path, shard_stores):
    expected, whole = unsharded(loaded, tmp_path)
    fractions = []
    outcome = generate_report(loaded, tmp_path / "pool.csv", shard_stores=shard_stores, processes=2,
                              progress=fractions.append)
    assert (tmp_path / "pool.csv").read_bytes() == expected
    assert outcome.meta == whole.meta
    assert set(outcome.timings) == {"load", "compute", "write"}
    assert fractions == sorted(fractions) and len(fractions) == -(-whole.rows // shard_stores)


def test_sharded_report_of_chosen_stores(loaded, tmp_path):
    ids = sorted(pd.read_csv(loaded.parent / "csv" / "store_status.csv",
                             dtype={"store_id": str})["store_id"].unique())
    chosen = ids[5:40] + ["zz-old", "not-a-store"]
    expected, whole = unsharded(loaded, tmp_path, store_ids=chosen)
    for shard_stores, processes in [(1, 0), (6, 0), (6, 2)]:
        outcome = generate_report(loaded, tmp_path / "chosen.csv", store_ids=chosen, shard_stores=shard_stores,
                                  processes=processes)
        assert (tmp_path / "chosen.csv").read_bytes() == expected
        assert outcome.meta == whole.meta
    assert whole.meta["warnings"][0]["code"] == "store_ids_without_polls"
