"""The run directory's failure cases, on a tiny trained run: a corrupt newest checkpoint (training moves it
aside and finishes, sora-eval falls back), a metrics.jsonl cut mid-line, a workdir of another Sora version, and
sora-export's output folder checks. Each bad input is one line, exit status 2, and nothing is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sora_jax.cli.eval import main as eval_main
from sora_jax.cli.export import main as export_main
from sora_jax.cli.train import main as train_main
from sora_jax.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(trained_run) -> Path:
    """The session's tiny run (tests/conftest.py): 20 steps, checkpoints 10 and 20. Read only: the tests that
    change a run directory change a copy."""
    return trained_run.path


def copy_of(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def corrupt(step_dir: Path) -> None:
    for file in step_dir.rglob("*"):
        if file.is_file() and "state" in file.parts and file.stat().st_size > 64:
            file.write_bytes(b"\0" * 16)


def train_args(workdir: Path, trained_run, steps: int) -> list[str]:
    """The shared run's command line, trained to `steps` (a short final evaluation, no profile)."""
    overrides = {**trained_run.overrides, "num_train_steps": str(steps), "profile_steps": "",
                 "data.max_test_examples": "8", "data.num_sample_predictions": "0"}
    return [f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_finishes(trained, tmp_path, trained_run, capsys):
    workdir = copy_of(trained, tmp_path)
    corrupt(workdir / "checkpoints" / "20")
    # sora-eval falls back to step 10 and says so; it changes nothing in the workdir.
    assert eval_main([f"--workdir={workdir}", "--max_examples=8"]) == 0
    captured = capsys.readouterr()
    assert "note: checkpoint step 20 could not be read" in captured.err
    assert "eval validation @ step 10:" in captured.out
    assert (workdir / "checkpoints" / "20").is_dir()
    # Training moves step 20 aside, resumes from 10, saves step 20 again and finishes; so does a rerun.
    assert train_main(train_args(workdir, trained_run, 30)) == 0
    out = capsys.readouterr().out
    assert "note: checkpoint step 20 could not be read" in out and "resumed from checkpoint step 10" in out
    (aside,) = (workdir / "corrupt_checkpoints").iterdir()
    assert aside.name.startswith("20-") and (aside / "state").is_dir()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20, 30]
    assert train_main(train_args(workdir, trained_run, 30)) == 0
    assert "this run already finished at step 30" in capsys.readouterr().out


def test_a_metrics_line_cut_short_is_dropped_on_rerun(trained, tmp_path, trained_run, capsys):
    workdir = copy_of(trained, tmp_path)
    with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 20, "split": "tr')  # A run killed mid-write.
    assert train_main(train_args(workdir, trained_run, 20)) == 0
    assert "this run already finished at step 20" in capsys.readouterr().out
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert events == Workdir(str(trained)).events()


def test_a_workdir_of_another_sora_version_is_one_line_and_untouched(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    saved = json.loads((workdir / "config.json").read_text())
    saved.pop("sora_workdir_format")
    (workdir / "config.json").write_text(json.dumps(saved))
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    assert eval_main([f"--workdir={workdir}"]) == 2
    assert "was written by an older version of Sora (workdir format None; this version reads format" in (
        one_error_line(capsys))
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_export_refuses_a_file_or_a_non_empty_folder(trained, tmp_path, capsys):
    out = tmp_path / "hf"
    assert export_main([f"--workdir={trained}", f"--out={out}"]) == 0
    capsys.readouterr()
    config_before = (out / "config.json").read_bytes()
    assert export_main([f"--workdir={trained}", f"--out={out}", "--step=10"]) == 2
    assert "is not empty; give a new or empty folder, or pass --overwrite" in one_error_line(capsys)
    assert (out / "config.json").read_bytes() == config_before
    assert export_main([f"--workdir={trained}", f"--out={out}", "--step=10", "--overwrite"]) == 0
    assert "exported step 10" in capsys.readouterr().out
    assert export_main([f"--workdir={trained}", f"--out={out / 'config.json'}"]) == 2
    assert one_error_line(capsys).endswith("config.json is a file, not a directory; choose another path.")
