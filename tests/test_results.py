"""The result schema: one declaration per column, typed nulls, atomic writes, and the writer, the
aggregate and the column reference derived from the same declarations."""

from __future__ import annotations

import dataclasses
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llem import results
from llem.aggregate import report, stats
from llem.config import to_config
from llem.results.row import PARTS, Notes, Outcome, Throughput, assemble, part_columns
from llem.results.schema import F64, I64, columns_of, config_columns
from llem.results.tables import RequestRow, TimeseriesRow

# A measured number carries its unit in its name; these are counts, ratios or positions, named as such.
UNITS = {"s", "ms", "j", "w", "mib", "pct", "bytes", "g", "kwh", "c", "mhz", "mj", "gb"}
COUNTS = re.compile(r"(^num_|_total$|_tokens|_tokens_(min|max|mean|p\d+)$|_parameters$|_rows$|_run$|_cv$|"
                    r"^flops_estimate$|^prompts_|_index$|_id$|^gpu_count$|^cpu_count$|_reasons$|_expected$|"
                    r"^tokens_|_version$|_position$)")


def _row(config, **parts):
    return assemble({type(p): p for p in parts.values()}, config=config)


def test_every_fixed_column_is_declared_once_with_a_meaning():
    names = [c.name for c in part_columns()]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    assert all(c.meaning for c in part_columns() + columns_of(RequestRow) + columns_of(TimeseriesRow))


def test_numbers_carry_their_unit_in_their_name():
    from llem.results.environment import Environment

    cols = part_columns() + columns_of(RequestRow) + columns_of(TimeseriesRow) + columns_of(Environment, "env.")
    bad = [c.name for c in cols if c.type in (F64, I64) and not UNITS & set(c.name.split(".")[-1].split("_"))
           and not COUNTS.search(c.name.split(".")[-1])]
    assert not bad, f"numeric columns without a unit in their name: {bad}"
    assert not [c.name for c in cols if c.name.endswith("_mb")], "memory is MiB: name it _mib"


def test_ok_and_failed_rows_share_one_typed_schema(compose_cfg, tmp_path):
    config = to_config(compose_cfg([]))
    ok = _row(config, outcome=Outcome(status="ok"), tp=Throughput(window_s=1.0, output_tok_per_s=3.0), notes=Notes())
    failed = _row(config, outcome=Outcome(status="failed", error="x"), notes=Notes(warnings=["w"]))
    results.write_result(ok, tmp_path)
    a = pq.read_schema(tmp_path / results.RESULTS)
    results.write_result(failed, tmp_path)
    b = pq.read_schema(tmp_path / results.RESULTS)
    assert a.equals(b)
    assert str(b.field("output_tok_per_s").type) == "double" and str(b.field("num_requests").type) == "int64"
    assert pa.types.is_list(b.field("gpu_energy_j_per_gpu").type)
    back = results.read_result(tmp_path)
    assert back["output_tok_per_s"] is None and back["warnings"] == ["w"] and back["status"] == "failed"
    assert [p.name for p in tmp_path.iterdir()] == [results.RESULTS]  # no temporary file left


@pytest.mark.parametrize("override, column, arrow", [
    ("warmup.until_cv=null", "cfg.warmup.until_cv", "double"),
    ("warmup.output_len=null", "cfg.warmup.output_len", "int64"),
    ("model.hf_id=null", "cfg.model.hf_id", "string"),
    ("backend.quantization.compute_dtype=null", "cfg.backend.quantization.compute_dtype", "string"),
])
def test_a_null_config_value_is_a_typed_null(compose_cfg, tmp_path, override, column, arrow):
    """The config schema types cfg.* columns: a null is never written as a string column."""
    config = to_config(compose_cfg([override]))
    results.write_result(_row(config, outcome=Outcome(status="ok"), notes=Notes()), tmp_path)
    field = pq.read_schema(tmp_path / results.RESULTS).field(column)
    assert str(field.type) == arrow


def test_config_columns_follow_the_schema_of_every_engine(compose_cfg):
    for backend in ("pytorch", "vllm", "tensorrt"):
        config = to_config(compose_cfg([f"backend={backend}"]))
        cols = {c.name: c for c in config_columns(config)}
        assert cols["cfg.batch"].type == I64 and cols["cfg.decoding.temperature"].type == F64
        assert cols["cfg.backend.engine_args"].type == "json" and cols["cfg.model.architecture"].type == "json"
        own = {f"cfg.backend.{f.name}" for f in dataclasses.fields(config.backend)
               if not dataclasses.is_dataclass(getattr(config.backend, f.name))}
        assert own <= set(cols), own - set(cols)


def test_engine_columns_are_typed_by_the_engines_dataclass(compose_cfg, tmp_path):
    from llem.backends._torch_runner import PyTorchResolved

    config = to_config(compose_cfg([]))
    row = assemble({Outcome: Outcome(status="ok")}, config=config, engine_versions={"torch": "2.x"},
                   engine_resolved=PyTorchResolved(compile_s=None, torch_compile="off"))
    results.write_result(row, tmp_path)
    schema = pq.read_schema(tmp_path / results.RESULTS)
    assert str(schema.field("engine.compile_s").type) == "double"  # null, yet typed
    assert str(schema.field("engine.cuda_graph").type) == "bool"
    assert str(schema.field("engine.torch_version").type) == "string"


def test_a_value_that_does_not_fit_its_column_is_null_and_said(compose_cfg, tmp_path):
    row = _row(to_config(compose_cfg([])), outcome=Outcome(status="ok"), tp=Throughput(output_tokens_total=2**70),
               notes=Notes())
    results.write_result(row, tmp_path)
    back = results.read_result(tmp_path)
    assert back["output_tokens_total"] is None
    assert any("output_tokens_total" in w and "int64" in w for w in back["warnings"])


def test_rows_with_fixed_schema_even_when_empty(tmp_path):
    path = tmp_path / results.TIMESERIES
    results.write_rows([], path, TimeseriesRow)
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.column_names == [c.name for c in columns_of(TimeseriesRow)]
    results.write_rows([{"t_s": 0.1, "phase": "measure", "power_instant_w": None}], path, TimeseriesRow)
    assert pq.read_table(path).to_pylist()[0]["phase"] == "measure"
    with pytest.raises(ValueError, match="no column"):  # an undeclared column never reaches a file
        results.write_rows([{"t_s": 0.1, "phase": "measure", "watts": 1.0}], path, TimeseriesRow)


def test_unreadable_result_is_not_a_success(tmp_path):
    (tmp_path / results.RESULTS).write_bytes(b"PAR1 truncated")
    assert results.read_result(tmp_path) is None


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    results.write_result(assemble({Outcome: Outcome(status="failed")}), tmp_path)
    import pyarrow.parquet as real_pq

    def boom(table, where, **options):
        with open(where, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(real_pq, "write_table", boom)
    with pytest.raises(OSError):
        results.write_result(assemble({Outcome: Outcome(status="ok")}), tmp_path)
    assert results.read_result(tmp_path)["status"] == "failed"
    assert sorted(os.listdir(tmp_path)) == [results.RESULTS]


def test_the_aggregate_reads_its_metrics_from_the_declarations():
    numeric = {c.name for c in part_columns() if c.type in (F64, I64)}
    assert set(stats.REPEAT_METRICS) == {c.name for c in part_columns() if c.summary} and set(
        stats.REPEAT_METRICS) <= numeric
    assert "j_per_output_token" in stats.REPEAT_METRICS
    pooled = {c.name for c in columns_of(RequestRow) if c.pooled}
    assert {source for source, _ in stats.POOLED.values()} == pooled
    assert {m for m, _, _ in report.HEADLINE} <= set(stats.REPEAT_METRICS)
    assert {m for m, _, _ in report.POOLED} <= set(stats.POOLED)


def test_parts_are_dataclasses_with_defaults():
    for cls, _ in PARTS:
        assert dataclasses.is_dataclass(cls)
        cls()  # every part can stand empty (all null): a failed job's row still has every column
