"""Metrics files, checkpoints, locks and output-directory guards: the pieces resume relies on."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from growbatch.training.checkpoint import capture_rng, check_compatible, load_checkpoint, restore_rng, save_checkpoint
from growbatch.training.metrics import append_record, read_records, write_records
from growbatch.training.rundir import LOCK_NAME, RunLock, prepare_output_dir


class TestMetrics:
    def test_append_then_read(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        for epoch in range(3):
            append_record(path, {"epoch": epoch, "test_acc": epoch / 10})
        assert [r["epoch"] for r in read_records(path)] == [0, 1, 2]

    @pytest.mark.parametrize("torn", ['{"epoch": 2, "test_a', '{"epoch": 2}'])
    def test_torn_last_line_is_ignored(self, tmp_path, torn):
        path = tmp_path / "metrics.jsonl"
        append_record(path, {"epoch": 0})
        append_record(path, {"epoch": 1})
        with open(path, "a") as f:
            f.write(torn)  # killed before the newline: even valid JSON is not a finished record
        assert [r["epoch"] for r in read_records(path)] == [0, 1]

    def test_corrupt_middle_line_is_an_error(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        path.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n')
        with pytest.raises(ValueError, match=r"line 2 is not valid JSON; the metrics file is corrupt"):
            read_records(path)

    def test_write_records_replaces_atomically(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
        write_records(path, [{"epoch": 0}])
        assert read_records(path) == [{"epoch": 0}]
        assert not (tmp_path / "metrics.jsonl.tmp").exists()


class TestCheckpoint:
    def test_round_trip_and_rng(self, tmp_path):
        path = tmp_path / "c.pt"
        random.seed(1), np.random.seed(2), torch.manual_seed(3)
        rng = capture_rng()
        expected = (random.random(), np.random.rand(), torch.rand(1).item())
        save_checkpoint(path, {"rng": rng, "weights": torch.arange(4.0), "records": [{"epoch": 0}]})
        state = load_checkpoint(path)
        restore_rng(state["rng"])
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
        assert torch.equal(state["weights"], torch.arange(4.0)) and state["records"] == [{"epoch": 0}]

    def test_previous_checkpoint_survives_a_failed_write(self, tmp_path, monkeypatch):
        path = tmp_path / "c.pt"
        save_checkpoint(path, {"step": 1})

        def exploding_save(obj, f):
            f.write(b"partial")
            raise OSError("No space left on device")

        monkeypatch.setattr(torch, "save", exploding_save)
        with pytest.raises(OSError, match="No space left"):
            save_checkpoint(path, {"step": 2})
        monkeypatch.undo()
        assert load_checkpoint(path)["step"] == 1

    def test_a_full_disk_leaves_the_previous_checkpoint_and_no_tmp(self, tmp_path, monkeypatch):
        import errno

        from growbatch import atomic

        path = tmp_path / "c.pt"
        save_checkpoint(path, {"step": 1})

        class FullDisk:
            def __init__(self, name, mode):
                self.file = open(name, mode)

            def write(self, data):
                self.file.write(bytes(data)[:10])
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self.file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

        monkeypatch.setattr(atomic, "open", FullDisk, raising=False)
        with pytest.raises(OSError, match="No space left on device") as caught:
            save_checkpoint(path, {"step": 2})
        monkeypatch.undo()
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "c.pt.tmp")
        assert load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]

    @pytest.mark.parametrize("content", [b"", b"garbage", None])
    def test_truncated_or_foreign_file(self, tmp_path, content):
        path = tmp_path / "c.pt"
        save_checkpoint(path, {"x": torch.ones(1000)})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if content is None else content)
        with pytest.raises(ValueError, match=r"is corrupt or truncated"):
            load_checkpoint(path)

    def test_other_version_is_refused(self, tmp_path):
        path = tmp_path / "c.pt"
        torch.save({"version": 99}, path)
        with pytest.raises(ValueError, match=r"has version 99, expected 2"):
            load_checkpoint(path)

    def test_incompatible_setting_is_named(self, tmp_path):
        with pytest.raises(ValueError, match=r"written with model='cnn', but this run has model='mnist-cnn'"):
            check_compatible({"model": "cnn"}, {"model": "mnist-cnn"}, tmp_path / "c.pt")

    def test_incompatible_nested_setting_is_named_by_its_path(self, tmp_path):
        first = {"lr": 0.1, "batch_size": 32}
        saved = {"schedule": {"name": "increase", "phases": [first, {"lr": 0.1, "batch_size": 160}]}}
        current = {"schedule": {"name": "increase", "phases": [first, {"lr": 0.1, "batch_size": 64}]}}
        with pytest.raises(ValueError, match=r"written with schedule.phases\[1\].batch_size=160, but this run has "
                                             r"schedule.phases\[1\].batch_size=64; use the original settings"):
            check_compatible(saved, current, tmp_path / "c.pt")
        check_compatible(saved, saved, tmp_path / "c.pt")
        fewer = {"schedule": {**saved["schedule"], "phases": saved["schedule"]["phases"][:1]}}
        with pytest.raises(ValueError, match=r"written with schedule.phases=\[\{'lr': 0.1, .*but this run has "):
            check_compatible(saved, fewer, tmp_path / "c.pt")

    def test_not_a_checkpoint(self, tmp_path):
        path = tmp_path / "c.pt"
        torch.save({"weights": torch.ones(2)}, path)
        with pytest.raises(ValueError, match=r"not a growbatch checkpoint \(it holds a dict with keys \['weights'\]"):
            load_checkpoint(path)


class TestLock:
    def test_second_lock_is_refused(self, tmp_path):
        with RunLock(tmp_path):
            with pytest.raises(RuntimeError, match=rf"is in use by another growbatch run \(pid {os.getpid()}"):
                RunLock(tmp_path).acquire()
        assert not (tmp_path / LOCK_NAME).exists()

    def test_lock_of_a_dead_process_is_taken_over(self, tmp_path):
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        import socket
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
        with RunLock(tmp_path):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


    def test_lock_of_a_reused_pid_is_taken_over(self, tmp_path):
        """After a restart in a fresh container the old pid may belong to another process, even this one."""
        import socket
        stale = {"pid": os.getpid(), "host": socket.gethostname(), "started": "1"}
        (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
        with RunLock(tmp_path):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["started"] != "1"

    def test_lock_of_another_host_is_refused(self, tmp_path):
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "5"}))
        with pytest.raises(RuntimeError, match=r"is in use by another growbatch run \(pid 1 on elsewhere\); wait for "
                                               r"it to finish, choose another --out, or delete .*\.growbatch\.lock if"):
            RunLock(tmp_path).acquire()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "elsewhere"

    @pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"pid": "12"}'])
    def test_unreadable_lock_is_taken_over(self, tmp_path, content):
        (tmp_path / LOCK_NAME).write_text(content)
        with RunLock(tmp_path) as lock:
            assert lock.held and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert sorted(p.name for p in tmp_path.iterdir()) == []


class TestOutputDir:
    manifest = {"experiment": "compare", "dataset": "digits"}

    def test_new_directory(self, tmp_path):
        assert prepare_output_dir(tmp_path / "new", self.manifest, resume=False, force=False) is False

    def test_other_experiment_is_refused(self, tmp_path):
        (tmp_path / "experiment.json").write_text(json.dumps({"experiment": "paper-5.2", "dataset": "digits"}))
        with pytest.raises(ValueError, match=r"holds another experiment \(differs in: experiment\)"):
            prepare_output_dir(tmp_path, self.manifest, resume=True, force=False)

    def test_same_experiment_needs_resume(self, tmp_path):
        (tmp_path / "experiment.json").write_text(json.dumps(self.manifest))
        with pytest.raises(ValueError, match=r"already holds this experiment; pass --resume"):
            prepare_output_dir(tmp_path, self.manifest, resume=False, force=False)
        assert prepare_output_dir(tmp_path, self.manifest, resume=True, force=False) is True

    def test_foreign_files_are_refused(self, tmp_path):
        (tmp_path / "thesis.tex").write_text("precious")
        with pytest.raises(ValueError, match=r"is not empty and holds no growbatch experiment"):
            prepare_output_dir(tmp_path, self.manifest, resume=False, force=False)
        assert (tmp_path / "thesis.tex").read_text() == "precious"

    def test_out_is_a_file(self, tmp_path):
        (tmp_path / "f").write_text("x")
        with pytest.raises(ValueError, match=r"exists and is not a directory"):
            prepare_output_dir(tmp_path / "f", self.manifest, resume=False, force=False)
