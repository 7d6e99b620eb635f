"""Serve a base policy over websockets (openpi wire protocol + steering noise).

Examples:
  # Pi0-DROID on a GPU box, reachable from the robot computer (bind all interfaces, require a key):
  DSRL_SERVER_API_KEY=... python scripts/serve_policy.py --policy pi0 --robot droid \
      --pi0_checkpoint gs://openpi-assets/checkpoints/pi0_droid --host 0.0.0.0 --port 8000
  # The embedded demo's flow policy on loopback (tests, benchmarks):
  python scripts/serve_policy.py --policy flow_demo --port 0
  # Pi0's real pipeline at toy size (random Pi0Config.tiny(), throwaway tokenizer):
  python scripts/serve_policy.py --policy pi0_tiny --robot droid --port 0
  # A randomly initialised flow MLP (smoke tests, benchmarks; no asset needed, seeded):
  python scripts/serve_policy.py --policy flow_random --seed 0 --port 0

Limits (docs/real_robot.md, "Limits and abuse"): frames over --max_request_mb, --max_items,
--max_depth or --max_str_kb get an error reply; `infer_batch` takes at most --max_batch
observations, padded to one of --batch_sizes, all compiled before the port is bound (on a warm-up
observation built from --robot / the flow policy's state) so nothing compiles while serving;
--max_connections, --idle_timeout_s, --ping_interval_s, --open_timeout_s and --auth_failure_delay_s
bound what idle or hostile clients can hold.

Clients: `dsrl.base_policies.remote.RemotePolicy(host, port)` (what `--pi0_remote host:port`
uses) or the unmodified `openpi_client.websocket_client_policy.WebsocketClientPolicy`, with the
noise as `obs["noise"]` (H, 32). The first line on stdout is `serving <policy> on ws://host:port`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_tiny_pi0(robot: str = "droid", seed: int = 0):
    """A randomly initialised `Pi0Config.tiny()` policy with a throwaway SentencePiece tokenizer
    and unit norm stats: the real Pi0 pipeline at toy size, for smoke tests and benchmarks."""

    import numpy as np
    import sentencepiece as spm

    from dsrl.base_policies.pi0 import Pi0Config, Pi0Policy
    from dsrl.base_policies.pi0.model import Pi0
    from dsrl.base_policies.pi0.normalize import NormStats
    from dsrl.base_policies.pi0.tokenizer import PaligemmaTokenizer, train_sentencepiece_model

    corpus = ["put the spoon on the plate", "pick up the cream cheese", "transfer cube"] * 40
    model_proto = train_sentencepiece_model(corpus, vocab_size=48)
    config = Pi0Config.tiny()
    tokenizer = PaligemmaTokenizer(
        spm.SentencePieceProcessor(model_proto=model_proto), max_len=config.max_token_len
    )
    unit = NormStats(mean=np.zeros(32), std=np.ones(32))
    model = Pi0.create(config, params=None, seed=seed)
    return Pi0Policy(model, tokenizer, {"state": unit, "actions": unit}, robot=robot)


def warmup_observation(args: argparse.Namespace, policy) -> dict:
    """One unbatched observation of the served robot's format, for start-up compilation. Image
    sizes do not matter (Pi0 resizes to its resolution and masks absent cameras), so zeros at
    224x224 compile exactly what real observations use."""
    import numpy as np

    if args.policy.startswith("flow"):
        return {policy.config.state_key: np.zeros(policy.config.state_dim, np.float32)}
    image = np.zeros((224, 224, 3), np.uint8)
    prompt = "pick up"  # short: toy tokenizers have max_len 16
    if args.robot == "libero":
        return {
            "observation/image": image,
            "observation/wrist_image": image,
            "observation/state": np.zeros(8, np.float32),
            "prompt": prompt,
        }
    if args.robot == "aloha":
        return {
            "cam_high": image,
            "cam_left_wrist": image,
            "cam_right_wrist": image,
            "state": np.zeros(14, np.float32),
            "prompt": prompt,
        }
    return {
        "observation/exterior_image_1_left": image,
        "observation/exterior_image_2_left": image,
        "observation/wrist_image_left": image,
        "observation/joint_position": np.zeros(7, np.float32),
        "observation/gripper_position": np.zeros(1, np.float32),
        "prompt": prompt,
    }


def build_policy(args: argparse.Namespace):
    if args.policy == "flow_demo":
        from dsrl.base_policies.flow_mlp import FlowMLPPolicy

        return FlowMLPPolicy.load(args.flow_dir) if args.flow_dir else FlowMLPPolicy.load_demo()
    if args.policy == "flow_random":
        from dsrl.base_policies.flow_mlp import FlowMLPConfig, FlowMLPPolicy, init_params

        config = FlowMLPConfig()
        return FlowMLPPolicy(config, init_params(config, args.seed))
    if args.policy == "pi0_tiny":
        return build_tiny_pi0(args.robot, args.seed)
    if args.policy == "pi0":
        if not args.pi0_checkpoint:
            sys.exit("--policy pi0 needs --pi0_checkpoint <dir or gs:// url>")
        try:
            from dsrl.base_policies.pi0 import Pi0Policy
        except ImportError as e:
            sys.exit(f"cannot import dsrl.base_policies.pi0.Pi0Policy: {e}")
        return Pi0Policy.from_checkpoint(
            args.pi0_checkpoint,
            robot=args.robot,
            variant=args.pi0_variant,
            dtype=args.dtype,
            tokenizer_path=args.tokenizer_path,
        )
    raise ValueError(f"unknown --policy {args.policy!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--policy", choices=["pi0", "pi0_tiny", "flow_demo", "flow_random"], default="pi0"
    )
    p.add_argument("--pi0_checkpoint", default=None, help="checkpoint dir or gs:// url")
    p.add_argument("--pi0_variant", default="full", help="full | dummy | tiny (Pi0Config name)")
    p.add_argument("--robot", choices=["libero", "aloha", "droid"], default="droid")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--flow_dir", default=None, help="flow policy dir (default: shipped demo)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind; 0.0.0.0 exposes the server to the network (set an API key)",
    )
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument(
        "--api_key",
        default=None,
        help="require this key (default: $DSRL_SERVER_API_KEY; unset = no auth)",
    )
    p.add_argument("--workers", type=int, default=1, help="inference threads")
    p.add_argument(
        "--max_request_mb",
        type=float,
        default=16.0,
        help="larger frames get an error reply; over twice this the connection is closed "
        "(16 MB: a batch of 16 observations with three 224x224 images is 7.3 MB)",
    )
    p.add_argument(
        "--max_items",
        type=int,
        default=100_000,
        help="list elements + map entries per frame (arrays count as one item)",
    )
    p.add_argument("--max_depth", type=int, default=16, help="nesting of lists/maps per frame")
    p.add_argument("--max_str_kb", type=float, default=64.0, help="longest string in a frame")
    p.add_argument(
        "--max_batch",
        type=int,
        default=16,
        help="largest infer_batch; batches are padded to 1, 2, 4, ... max_batch",
    )
    p.add_argument(
        "--batch_sizes",
        default=None,
        help="comma-separated padded batch sizes compiled at start-up (overrides --max_batch)",
    )
    p.add_argument(
        "--no_warmup",
        action="store_true",
        help="skip start-up compilation (each batch size then compiles on its first request)",
    )
    p.add_argument(
        "--max_connections",
        type=int,
        default=64,
        help="open websocket connections; at the cap a new client evicts the longest-idle one",
    )
    p.add_argument(
        "--idle_timeout_s",
        type=float,
        default=600.0,
        help="close a connection without a request for this long (0 = never)",
    )
    p.add_argument(
        "--open_timeout_s", type=float, default=10.0, help="deadline for the websocket handshake"
    )
    p.add_argument(
        "--auth_failure_delay_s",
        type=float,
        default=1.0,
        help="a wrong API key is answered (401) after this delay; only that handshake waits, "
        "a correct key is never delayed or refused",
    )
    p.add_argument(
        "--ping_interval_s",
        type=float,
        default=10.0,
        help="keep-alive pings: a client that answers none within this is closed as dead "
        "(0 = no pings)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of flow_random's params and of the noise drawn when none is sent",
    )
    args = p.parse_args(argv)
    if not args.host.strip():
        p.error(
            "--host '' would bind every IPv4 and IPv6 interface (on different ports with --port "
            "0); pass --host 127.0.0.1 (this machine) or --host 0.0.0.0 (all IPv4, set a key)"
        )
    if args.port < 0 or args.port > 65535:
        p.error(f"--port {args.port} is not a TCP port (0-65535)")
    if args.workers < 1 or args.max_request_mb <= 0:
        p.error("--workers must be >= 1 and --max_request_mb > 0")
    for name in ("max_items", "max_depth", "max_batch", "max_connections"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_str_kb <= 0 or args.open_timeout_s <= 0:
        p.error("--max_str_kb and --open_timeout_s must be > 0")
    if args.idle_timeout_s < 0 or not 0 <= args.auth_failure_delay_s < args.open_timeout_s:
        p.error(
            "--idle_timeout_s must be >= 0 (0 = never) and --auth_failure_delay_s in "
            "[0, --open_timeout_s)"
        )
    if args.ping_interval_s < 0:
        p.error(f"--ping_interval_s must be >= 0 (0 = no pings), got {args.ping_interval_s}")
    if args.batch_sizes is not None:
        try:
            sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1:
            p.error(f"--batch_sizes {args.batch_sizes!r} must be positive ints such as 1,4,8")
        args.batch_sizes = sizes
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # websockets logs a line per connection opened or refused: a connection flood would become a
    # log flood (and event-loop time). Counters are at GET /stats.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    from dsrl.serving import API_KEY_ENV, PolicyServer

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.warning(
            "binding %s without an API key: anyone who can reach this port can query the policy "
            "(set --api_key or $%s)",
            args.host,
            API_KEY_ENV,
        )
    policy = build_policy(args)
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_items=args.max_items,
        max_depth=args.max_depth,
        max_str_bytes=int(args.max_str_kb * 1024),
        max_batch=args.max_batch,
        batch_sizes=args.batch_sizes,
        warmup_observation=None if args.no_warmup else warmup_observation(args, policy),
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout_s,
        open_timeout_s=args.open_timeout_s,
        auth_failure_delay_s=args.auth_failure_delay_s,
        ping_interval_s=args.ping_interval_s,
        num_workers=args.workers,
        seed=args.seed,
    )
    server.start()
    print(f"serving {type(policy).__name__} on ws://{args.host}:{server.port}", flush=True)
    try:
        server.wait()  # serve until interrupted
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
