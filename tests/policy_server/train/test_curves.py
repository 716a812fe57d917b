"""Learning curves: TensorBoard event files in, `{tag: [(step, value)]}` out, also through an object store."""

from __future__ import annotations

from pathlib import Path

import fsspec

from policy_server.train import curves


def test_curves_read_back_by_tag_and_step(tmp_path: Path) -> None:
    writer = curves.CurveWriter(str(tmp_path / "tb"))
    for step in (10, 20, 30):
        writer.scalars(step, {"loss/td": 1.0 / step, "lambda/heat": step / 10})
    writer.close()
    read = curves.read_curves(tmp_path / "tb")
    assert read["lambda/heat"] == [(10, 1.0), (20, 2.0), (30, 3.0)]
    assert [s for s, _ in read["loss/td"]] == [10, 20, 30]


def test_a_resumed_writer_supersedes_the_steps_after_its_checkpoint(tmp_path: Path) -> None:
    first = curves.CurveWriter(str(tmp_path / "tb"))
    first.scalars(10, {"q": 1.0})
    first.scalars(20, {"q": 2.0})  # logged after the checkpoint at 10, then the process was killed
    first.close()
    resumed = curves.CurveWriter(str(tmp_path / "tb"), purge_step=10)
    resumed.scalars(20, {"q": 2.5})
    resumed.scalars(30, {"q": 3.0})
    resumed.close()
    assert curves.read_curves(tmp_path / "tb")["q"] == [(10, 1.0), (20, 2.5), (30, 3.0)]


def test_curves_for_an_object_store_are_copied_there(tmp_path: Path) -> None:
    url = "memory://policy-curves-test/run-1"
    writer = curves.CurveWriter(url)
    writer.scalars(5, {"lambda/heat": 0.5})
    writer.sync()
    fs, root = fsspec.core.url_to_fs(url)
    assert fs.ls(root, detail=False)  # there before the end: a killed pod keeps its curves up to here
    writer.scalars(6, {"lambda/heat": 0.75})
    writer.close()
    fs.get(f"{root}/", str(tmp_path / "copy") + "/", recursive=True)
    assert curves.read_curves(tmp_path / "copy")["lambda/heat"] == [(5, 0.5), (6, 0.75)]  # float32 in the event files
