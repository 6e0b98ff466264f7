"""Messages a user reads when input is wrong: dataset.path that is not a text file, and bad
``python -m llem.aggregate`` arguments. Each is one clear line, never a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from llem import workload
from llem.aggregate.__main__ import main as aggregate_main
from llem.support.errors import WorkloadError
from llem.workload import read_prompts

# --- dataset.path -------------------------------------------------------------------------------------


def _refused(path: Path, fmt: str = "auto") -> str:
    with pytest.raises(WorkloadError) as err:
        read_prompts(path, fmt, "prompt")
    message = str(err.value)
    assert f"dataset.path={str(path)!r}" in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "no such file" in _refused(tmp_path / "nope.jsonl")
    (tmp_path / "link.txt").symlink_to(tmp_path / "gone.txt")
    assert "symlink to a missing file" in _refused(tmp_path / "link.txt")


def test_directory_names_what_is_allowed_and_the_hf_group(tmp_path):
    message = _refused(tmp_path)
    assert "is a directory: give a file (JSONL with one object per line, or text with one prompt per line)" in message
    assert "dataset=hf dataset.path=DIR" in message and "no such file" not in message


def test_character_device_is_never_read():
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    assert "is a character device, not a regular file" in _refused(Path("/dev/zero"))


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    assert "is a named pipe (FIFO), not a regular file" in _refused(fifo)


def test_binary_file_is_not_text(tmp_path):
    png = tmp_path / "prompts.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    message = _refused(png)
    assert "is not text: byte 0x89, which is not UTF-8, on line 1" in message
    assert "JSONL file" in message and "UTF-8 text" in message


def test_invalid_utf8_names_its_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": "caf\xe9"}\n{"prompt": "four"}\n')
    assert "byte 0xe9, which is not UTF-8, on line 3" in _refused(path)


def test_nul_byte_names_its_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"fine\nnot\x00fine\n")
    assert "is not text: a NUL byte on line 2" in _refused(path)


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file")
    path = tmp_path / "prompts.txt"
    path.write_text("hello\n")
    path.chmod(0)
    try:
        assert "is not readable (permission denied)" in _refused(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_large_binary_file_fails_without_being_read_whole(tmp_path):
    """A 4 GiB zero-filled (sparse) file with no newline: rejected after one bounded piece."""
    path = tmp_path / "zeros.txt"
    with path.open("wb") as fh:
        fh.truncate(4 << 30)
    tracemalloc.start()
    try:
        assert "a NUL byte on line 1" in _refused(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_text_still_streams_line_by_line(tmp_path, monkeypatch):
    """Lines longer than a piece are joined again; CRLF, lone CR and a BOM read as before."""
    monkeypatch.setattr(workload, "PIECE_CHARS", 4)
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffthe first prompt\r\nsecond\rthird é\n\n  last  ".encode())
    assert read_prompts(path, "auto", "prompt") == ["the first prompt", "second", "third é", "last"]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_bytes('\ufeff{"prompt": "a long enough prompt"}\r\n{"prompt": "b"}'.encode())
    assert read_prompts(jsonl, "auto", "prompt") == ["a long enough prompt", "b"]


def test_build_reports_the_config_key(compose_cfg, tmp_path):
    from llem.config import to_config

    config = to_config(compose_cfg(["dataset=file", f"dataset.path={tmp_path}", "model.tokenizer=bytes"]))
    with pytest.raises(WorkloadError, match=r"dataset.path=.* is a directory"):
        workload.build(config)


# --- python -m llem.aggregate -----------------------------------------------------------------------


@pytest.fixture
def job(tmp_path):
    """A one-job run dir holding a minimal results.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "runs" / "job1"
    run.mkdir(parents=True)
    pq.write_table(pa.table({"status": ["ok"], "cfg.backend.name": ["pytorch"], "cfg.model.name": ["tiny"],
                             "cfg.batch": [2], "output_tok_per_s": [100.0], "j_per_output_token": [0.5]}),
                   run / "results.parquet")
    return run


@pytest.fixture
def drawn(monkeypatch):
    """Where draw_all was asked to draw (the figures themselves are tested in test_aggregate)."""
    import llem.aggregate.plots as plots

    calls = []
    monkeypatch.setattr(plots, "draw_all", lambda agg, out_dir, job=None: calls.append(out_dir) or [])
    return calls


def _fails(argv, capsys) -> str:
    """main(argv) exits 2 with one line on stderr; that line."""
    with pytest.raises(SystemExit) as exit_:
        aggregate_main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llem.aggregate: ") and "Traceback" not in err
    return err.strip()


def test_plots_alone_writes_into_out_figures(job, tmp_path, drawn):
    out = tmp_path / "agg"
    assert aggregate_main([str(job), "-o", str(out), "--plots", "--quiet"]) == 0
    assert drawn == [out / "figures"] and (out / "summary.parquet").is_file()


def test_plots_with_a_folder(job, tmp_path, drawn):
    out, figs = tmp_path / "agg", tmp_path / "figs"
    assert aggregate_main([str(job), "-o", str(out), "--plots", str(figs), "--quiet"]) == 0
    assert aggregate_main([f"--plots={figs}", str(job), "-o", str(out), "--quiet"]) == 0
    assert drawn == [figs, figs]


def test_plots_without_matplotlib_fails_before_aggregating(job, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    out = tmp_path / "agg"
    err = _fails([job, "-o", out, "--plots"], capsys)
    assert err == "llem.aggregate: --plots needs matplotlib: pip install \".[plots]\" from a clone of llem"
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["{tmp}/nope"], "nope: no such directory"),
    (["{job}/results.parquet"], "results.parquet: is a file, not a directory"),
    ([], "give one or more run dirs"),
    (["--plots", "{job}"], "--plots took"),
    (["{job}", "--rows", "0"], "argument --rows: '0' is invalid: allowed an integer >= 1"),
    (["{job}", "--rows", "many"], "argument --rows: 'many' is invalid"),
    (["{job}", "--seed", "-1"], "argument --seed: '-1' is invalid: allowed an integer >= 0"),
    (["{job}", "-o", "{job}/results.parquet"], "-o/--out"),
    (["{job}", "--plots={job}/results.parquet/x"], "cannot be created"),
    (["{job}", "--plots={job}"], "holds llem results"),
    (["{job}", "--job", "job1"], "--job picks the job of the power plot: give --plots too"),
    (["{job}", "--slo", "ttft<500"], "METRIC<=NUMBER"),
])
def test_bad_input_is_one_line_before_any_work(job, tmp_path, capsys, args, expected, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(tmp=tmp_path, job=job) for a in args]
    assert expected in _fails(argv, capsys)
    assert not (tmp_path / "aggregate").exists()


@pytest.mark.parametrize("args, expected", [
    (["--plots", "--job", "nope"], "--job 'nope': no such job"),
    (["--slo", "nonsense<=1"], "unknown metric 'nonsense'"),
])
def test_choices_checked_against_the_aggregate_before_writing(job, tmp_path, capsys, args, expected, drawn):
    out = tmp_path / "agg"
    assert expected in _fails([job, "-o", out, *args], capsys)
    assert not out.exists() and drawn == []


def test_cli_exit_status_and_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llem.aggregate", str(tmp_path / "nope")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"llem.aggregate: {tmp_path / 'nope'}: no such directory (give run dirs, sweep dirs, or " \
                          "folders holding them)\n"
