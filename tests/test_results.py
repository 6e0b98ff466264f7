"""Result files: stable column types (null stays typed), atomic writes, reading back."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from llem import results


def test_null_measurements_keep_their_types(tmp_path):
    row = {
        "status": "ok",
        "gpu_energy_j": None,
        "j_per_output_token": None,
        "num_requests": 4,
        "gpu_energy_j_per_gpu": None,
        "warnings": ["w"],
        "cfg.batch": 2,
        "cfg.model.hf_id": None,
    }
    results.write_result(row, tmp_path)
    schema = pq.read_schema(tmp_path / results.RESULTS)
    assert str(schema.field("gpu_energy_j").type) == "double"
    assert str(schema.field("num_requests").type) == "int64"
    assert pa.types.is_list(schema.field("gpu_energy_j_per_gpu").type)
    back = results.read_result(tmp_path)
    assert back["gpu_energy_j"] is None and back["warnings"] == ["w"] and back["cfg.batch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == [results.RESULTS]  # no temporary file left


def test_rows_with_fixed_schema_even_when_empty(tmp_path):
    path = tmp_path / results.TIMESERIES
    results.write_rows([], path, results.TIMESERIES_COLUMNS)
    table = pq.read_table(path)
    assert table.num_rows == 0 and "power_instant_w" in table.column_names
    results.write_rows([{"t_s": 0.1, "phase": "measure", "power_instant_w": None}], path, results.TIMESERIES_COLUMNS)
    assert pq.read_table(path).to_pylist()[0]["phase"] == "measure"


def test_unreadable_result_is_not_a_success(tmp_path):
    (tmp_path / results.RESULTS).write_bytes(b"PAR1 truncated")
    assert results.read_result(tmp_path) is None


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    results.write_result({"status": "failed"}, tmp_path)
    import pyarrow.parquet as real_pq

    def boom(table, where, **options):
        with open(where, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(real_pq, "write_table", boom)
    try:
        results.write_result({"status": "ok"}, tmp_path)
    except OSError:
        pass
    assert results.read_result(tmp_path)["status"] == "failed"
    assert sorted(os.listdir(tmp_path)) == [results.RESULTS]
