"""The DVC cache can't be corrupted by editing a workspace output in place.

With the repository's real ``.dvc/config`` (``cache.type``), a stage writes a file and a model-like
folder, a second stage copies the file byte for byte (as the LMSI refine step does: both outputs
are one cache object). Appending a line to the outputs in place (as root does despite DVC's
read-only bits) must leave every cache object's content hashing to its name and the other output
untouched, and ``dvc status`` must report the edited outputs as modified.

The second test is the control: with the old ``reflink,hardlink,copy`` the same edit does write
through to the cache object and the copy (what issue 11 measured), so the first test can fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from tinyproject import ROOT, dvc, git, project_env, run

STAGES = {
    "stages": {
        "make": {
            "cmd": "python -c \"import pathlib; pathlib.Path('model').mkdir(exist_ok=True); "
            "pathlib.Path('a.jsonl').write_text('{\\\"q\\\": 1}\\n'); "
            "pathlib.Path('model/w.bin').write_bytes(bytes(range(256)) * 64)\"",
            "outs": ["a.jsonl", "model"],
        },
        "copy": {"cmd": "cp a.jsonl b.jsonl", "deps": ["a.jsonl"], "outs": ["b.jsonl"]},
    }
}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cache_file(proj: Path, digest: str) -> Path:
    return proj / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]


def cache_objects(proj: Path) -> dict[str, Path]:
    """{workspace path: its cache object} for every file of every output in dvc.lock."""
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    objects = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["md5"].endswith(".dir"):
                for entry in json.loads(cache_file(proj, out["md5"]).read_text()):
                    objects[f"{out['path']}/{entry['relpath']}"] = cache_file(proj, entry["md5"])
            else:
                objects[out["path"]] = cache_file(proj, out["md5"])
    return objects


def project(tmp_path: Path, cache_type: str | None = None) -> tuple[Path, dict]:
    """A git + DVC project with the two stages and the repository's .dvc/config (its remote
    points next to the temp folder and is never used); ``cache_type`` overrides cache.type."""
    proj = tmp_path / "proj"
    proj.mkdir()
    env = project_env(proj)
    run(["git", "init", "-q"], proj, env)
    run(dvc("init", "-q"), proj, env)
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    if cache_type is not None:
        run(dvc("config", "cache.type", cache_type), proj, env)
    (proj / "dvc.yaml").write_text(yaml.safe_dump(STAGES, sort_keys=False))
    run(dvc("repro", "-q"), proj, env)
    run(["git", "add", "-A"], proj, env)
    run(git("commit", "-q", "-m", "init"), proj, env)
    return proj, env


def append_in_place(path: Path, data: bytes) -> None:
    """What root (or a user after ``chmod u+w``) does: write into the existing inode."""
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    with open(path, "ab") as f:
        f.write(data)


def test_editing_an_output_in_place_leaves_the_cache_intact(tmp_path):
    proj, env = project(tmp_path)
    objects = cache_objects(proj)
    assert set(objects) == {"a.jsonl", "b.jsonl", "model/w.bin"}
    assert objects["a.jsonl"] == objects["b.jsonl"]  # one object, as samples/refined.jsonl
    b_before = (proj / "b.jsonl").read_bytes()

    append_in_place(proj / "a.jsonl", b'{"q": 2}\n')
    append_in_place(proj / "model" / "w.bin", b"\0")

    for path, obj in objects.items():
        assert obj.is_file(), path
        assert md5(obj) == obj.parent.name + obj.name, f"cache object of {path} was changed"
    assert (proj / "b.jsonl").read_bytes() == b_before  # the other output is untouched
    assert md5(proj / "b.jsonl") == md5(objects["b.jsonl"])

    status = json.loads(run(dvc("status", "--json"), proj, env).stdout)
    assert status["make"] == [{"changed outs": {"a.jsonl": "modified", "model": "modified"}}]
    assert status["copy"] == [{"changed deps": {"a.jsonl": "modified"}}]

    # and the cache still restores what the commit recorded
    run(dvc("checkout", "-q", "--force"), proj, env)
    assert md5(proj / "a.jsonl") == md5(objects["a.jsonl"])
    assert json.loads(run(dvc("status", "--json"), proj, env).stdout) == {}


def test_control_a_hardlinked_cache_is_corrupted_by_the_same_edit(tmp_path):
    proj, env = project(tmp_path, cache_type="reflink,hardlink,copy")
    objects = cache_objects(proj)
    if os.stat(proj / "a.jsonl").st_nlink == 1:
        pytest.skip("this DVC did not hardlink the output; nothing to corrupt")
    append_in_place(proj / "a.jsonl", b'{"q": 2}\n')
    obj = objects["a.jsonl"]
    assert md5(obj) != obj.parent.name + obj.name  # the object no longer matches its name
    assert (proj / "b.jsonl").read_bytes() == (proj / "a.jsonl").read_bytes()  # b changed too
