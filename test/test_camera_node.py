"""The camera encoder through ROS: both encoders in one process, fed raw and compressed frames of real photos."""

from __future__ import annotations

import pathlib
import uuid

import cv2
import numpy as np
import pytest
import yaml
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.msg import SemanticTokens, Vocabulary
from parameter_calls import set_parameters
from sensor_msgs.msg import CompressedImage, Image
from test_vision_encoders import claiming

from conftest import Processes, finish
from edge_lam.assets.cache import skimage_photos_dir
from edge_lam.ros.bounds import DIAGNOSTICS_DEPTH
from edge_lam.ros.qos import TOKENS, VOCABULARIES
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
CATS = {"tabby", "tiger cat", "Egyptian cat"}


def photo(name: str) -> np.ndarray:
    """An RGB photo resized to a VGA camera frame."""
    (path,) = skimage_photos_dir().glob(f"{name}.*")
    return cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), (640, 480))


def raw(frame: np.ndarray, encoding: str = "rgb8", stamp_s: int = 0) -> Image:
    data = np.ascontiguousarray(frame[:, :, ::-1] if encoding == "bgr8" else frame)
    msg = Image(height=frame.shape[0], width=frame.shape[1], encoding=encoding, step=frame.shape[1] * 3)
    msg.header.stamp.sec = stamp_s
    msg.data = data.tobytes()
    return msg


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    processes = Processes()
    namespace = f"cam_{uuid.uuid4().hex[:8]}"
    params = tmp_path_factory.mktemp("camera") / "params.yaml"
    params.write_text(yaml.safe_dump({
        "/**/camera_classes": {"ros__parameters": {"encoder": "efficientnet_lite0", "reliable_input": True,
                                                   "embedding_dtype": "float16"}},
        "/**/camera_patches": {"ros__parameters": {"encoder": "patch_vq", "reliable_input": True}},
    }))
    process = processes.start(LIB / "compose", "camera_encoder:camera_classes", "camera_encoder:camera_patches",
                              "--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", str(params))
    client = RosClient("camera_test_client", namespace)
    vocabularies = client.collect(Vocabulary, "tokens/image/vocabulary", VOCABULARIES)
    tokens = client.collect(SemanticTokens, "tokens/image", TOKENS)
    logs = client.collect_logs()
    try:
        assert client.spin_until(lambda: len(vocabularies) == 2, 60), "the camera encoders published no vocabularies"

        def rejections() -> list[str]:
            """What the encoders refused so far, as they logged it."""
            return [log.msg for log in logs if log.name.startswith(namespace) and "rejected" in log.msg]

        yield client, tokens, {v.encoder: v for v in vocabularies}, process, rejections
    finally:
        client.close()
        processes.stop_all()


def by_encoder(tokens: list[SemanticTokens], encoder: str) -> list[SemanticTokens]:
    return [t for t in tokens if t.encoder == encoder]


def test_a_photo_gives_its_class_and_a_patch_grid_from_raw_and_compressed_frames(camera):
    client, tokens, vocabularies, _, _ = camera
    cat = photo("chelsea")
    raw_pub = client.publisher(Image, "image_raw", TOKENS)
    compressed_pub = client.publisher(CompressedImage, "image_raw/compressed", TOKENS)
    raw_pub.publish(raw(cat, "bgr8", stamp_s=1))
    # Two topics have no order between them: the compressed frame goes once the raw one is encoded.
    assert client.spin_until(lambda: len(tokens) >= 2, 60)
    jpeg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", cat[:, :, ::-1])[1].tobytes())
    jpeg.header.stamp.sec = 2
    compressed_pub.publish(jpeg)
    assert client.spin_until(lambda: len(tokens) >= 4, 60)
    classes = by_encoder(tokens, "efficientnet-lite0")
    patches = by_encoder(tokens, "patch-vq")
    assert [m.header.stamp.sec for m in classes] == [1, 2] and [m.seq for m in classes] == [0, 1]
    for msg in classes:
        names = [vocabularies["efficientnet-lite0"].words[i] for i in msg.token_ids]
        assert len(names) == 5 and CATS & set(names), names
        assert list(msg.embedding.shape) == [1, 1280] and msg.embedding.dtype == "float16"
        assert list(msg.scores) == sorted(msg.scores, reverse=True)
    assert [list(m.token_shape) for m in patches] == [[12, 16]] * 2
    assert max(patches[0].token_ids) < len(vocabularies["patch-vq"].words)


@pytest.mark.parametrize(("case", "reason"), [("unknown encoding", "yuv422"), ("truncated", "truncated"),
                                              ("zero size", "no pixels"), ("bad jpeg", "cannot decode"),
                                              ("longer", "longer than its rows"),
                                              ("png claiming 65535x65535", "max_image_pixels"),
                                              ("jpeg claiming 30000x30000", "max_image_pixels"),
                                              ("a format of a megabyte", "characters)")])
def test_bad_frames_are_logged_and_the_next_frame_still_encodes(camera, case, reason):
    """Crash 2 of the findings among them: a PNG whose header claims 65535x65535 ended the node; a JPEG claiming
    30000x30000 took gigabytes. Both are refused by their declared size, before decoding."""
    client, tokens, _, process, rejections = camera
    before, refused = len(tokens), len(rejections())
    frame = photo("coffee")
    bad = raw(frame)
    if case == "unknown encoding":
        bad.encoding = "yuv422"
    elif case == "truncated":
        bad.data = bytes(bad.data[: len(bad.data) // 2])
    elif case == "zero size":
        bad.height, bad.width, bad.step, bad.data = 0, 0, 0, b""
    elif case == "longer":
        bad.data = bytes(bad.data) + bytes(7)
    if case == "bad jpeg":
        publisher = client.publisher(CompressedImage, "image_raw/compressed", TOKENS)
        publisher.publish(CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg"))
    elif case == "a format of a megabyte":  # the reason quotes the format: the log line must not be a megabyte
        publisher = client.publisher(CompressedImage, "image_raw/compressed", TOKENS)
        publisher.publish(CompressedImage(format="jpeg" + "x" * 1_000_000, data=b"\xff\xd8 not a jpeg"))
    elif "claiming" in case:
        publisher = client.publisher(CompressedImage, "image_raw/compressed", TOKENS)
        size = (65535, 65535) if "png" in case else (30000, 30000)
        publisher.publish(CompressedImage(format=case[:4], data=claiming(size, ".png" if "png" in case else ".jpg")))
    else:
        client.publisher(Image, "image_raw", TOKENS).publish(bad)
    # Both encoders refuse the bad frame before the good one is sent: tokens of the bad one would come first.
    assert client.spin_until(lambda: len(rejections()) >= refused + 2, 60), "the bad frame was not refused"
    assert all(reason in line.lower() for line in rejections()[refused:]), rejections()[refused:]
    assert all(len(line) < 1000 for line in rejections()[refused:])
    good = raw(frame, stamp_s=77)
    client.publisher(Image, "image_raw", TOKENS).publish(good)
    assert client.spin_until(lambda: len(tokens) >= before + 2, 60)
    assert [m.header.stamp.sec for m in tokens[before:]] == [77, 77], "a bad frame produced tokens"
    assert process.poll() is None


def test_max_image_pixels_is_live(camera):
    """`ros2 param set` of max_image_pixels takes effect on the next frame; a value out of range is refused."""
    client, tokens, _, process, rejections = camera
    namespace = client.node.get_namespace()
    diagnostics = client.collect(DiagnosticArray, "/diagnostics", DIAGNOSTICS_DEPTH)
    refused = len(rejections())
    assert all(r.successful for r in set_parameters(client, f"{namespace}/camera_patches", max_image_pixels=1000))
    assert not set_parameters(client, f"{namespace}/camera_patches", max_image_pixels=0)[0].successful
    before = len(tokens)
    client.publisher(Image, "image_raw", TOKENS).publish(raw(photo("coffee"), stamp_s=88))
    assert client.spin_until(lambda: len(tokens) > before and len(rejections()) > refused, 60)
    assert "640x480 has more than max_image_pixels=1000" in rejections()[refused]
    assert all(r.successful for r in set_parameters(client, f"{namespace}/camera_patches",
                                                     max_image_pixels=4096 * 4096))
    client.publisher(Image, "image_raw", TOKENS).publish(raw(photo("coffee"), stamp_s=89))
    assert client.spin_until(lambda: len(by_encoder(tokens[before:], "patch-vq")) == 1, 60)
    assert [m.header.stamp.sec for m in by_encoder(tokens[before:], "patch-vq")] == [89]
    assert [m.header.stamp.sec for m in by_encoder(tokens[before:], "efficientnet-lite0")][:1] == [88]
    # the node's diagnostics show how close frames come to the bound
    assert client.spin_until(lambda: bound_shown(diagnostics, f"{namespace}/camera_patches", "image_pixels",
                                                 f"{640 * 480} / {4096 * 4096}"), 30)
    assert process.poll() is None


def bound_shown(diagnostics: list[DiagnosticArray], node: str, key: str, value: str) -> bool:
    return any(status.name == f"{node}: bounds" and any(kv.key == key and kv.value == value for kv in status.values)
               for array in diagnostics for status in array.status)


def test_rejections_are_in_the_log(camera):
    _, _, _, process, _ = camera
    process.send_signal(2)
    _, output = finish(process, timeout_s=15)
    for reason in ("yuv422", "truncated", "no pixels", "cannot decode", "max_image_pixels"):
        assert reason in output.lower(), f"no log line about {reason}:\n{output[-3000:]}"
