"""/metrics figures come from the database: the job table and the load log."""
import io

from prometheus_client.parser import text_string_to_metric_families

import database
import metrics


def samples(db_path) -> dict:
    text = metrics.render(lambda: database.connect(db_path)).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_jobs_queue_report_seconds_and_rows_ingested(db, db_path):
    database.load_files(db, status=io.BytesIO(
        b"store_id,status,timestamp_utc\na,active,2023-01-22 12:00:00 UTC\nb,inactive,2023-01-22 12:00:00 UTC\n"
        b"b,inactive,2023-01-22 12:00:00 UTC\n=x,active,2023-01-22 12:00:00 UTC\n"))
    database.load_files(db, status=io.BytesIO(b"store_id,status,timestamp_utc\na,active,2023-01-22 12:00:00 UTC\n"))
    for report_id, seconds in (("r1", 0.3), ("r2", 4.0)):
        database.create_report_job(db, report_id, {})
        database.mark_report_complete(db, report_id, file=f"{report_id}.csv", rows=1, as_of="2023-01-22T12:00:00Z",
                                      seconds=seconds)
    database.create_report_job(db, "r3", {})
    got = samples(db_path)
    assert got[("store_monitoring_report_jobs", (("status", "Complete"),))] == 2
    assert got[("store_monitoring_report_jobs", (("status", "Queued"),))] == 1
    assert got[("store_monitoring_report_jobs", (("status", "Failed"),))] == 0
    assert got[("store_monitoring_queue_depth", ())] == 1
    assert got[("store_monitoring_report_seconds_bucket", (("le", "0.5"),))] == 1
    assert got[("store_monitoring_report_seconds_bucket", (("le", "5.0"),))] == 2
    assert got[("store_monitoring_report_seconds_count", ())] == 2
    assert got[("store_monitoring_report_seconds_sum", ())] == 4.3
    rows = {labels: value for (name, labels), value in got.items() if name == "store_monitoring_rows_ingested_total"}
    assert rows[(("outcome", "new"), ("table", "store_status"))] == 2
    assert rows[(("outcome", "duplicates"), ("table", "store_status"))] == 1
    assert rows[(("outcome", "already_stored"), ("table", "store_status"))] == 1
    assert rows[(("outcome", "rejected"), ("table", "store_status"))] == 1


def test_every_load_is_logged_in_its_transaction(db):
    database.load_files(db, status=io.BytesIO(b"store_id,status,timestamp_utc\na,active,2023-01-22 12:00:00 UTC\n"),
                        hours=io.BytesIO(b"store_id,day,start_time_local,end_time_local\na,0,09:00:00,17:00:00\n"))
    loads = database.recent_loads(db)
    assert [(load["table"], load["new"]) for load in loads] == [("business_hours", 1), ("store_status", 1)]
    assert loads[0]["finished_at"].endswith("Z")


def test_report_seconds_never_go_down_when_reports_are_deleted(db, db_path):
    database.create_report_job(db, "r1", {})
    database.mark_report_complete(db, "r1", file="r1.csv", rows=1, as_of="2023-01-22T12:00:00Z", seconds=0.3)
    before = samples(db_path)[("store_monitoring_report_seconds_count", ())]
    database.delete_report_job(db, "r1")
    assert samples(db_path)[("store_monitoring_report_seconds_count", ())] == before == 1
