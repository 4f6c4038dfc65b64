"""The demo's graph as plain values: which hosts, which bags, and the command line of every process it starts.

The commands are what ``launch/demo.launch.py`` starts on a ROS install: installed executables (the ``ros2 run``
way), parameters from ``config/demo.yaml``, and ``-p`` overrides for what differs per host. Robot nodes live in the
robot's namespace (``/<robot_id>/tokens/<modality>``, ``/<robot_id>/reports``), each host agent in its host's, and
the model's chain, the coordinator and the gateway in the fleet's (``/edge_lam``).

Each sensor stream has a transport (``edge_lam.fleet.transport``): ``tokens`` runs its encoder on the robot, ``raw``
on the gateway's host (still in the robot's namespace, reading the robot's sensor topic: the sensor messages cross
the link, the tokens come back to the reporter), ``auto`` picks one of the two from the hosts' adverts once they are
in (``resolve_transports``).

With the fleet's fine-tuned adapter (``adapter``, ``edge-lam demo --adapter``), every host agent hands it to the
shards it loads as ``fleet`` and the reporter asks with it; ``training_processes`` are the collaborative
fine-tuning's that make it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge_lam.descriptors import Advert
from edge_lam.fleet.transport import DEFAULT_PROFILES, SERVED, TRANSPORTS, Decision, choose_from_adverts

__all__ = [
    "SENSOR_TYPES",
    "DemoConfig",
    "HostSpec",
    "ProcessSpec",
    "SensorTopic",
    "bag_sensors",
    "demo_processes",
    "encoder_processes",
    "fleet_processes",
    "replay_processes",
    "resolve_transports",
    "training_processes",
]

FLEET_NAMESPACE = "/edge_lam"
FLEET_ADAPTER = "fleet"  # the shards' name of the fleet's fine-tuned adapter, which requests name
TRAINING_NAMESPACE = "/fleet_training"  # where the fine-tuning's trainers meet
TRAINING_ROBOTS = 2
EMPTY = "''"  # an empty string parameter on the command line (`-p name:=` alone does not parse)
# Bag message types an encoder of the demo turns into tokens: type -> (modality, encoder executable).
SENSOR_TYPES = {
    "sensor_msgs/msg/CompressedImage": ("image", "camera_encoder"),
    "sensor_msgs/msg/Image": ("image", "camera_encoder"),
    "nav_msgs/msg/Odometry": ("odometry", "odometry_encoder"),
    "sensor_msgs/msg/LaserScan": ("scan", "scan_encoder"),
    "sensor_msgs/msg/Imu": ("imu", "imu_encoder"),
}


@dataclass(frozen=True)
class HostSpec:
    """One emulated host: ``NAME:ROLE:COMPUTE_SCALE:MEMORY_MIB`` on the command line."""

    host_id: str
    role: str
    compute_scale: float
    memory_mib: int

    @staticmethod
    def parse(text: str) -> HostSpec:
        parts = text.split(":")
        if len(parts) != 4 or not parts[0] or parts[1] not in ("robot", "edge", "cloud"):
            raise ValueError(f"host '{text}': expected NAME:ROLE:COMPUTE_SCALE:MEMORY_MIB with ROLE robot, edge or "
                             "cloud, e.g. robot:robot:0.5:320")
        try:
            scale, memory = float(parts[2]), int(parts[3])
        except ValueError:
            raise ValueError(f"host '{text}': COMPUTE_SCALE must be a number and MEMORY_MIB an integer") from None
        if scale <= 0 or memory <= 0:
            raise ValueError(f"host '{text}': COMPUTE_SCALE and MEMORY_MIB must be positive")
        return HostSpec(parts[0], parts[1], scale, memory)


@dataclass(frozen=True)
class SensorTopic:
    """A sensor topic of a bag that an encoder of the demo reads."""

    bag: pathlib.Path
    topic: str
    msgtype: str
    bag_duration_s: float

    @property
    def modality(self) -> str:
        return SENSOR_TYPES[self.msgtype][0]

    @property
    def encoder(self) -> str:
        return SENSOR_TYPES[self.msgtype][1]


@dataclass(frozen=True)
class DemoConfig:
    robot_id: str
    hosts: tuple[HostSpec, ...]
    model: str
    sensors: tuple[SensorTopic, ...]
    period_s: float
    max_new_tokens: int
    start_offset_s: float
    params_file: pathlib.Path
    # Folder with NAME.key and NAME.pub of every host: trust on, each host signing with its own key (the
    # coordinator and the gateway with the gateway host's). None: trust off.
    keys_dir: pathlib.Path | None = None
    # Per modality: auto, raw or tokens (edge_lam.fleet.transport); a modality not named keeps tokens.
    transports: Mapping[str, str] = field(default_factory=dict)
    # The fleet's fine-tuned LoRA adapter every shard serves and the reports are asked with; None: the base model.
    adapter: pathlib.Path | None = None

    def __post_init__(self) -> None:
        ids = [h.host_id for h in self.hosts]
        if len(self.hosts) < 1 or len(set(ids)) != len(ids):
            raise ValueError(f"hosts need distinct names, got {ids}")
        if not any(h.role != "robot" for h in self.hosts):
            raise ValueError("the gateway and the coordinator need a host that is not a robot (role edge or cloud)")
        if not self.sensors:
            raise ValueError("the bags hold no sensor topic an encoder reads (" + ", ".join(SENSOR_TYPES) + ")")
        for modality, transport in self.transports.items():
            if modality not in self.modalities:
                raise ValueError(f"transport for '{modality}': the bags hold no such stream ({self.modalities})")
            if transport not in TRANSPORTS:
                raise ValueError(f"transport for '{modality}' must be one of {', '.join(TRANSPORTS)}, "
                                 f"not '{transport}'")
            if transport != "auto" and transport not in SERVED:
                raise ValueError(f"transport {transport} for '{modality}' is counted (bench/transport.py) but not "
                                 "served: the chain's prompt takes no projector input yet")

    @property
    def gateway_host(self) -> str:
        return next(h.host_id for h in self.hosts if h.role != "robot")

    @property
    def robot_host(self) -> str:
        """Where the robot's own processes run (encoders, reporter, bag replays): the first robot host, or the
        gateway's host when no host is a robot."""
        return next((h.host_id for h in self.hosts if h.role == "robot"), self.gateway_host)

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.sensors})

    def transport(self, modality: str) -> str:
        return self.transports.get(modality, "tokens")

    @property
    def needs_adverts(self) -> bool:
        """Whether a transport is ``auto``: then the encoders start once the hosts' adverts are in."""
        return any(self.transport(m) == "auto" for m in self.modalities)

    def trust(self, host_id: str) -> list[str]:
        """The trust parameters of a node on ``host_id`` (none with trust off)."""
        if self.keys_dir is None:
            return []
        return [f"signing_key:={self.keys_dir / f'{host_id}.key'}", f"trusted_keys:={self.keys_dir}"]

    def robot_topic(self, topic: str) -> str:
        """Where a bag topic is replayed: under the robot's namespace, as a robot's driver would publish it."""
        return f"/{self.robot_id}/{topic.lstrip('/')}"


@dataclass(frozen=True)
class ProcessSpec:
    """A process of the demo and the host it belongs to (its network namespace when the hosts are emulated)."""

    name: str
    argv: tuple[str, ...]
    host: str


def bag_sensors(bag: pathlib.Path) -> list[SensorTopic]:
    """The topics of ``bag`` whose type an encoder of the demo reads."""
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        duration_s = (reader.end_time - reader.start_time) / 1e9
        return [SensorTopic(bag, c.topic, c.msgtype, duration_s)
                for c in reader.connections if c.msgtype in SENSOR_TYPES]


def _ros_args(name: str, namespace: str, params_file: pathlib.Path, *params: str) -> list[str]:
    args = ["--ros-args", "-r", f"__node:={name}", "-r", f"__ns:={namespace}", "--params-file", str(params_file)]
    for param in params:
        args += ["-p", param]
    return args


def demo_processes(config: DemoConfig, lib: pathlib.Path) -> list[ProcessSpec]:
    """Host agents, coordinator, gateway, the encoders the bags need, and the reporter (bag replays start later);
    every transport must be decided (not ``auto``)."""
    return fleet_processes(config, lib) + encoder_processes(config, lib, {m: config.transport(m)
                                                                          for m in config.modalities})


def fleet_processes(config: DemoConfig, lib: pathlib.Path) -> list[ProcessSpec]:
    """Host agents, coordinator, gateway and the reporter: what runs whatever the transports."""
    ns, robot_ns = FLEET_NAMESPACE, f"/{config.robot_id}"
    served = [f"adapters:=[{FLEET_ADAPTER}={config.adapter}]"] if config.adapter else []  # to every shard loaded
    asked = [f"adapter:={FLEET_ADAPTER}"] if config.adapter else []
    specs = []
    for host in config.hosts:
        specs.append(ProcessSpec(f"host_agent[{host.host_id}]", (str(lib / "host_agent"), *_ros_args(
            "host_agent", f"/{host.host_id}", config.params_file, f"host_id:={host.host_id}", f"role:={host.role}",
            f"compute_scale:={host.compute_scale}", f"memory_limit_bytes:={host.memory_mib * 2**20}",
            f"model:={config.model}", f"components_namespace:={ns}", *config.trust(host.host_id),
            *served)), host.host_id))
    gateway_trust = config.trust(config.gateway_host)
    specs.append(ProcessSpec("coordinator", (str(lib / "coordinator"), *_ros_args(
        "coordinator", ns, config.params_file, f"model:={config.model}", f"gateway_host:={config.gateway_host}",
        *gateway_trust)), config.gateway_host))
    specs.append(ProcessSpec("gateway", (str(lib / "gateway"), *_ros_args(
        "gateway", ns, config.params_file, f"model:={config.model}", *gateway_trust)), config.gateway_host))
    specs.append(ProcessSpec("reporter", (str(lib / "reporter"), *_ros_args(
        "reporter", robot_ns, config.params_file, f"modalities:=[{','.join(config.modalities)}]",
        f"period_s:={config.period_s}", f"max_new_tokens:={config.max_new_tokens}",
        f"requests_topic:={ns}/requests", f"results_topic:={ns}/results", *asked)),
        config.robot_host))
    return specs


def encoder_processes(config: DemoConfig, lib: pathlib.Path, transports: Mapping[str, str]) -> list[ProcessSpec]:
    """The encoder of each sensor topic, in the robot's namespace, on the robot's host for ``tokens`` and on the
    gateway's for ``raw`` (which then sends its tokens to the reporter without the embedding nobody there reads)."""
    robot_ns = f"/{config.robot_id}"
    specs = []
    for sensor in config.sensors:
        transport = transports[sensor.modality]
        if transport not in SERVED:
            raise ValueError(f"transport of '{sensor.modality}' is '{transport}': decide it first (raw or tokens)")
        params = [f"robot_id:={config.robot_id}", f"sensor:={sensor.topic.strip('/').split('/')[0]}"]
        argv = [str(lib / sensor.encoder)]
        relative = sensor.topic.lstrip("/")
        if sensor.encoder == "camera_encoder":
            compressed = sensor.msgtype.endswith("CompressedImage")
            params += [f"compressed_topic:={relative if compressed else EMPTY}",
                       f"image_topic:={EMPTY if compressed else relative}"]
            if transport == "raw":
                params.append("embedding_dtype:=none")
            argv += _ros_args("camera_encoder", robot_ns, config.params_file, *params)
        else:  # motion and scan encoders read a fixed relative name: remap it to the bag's topic
            default = {"odometry": "odom", "scan": "scan", "imu": "imu"}[sensor.modality]
            argv += [*_ros_args(sensor.encoder, robot_ns, config.params_file, *params), "-r", f"{default}:={relative}"]
        host = config.gateway_host if transport == "raw" else config.robot_host
        specs.append(ProcessSpec(f"{sensor.encoder}[{sensor.topic}]", tuple(argv), host))
    return specs


def resolve_transports(config: DemoConfig, adverts: Mapping[str, Advert]) -> dict[str, Decision]:
    """Each modality's transport: as configured, or for ``auto`` the chooser's pick from the robot's and the
    gateway host's adverts with the measured stream profiles (tokens for a stream no profile was measured for)."""
    decisions = {}
    robot, edge = adverts.get(config.robot_host), adverts.get(config.gateway_host)
    for modality in config.modalities:
        transport = config.transport(modality)
        profile = DEFAULT_PROFILES.get(modality)
        if transport != "auto":
            given = "set on the command line" if modality in config.transports else "the default"
            decisions[modality] = Decision(modality, transport, given, {}, {}, {})
        elif profile is None or robot is None or edge is None or robot.host_id == edge.host_id:
            why = "no measured profile" if profile is None else "no robot and edge adverts to compare"
            decisions[modality] = Decision(modality, "tokens", f"{why}: tokens", {}, {}, {})
        else:
            decisions[modality] = choose_from_adverts(profile, robot, edge, period_s=config.period_s)
    return decisions


def replay_processes(config: DemoConfig, lib: pathlib.Path) -> list[ProcessSpec]:
    """One looping replay per bag, of its sensor topics, remapped under the robot's namespace. The start offset
    applies to the bags longer than it; shorter ones (a few seconds of camera) play from their start."""
    by_bag: dict[pathlib.Path, list[SensorTopic]] = {}
    for sensor in config.sensors:
        by_bag.setdefault(sensor.bag, []).append(sensor)
    specs = []
    for bag, sensors in by_bag.items():
        offset = config.start_offset_s if config.start_offset_s < sensors[0].bag_duration_s else 0.0
        argv = [str(lib / "edge-lam"), "replay", str(bag), "--loop", "--start-offset", str(offset),
                "--wait-subscribers", "1", "--topics", *(s.topic for s in sensors)]
        for sensor in sensors:
            argv += ["--remap", f"{sensor.topic}:={config.robot_topic(sensor.topic)}"]
        # a node name per bag: two replays both named /bag_replay would clash in the graph
        name = "_".join(dict.fromkeys(s.modality for s in sensors)) + "_replay"
        argv += ["--ros-args", "-r", f"__node:={name}"]
        specs.append(ProcessSpec(f"replay[{bag.name}]", tuple(argv), config.robot_host))
    return specs


def training_processes(config: DemoConfig, lib: pathlib.Path, adapter: pathlib.Path,
                       ledger_dir: pathlib.Path) -> list[ProcessSpec]:
    """The collaborative fine-tuning that makes the fleet's adapter: the edge trainer on the gateway's host (writing
    the final adapter of both halves to ``adapter``) and robot trainers on the robot's, each training on its own
    share of the domain set (doc/training.md)."""
    specs = [ProcessSpec("edge_trainer", (str(lib / "edge_trainer"), *_ros_args(
        "edge_trainer", TRAINING_NAMESPACE, config.params_file, f"model:={config.model}",
        f"min_robots:={TRAINING_ROBOTS}", f"adapter_path:={adapter}", f"ledger_path:={ledger_dir / 'edge.json'}")),
        config.gateway_host)]
    for index in range(TRAINING_ROBOTS):
        name = f"robot_{index}"
        specs.append(ProcessSpec(f"robot_trainer[{name}]", (str(lib / "robot_trainer"), *_ros_args(
            name, TRAINING_NAMESPACE, config.params_file, f"model:={config.model}", f"robots:={TRAINING_ROBOTS}",
            f"robot_index:={index}", f"ledger_path:={ledger_dir / f'{name}.json'}")), config.robot_host))
    return specs
