"""CLI: class names in --labels, default output inside the run dir, --help describes everything."""
from __future__ import annotations

import json
import re

import pytest
import torch

from vqgen import GenerationPipeline
from vqgen.cli import _labels, build_parser, main
from vqgen.priors.pixelcnn import pixelcnn_debug
from vqgen.tokenizers.image import image_tokenizer_debug

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress"]


@pytest.fixture()
def run(tmp_path):
    torch.manual_seed(0)
    tok = image_tokenizer_debug(in_channels=1).eval()
    prior = pixelcnn_debug(codebook_size=tok.codebook_size, code_shape=(4, 4), num_classes=4)
    GenerationPipeline(tok, prior.eval(), id2label=NAMES).save_pretrained(tmp_path / "run")
    return tmp_path / "run"


def test_labels_option_mixes_ids_and_names():
    assert _labels("Dress,3") == ["Dress", 3] and _labels("3") == 3 and _labels(None) is None
    assert _labels(" T-shirt/top ") == "T-shirt/top"
    with pytest.raises(ValueError, match="--labels"):
        _labels(",")


def test_generate_by_name_into_the_run_dir_and_report_shows_it(run, capsys):
    assert main(["generate", str(run), "--n", "4", "--labels", "Dress,3,Dress,Trouser",
                 "--seed", "0"]) == 0
    out = run / "samples" / "generated"
    assert len(list(out.glob("*.png"))) == 5
    assert "Dress, Trouser" in json.loads((out / "grid.json").read_text())["caption"]
    assert main(["generate", str(run), "--n", "2", "--labels", "Dres"]) == 2
    assert "unknown class name 'Dres'" in capsys.readouterr().err
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "4 samples of classes Dress, Trouser" in page and "classes: <b>0</b> T-shirt/top" in page


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_help_describes_every_option_and_lists_presets():
    parsers = dict(_subparsers(build_parser()))
    assert {"train tokenizer", "train prior", "generate", "evaluate", "encode", "decode",
            "report", "data prepare"} <= set(parsers)
    for name, sub in parsers.items():
        for action in sub._actions:
            if action.__class__.__name__ in ("_SubParsersAction", "_HelpAction"):
                continue
            assert action.help, f"vqgen {name}: {action.dest} has no help"
    help_text = parsers["train tokenizer"].format_help()
    assert re.search(r"image_tokenizer_28x28_gray,\s+image_tokenizer_32x32_rgb", help_text)
    assert "hidden=32 num_layers=2" in parsers["train prior"].format_help()
