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


# --- shards bounded by polls as well as stores (SM_SHARD_POLLS) --------------------------------------

def test_cut_shards_by_hand():
    from storage import cut_shards

    keys, polls = [1, 2, 5, 6, 9, 10], [3, 3, 9, 1, 1, 1]
    top = 2**63 - 1
    # stores only: three of them a shard
    assert cut_shards(keys, polls, shard_stores=3, shard_polls=None) == [(1, 5), (6, top)]
    # at most 6 polls: [1, 2] holds 6; store 5 alone holds 9 (more than the limit, so a shard of its own);
    # [6, 9, 10] holds 3
    assert cut_shards(keys, polls, shard_stores=10, shard_polls=6) == [(1, 4), (5, 5), (6, top)]
    # both limits: [6, 9] is full at 2 stores, so 10 starts the last shard
    assert cut_shards(keys, polls, shard_stores=2, shard_polls=6) == [(1, 4), (5, 5), (6, 9), (10, top)]
    assert cut_shards([], [], shard_stores=2, shard_polls=6) == []
    with pytest.raises(ValueError):
        cut_shards(keys, polls, shard_stores=2, shard_polls=0)


def test_plan_estimates_the_week_polls_of_each_store(loaded):
    """A plan by polls only: with a limit of one store's week of polls, about one store a shard; with a
    limit above the whole week's polls, one shard."""
    from report_generator import WEEK_US

    now_us, by_store = database.plan_report_shards(loaded, shard_stores=10**6, shard_polls=None,
                                                   lookback_us=WEEK_US)
    assert len(by_store) == 1
    inputs = database.read_report_inputs(loaded, lookback_us=WEEK_US)
    week_polls = len(inputs.polls)   # the week's polls, plus one earlier poll a store
    _, whole = database.plan_report_shards(loaded, shard_stores=10**6, shard_polls=2 * week_polls,
                                           lookback_us=WEEK_US)
    assert len(whole) == 1
    _, small = database.plan_report_shards(loaded, shard_stores=10**6, shard_polls=week_polls // 10,
                                           lookback_us=WEEK_US)
    assert 8 <= len(small) <= 14   # estimated from week blocks, prorated: about a tenth each


@pytest.mark.parametrize("shard_polls", [1, 500, 3000])
def test_shards_bounded_by_polls_are_byte_identical(loaded, tmp_path, shard_polls):
    expected, whole = unsharded(loaded, tmp_path, extended=True)
    outcome = generate_report(loaded, tmp_path / "by-polls.csv", shard_stores=10**6, shard_polls=shard_polls,
                              processes=0, extended=True)
    assert (tmp_path / "by-polls.csv").read_bytes() == expected
    assert outcome.meta == whole.meta


def test_cut_shards_gives_every_process_a_shard_of_a_big_enough_fleet():
    from storage import MIN_SPLIT_STORES, cut_shards

    top = 2**63 - 1
    keys = list(range(1, 14_001))
    polls = [100] * len(keys)
    # 14,000 stores, at most 10,000 a shard, two processes: two shards of 7,000
    assert cut_shards(keys, polls, shard_stores=10_000, shard_polls=None, min_shards=2) == [(1, 7000), (7001, top)]
    # the poll bound still wins: 7,000 stores of 100 polls is more than 300,000
    assert len(cut_shards(keys, polls, shard_stores=10_000, shard_polls=300_000, min_shards=2)) == 5
    # a fleet too small to split (fewer than 2 x MIN_SPLIT_STORES stores): one shard, computed in place
    small = list(range(1, MIN_SPLIT_STORES + 500))
    assert cut_shards(small, [1] * len(small), shard_stores=10_000, shard_polls=None, min_shards=2) == [(1, top)]
