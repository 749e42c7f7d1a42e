"""Issue 27, kinds 5, 7 and 8: output that cannot be written is one line naming the path and what to do (exit 2),
never a traceback; a reference cache that cannot be written still gives the run its model; files are written
with the mode the umask asks for; `--only` trains only the references its cases use."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core import cli, results
from harness.core.errors import InputError, OutputError
from harness.models.reference import ReferenceConfig
from tests.conftest import FAULTY_PLUGINS, FIXTURES

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TINY = ReferenceConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, steps=20, batch=4, lr=1e-2, min_lr=1e-3,
                       warmup=5, max_bytes=300_000, eval_batches=1)  # a second of training


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """RLIMIT_FSIZE: a write past `nbytes` fails with EFBIG, as a full disk fails one with ENOSPC (no root needed);
    SIGXFSZ ignored, else the kernel kills the process instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def a_file(tmp_path: Path) -> Path:
    """A regular file: a path through it is ENOTDIR for every user, root included (chmod does not stop root)."""
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    return blocker


def harness(*args, preexec=None, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec, env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    return line


# --- kind 8: modes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o027])
def test_the_atomic_writers_give_the_mode_the_umask_asks_for(tmp_path, mask):
    with umask(mask):
        results.write_text(tmp_path / "a.txt", "text")
        results.write_bytes(tmp_path / "b.bin", b"\0")
        results.write_json(tmp_path / "c.json", {"x": 1})
        results.ensure_dir(tmp_path / "made" / "below")
    for name in ("a.txt", "b.bin", "c.json"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name
    assert mode(tmp_path / "made" / "below") == 0o777 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "made"]  # no temporaries
    assert list((tmp_path / "made" / "below").iterdir()) == []  # ensure_dir's probe is gone


def test_report_export_and_compare_files_are_readable_under_umask_022(tmp_path):
    with umask(0o022):
        assert cli.main(["report", str(DATA / "results-cpu.json"), "-o", str(tmp_path / "report.html")]) == 0
        assert cli.main(["export", str(DATA / "results-cpu.json"), "--format", "csv",
                         "-o", str(tmp_path / "out.csv")]) == 0
        cli.main(["compare", str(DATA / "results-cpu.json"), str(DATA / "results-cpu.json"),
                  "-o", str(tmp_path / "compare.html")])
    for name in ("report.html", "out.csv", "compare.html"):
        assert mode(tmp_path / name) == 0o644, name


def test_a_real_run_writes_its_files_with_the_umask(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text((FIXTURES / "faulty.yaml").read_text().split("cases:")[0]
                     + "cases:\n  - workload: toy\n    plugins: [noop]\n")
    out = tmp_path / "run"
    proc = harness("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", out, "--repeat", "1",
                   preexec=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr
    written = [out / "results.json", out / "report.html", *(out / "cases").glob("*.json")]
    assert len(written) >= 4  # results, report, the case's job, result and processes files
    assert {p.name: mode(p) for p in written} == {p.name: 0o640 for p in written}
    assert mode(out / "cases") == 0o750


def test_reference_cache_files_follow_the_umask(tmp_path, monkeypatch):
    from harness.models import reference
    from harness.models.gpt import GPT

    monkeypatch.setattr(reference, "REFERENCES", {"tiny": TINY})
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    with umask(0o022):
        reference._write_cache("tiny", GPT(TINY.model_args()), {"val_loss": 1.0})
    pt, js = reference.cache_paths("tiny")
    assert mode(pt) == mode(js) == 0o644 and mode(pt.parent) == 0o755
    assert json.loads(js.read_text())["sha256"]


# --- kind 5: output that cannot be written ----------------------------------------------------------------------

def test_a_path_through_a_regular_file_names_the_path_and_what_to_do(tmp_path):
    target = a_file(tmp_path) / "sub" / "results.json"
    with pytest.raises(OutputError) as info:
        results.write_json(target, {"x": 1})
    assert isinstance(info.value, InputError)  # the CLI prints it and exits 2
    assert str(info.value) == (f"{target}: cannot write (Not a directory): a part of the path is a file, not a "
                               "folder: choose another path")
    with pytest.raises(OutputError, match=r"somefile/sub: --out: cannot write to this folder \(Not a directory\)"):
        results.check_out_dir(tmp_path / "somefile" / "sub")
    with pytest.raises(OutputError, match="somefile: --out: .*it exists and is not a folder"):
        results.check_out_dir(tmp_path / "somefile")
    assert results.check_out_dir(tmp_path / "new" / "out") == tmp_path / "new" / "out"


def test_a_full_disk_is_an_error_naming_the_file_and_leaves_no_half_file(tmp_path):
    target = tmp_path / "results.json"
    results.write_json(target, {"old": True})
    with file_size_limit(1000), pytest.raises(OutputError) as info:
        results.write_bytes(target, bytes(5000))
    assert str(info.value).startswith(f"{target}: cannot write (File too large): ")
    assert json.loads(target.read_text()) == {"old": True}  # the previous file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # the temporary file removed
    with file_size_limit(100), pytest.raises(OutputError, match=r"--out: cannot write to this folder \(File too"):
        results.check_out_dir(tmp_path / "out")  # a full folder is found before any case runs


def test_the_cli_says_a_full_disk_in_one_line_with_exit_2(tmp_path):
    out = tmp_path / "out.csv"
    proc = harness("export", DATA / "results-cpu.json", "--format", "csv", "-o", out,
                   preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY)))
    assert one_error_line(proc) == (f"error: {out}: cannot write (File too large): the file is over this process's "
                                    "size limit (ulimit -f) or the file system's: raise it or write to another folder")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["report", "export", "run", "new-plugin"])
def test_an_output_through_a_regular_file_is_exit_2_naming_it(tmp_path, command):
    bad = a_file(tmp_path) / "sub"
    if command == "new-plugin":
        proc = harness("new-plugin", "my_opt", "--dir", bad)
    elif command == "run":
        suite = tmp_path / "suite.yaml"
        suite.write_text((FIXTURES / "faulty.yaml").read_text().split("cases:")[0]
                         + "cases:\n  - workload: toy\n    plugins: [noop]\n")
        proc = harness("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", bad)
    else:
        proc = harness(command, DATA / "results-cpu.json", "-o", bad / "out.txt")
    line = one_error_line(proc)
    assert str(bad) in line and "Not a directory" in line and "choose another" in line


@pytest.mark.skipif(IS_ROOT, reason="root writes into a read-only folder (chmod does not stop it)")
def test_a_read_only_folder_is_exit_2_naming_it(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    line = one_error_line(harness("export", DATA / "results-cpu.json", "--format", "csv", "-o", folder / "x.csv"))
    assert f"{folder / 'x.csv'}: cannot write (Permission denied)" in line
    with pytest.raises(OutputError, match=r"ro: --out: cannot write to this folder \(Permission denied\)"):
        results.check_out_dir(folder)


# --- kind 5: the reference cache ----------------------------------------------------------------------------------

@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """One tiny reference (a second of training), no run folder yet, and the names trained, in order."""
    from harness.models import reference

    monkeypatch.setattr(reference, "REFERENCES", {"tiny": TINY})
    monkeypatch.setenv(reference.RUN_FOLDER_ENV, "")
    monkeypatch.delenv(reference.RUN_FOLDER_ENV)  # restored to unset after the test: _keep_for_run sets it
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    trained, real = [], reference.train_reference

    def counting(name, device="cpu", progress=None):
        trained.append(name)
        return real(name, device, progress=lambda msg: None)

    monkeypatch.setattr(reference, "train_reference", counting)
    return trained


def test_an_unwritable_cache_warns_before_training_and_the_run_still_gets_the_model(tiny, tmp_path, monkeypatch,
                                                                                 capsys):
    from harness.models import reference

    cache = a_file(tmp_path) / "cache"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    model = reference.load_reference("tiny")
    assert tiny == ["tiny"] and model.reference["val_loss"] > 0 and not model.training
    err = capsys.readouterr().err
    assert (f"warning: reference tiny: cannot cache it: {cache / 'references'}: cannot write to this folder (Not a "
            "directory): a part of the path is a file, not a folder: choose another path (or set HARNESS_CACHE_DIR "
            "to a writable folder); training it for this run only") in err
    run_folder = Path(os.environ[reference.RUN_FOLDER_ENV])  # what the case processes inherit
    assert run_folder.parent == tmp_path and sorted(p.suffix for p in run_folder.iterdir()) == [".json", ".pt"]
    again = reference.load_reference("tiny")  # as a case process of the run loads it
    assert tiny == ["tiny"], "the run trained the reference again"
    assert all(reference.torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_train_reference_refuses_an_unwritable_cache_before_training(tiny, tmp_path, monkeypatch):
    from harness.models import reference

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(a_file(tmp_path) / "cache"))
    with pytest.raises(OutputError, match=r"cache/references: cannot write to this folder \(Not a directory\)"):
        reference.main_train_reference(["tiny"])
    assert tiny == []


def test_no_home_directory_names_the_variable_to_set(tiny, monkeypatch, capsys):
    from harness.models import reference

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    message = ("HARNESS_CACHE_DIR: no folder for the reference cache: the home directory cannot be determined "
               "(HOME is unset and this user has no passwd entry); set HARNESS_CACHE_DIR to a writable folder")
    with pytest.raises(OutputError) as info:
        reference.cache_dir()
    assert str(info.value) == message
    with pytest.raises(OutputError, match="set HARNESS_CACHE_DIR"):
        reference.main_train_reference(["tiny"])
    assert tiny == []
    assert reference.load_reference("tiny").reference["val_loss"] > 0  # a run goes on with the model it trained
    assert f"warning: reference tiny: cannot cache it: {message}; training it for this run only" in \
        capsys.readouterr().err


# --- kind 7: --only ---------------------------------------------------------------------------------------------

def test_only_needs_just_the_references_its_cases_use():
    from harness.core.plugins import load_registry
    from harness.core.runner import references_needed, selected_cases
    from harness.core.suite import load_suite

    suite = load_suite(ROOT / "suites" / "quick.yaml", load_registry())
    assert references_needed(suite) == ["draft", "target"]
    assert references_needed(suite, ["quantization"]) == ["target"]  # not the draft only speculation uses
    assert references_needed(suite, ["speculative_decoding"]) == ["draft", "target"]
    assert references_needed(suite, ["torch_compile", "lora"]) == []
    assert {u.name for c in selected_cases(suite, ["lora"]) for u in c.plugins} == {"lora"}
