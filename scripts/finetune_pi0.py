"""Fine-tune Pi0 / Pi0.5 in JAX on demonstrations; writes openpi-layout checkpoints.

  python scripts/finetune_pi0.py --data demos.npz --init random --variant tiny \
      --tokenizer tok.model --steps 200 --batch 8 --out runs/ft
  python scripts/finetune_pi0.py --dry_run --variant full      # bytes for a GPU, no weights

Data: an .npz (`training.data.NpzDataset`: images/<camera> uint8, state, actions chunks,
prompt), or with --dataset a LeRobot v2 dataset directory (`dsrl.data.lerobot`: features image,
wrist_image, state, actions as openpi's LIBERO conversion names them; the task is the prompt). Norm stats are computed from it (or read with --norm_stats). Every --save_every steps
and at the end, `<out>/<step>/` holds `params/` (EMA weights where kept) + `assets/<asset_id>/
norm_stats.json` (loadable by `Pi0Policy.from_checkpoint` and by openpi) + `train_state/` (exact
resume with --resume). Metrics go to `<out>/metrics.jsonl` and W&B (offline by default), and the
loss curve to `<out>/loss.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from dsrl.base_policies.pi0.config import Pi0Config  # noqa: E402
from dsrl.base_policies.pi0.training import optim  # noqa: E402

GIB = 1 << 30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=pathlib.Path, help="an .npz dataset (see training/data.py)")
    p.add_argument("--dataset", type=pathlib.Path, help="a LeRobot v2 dataset directory instead")
    p.add_argument("--variant", default="full", help="Pi0Config.from_name (full, pi05, tiny, ...)")
    p.add_argument("--init", default="random", help="an openpi checkpoint dir, or 'random'")
    p.add_argument("--tokenizer", type=pathlib.Path, help="PaliGemma SentencePiece .model")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/finetune_pi0"))
    p.add_argument("--asset_id", default="dataset")
    p.add_argument(
        "--robot",
        default="libero",
        help="the robot transforms the model will be served with (Pi0Policy's robot): its "
        "DeltaActions mask is applied to the data, as openpi's data config does ('none': no "
        "delta actions; libero: the first 6 dims relative to the state, as pi0_libero)",
    )
    p.add_argument("--norm_stats", type=pathlib.Path, help="norm_stats.json to use instead")
    p.add_argument("--trainable", default="full", choices=optim.TRAINABLE)
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--peak_lr", type=float, default=2.5e-5)
    p.add_argument("--warmup_steps", type=int, default=1_000)
    p.add_argument("--ema_decay", type=float, default=0.99, help="negative: no EMA")
    p.add_argument("--save_every", type=int, default=1_000)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_devices", type=int, default=0, help="data parallel; 0: all")
    p.add_argument("--resume", action="store_true", help="continue from the latest <out>/<step>")
    p.add_argument("--stop_after", type=int, help="stop after this many steps of this invocation")
    p.add_argument("--no_progress", action="store_true", help="no progress bars (for log files)")
    p.add_argument("--wandb_mode", default="offline", choices=["offline", "online", "disabled"])
    p.add_argument("--dry_run", action="store_true", help="print memory needs (shapes only)")
    p.add_argument(
        "--image_dropout",
        type=float,
        default=0.0,
        help="probability that an example's cameras are all masked (black), so that the model "
        "also learns from the state alone; a regulariser for small datasets (not openpi's)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="openpi's training-time image augmentation (crop 95 %%, resize, rotate +-5 degrees "
        "on non-wrist cameras, colour jitter on all; loss.augment_images); openpi always uses it",
    )
    p.add_argument(
        "--shared_noise",
        action="store_true",
        help="one noise row per chunk, repeated over the horizon (Pi0Config.shared_noise; not "
        "openpi's): load the result with the same setting",
    )
    p.add_argument(
        "--cache_prefix",
        action="store_true",
        help="with --trainable expert: encode every example's prefix (images, prompt) once with "
        "the frozen weights and train the action expert against it (training/prefix_cache.py): "
        "the same loss and gradients, without SigLIP and the prefix Gemma in every step",
    )
    p.add_argument(
        "--remat",
        action="store_true",
        help="recompute each Gemma layer's activations in the backward pass (openpi does): "
        "same gradients, far less memory (see --dry_run's *_remat columns), ~1/3 more compute",
    )
    args = p.parse_args(argv)
    if not args.dry_run and (args.data is None) == (args.dataset is None):
        p.error("pass one of --data (.npz) and --dataset (LeRobot dir), or --dry_run")
    if args.cache_prefix and (args.trainable != "expert" or args.image_dropout > 0 or args.augment):
        p.error(
            "--cache_prefix needs --trainable expert and neither --image_dropout nor --augment: "
            "the prefix must be the same at every step (full and LoRA training move it, dropout "
            "and augmentation change it)"
        )
    from dsrl.base_policies.pi0 import transforms as tf

    if args.robot != "none" and args.robot not in tf.ROBOTS:
        p.error(f"--robot {args.robot!r}: choose one of {sorted(tf.ROBOTS)} or 'none'")
    return args


def train_config(args) -> optim.TrainConfig:
    return optim.TrainConfig(
        trainable=args.trainable,
        peak_lr=args.peak_lr,
        warmup_steps=min(args.warmup_steps, max(args.steps - 1, 0)),
        decay_steps=max(args.steps, 2),
        ema_decay=None if args.ema_decay < 0 else args.ema_decay,
        augment=args.augment,
    )


def dry_run(config: Pi0Config, batch: int) -> list[dict]:
    from dsrl.base_policies.pi0.training import memory

    rows = memory.dry_run_table(config, batch)
    cols = ("trained_params", "frozen_params", "optimizer", "ema", "activations", "total")
    cols += ("activations_remat", "total_remat")
    print(f"{config.paligemma_variant}+{config.action_expert_variant}, batch {batch} (GiB):")
    print(f"{'trainable':<10}" + "".join(f"{c:>18}" for c in cols))
    for row in rows:
        print(f"{row['trainable']:<10}" + "".join(f"{row[c] / GIB:>18.2f}" for c in cols))
    return rows


def _latest_step(out: pathlib.Path) -> pathlib.Path | None:
    steps = [d for d in out.glob("[0-9]*") if (d / "train_state").is_dir()]
    return max(steps, key=lambda d: int(d.name)) if steps else None


def _plot_loss(out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsrl.utils.logging import read_metrics

    rows = [r for r in read_metrics(out) if "train/loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["train/loss"] for r in rows])
    ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log", title=out.name)
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def finetune(args) -> pathlib.Path:
    from tqdm import tqdm

    from dsrl.base_policies.pi0 import checkpoint as ckpt_lib
    from dsrl.base_policies.pi0 import model as model_lib
    from dsrl.base_policies.pi0 import normalize as nl
    from dsrl.base_policies.pi0 import transforms as tf
    from dsrl.base_policies.pi0.tokenizer import PaligemmaTokenizer
    from dsrl.base_policies.pi0.training import data as data_lib
    from dsrl.base_policies.pi0.training import norm_stats as ns
    from dsrl.base_policies.pi0.training import train_state as ts
    from dsrl.utils.logging import RunLogger

    # Compute in the variant's dtype (bfloat16 for the released sizes, as openpi trains); the
    # trained weights stay float32 and the frozen ones are stored in the compute dtype.
    config = Pi0Config.from_name(args.variant, remat=args.remat, shared_noise=args.shared_noise)
    tc = train_config(args)
    if args.dataset is not None:
        from dsrl.data.lerobot import LeRobotDataset

        dataset = LeRobotDataset(args.dataset, action_horizon=config.action_horizon)
    else:
        dataset = data_lib.NpzDataset(args.data)
    if args.tokenizer is None or not args.tokenizer.is_file():
        raise FileNotFoundError(f"--tokenizer {args.tokenizer}: pass a SentencePiece .model.")
    tokenizer = PaligemmaTokenizer(str(args.tokenizer), max_len=config.max_token_len)
    mask = None if args.robot == "none" else tf.get_robot(args.robot).delta_action_mask

    def delta(batch):
        return data_lib.delta_batch(batch, mask)

    stats = (
        nl.load_norm_stats(args.norm_stats)
        if args.norm_stats
        else ns.compute_norm_stats(delta(b) for b in dataset.all())
    )
    if args.init == "random":
        params = model_lib.init_params(config, args.seed)
    else:
        params = ckpt_lib.load_pi0(args.init, config, dtype="float32").params
    state = ts.init_train_state(params, tc, seed=args.seed, frozen_dtype=config.dtype)
    del params
    args.out.mkdir(parents=True, exist_ok=True)
    resume_dir = _latest_step(args.out) if args.resume else None
    if resume_dir is not None:
        state = ts.restore_train_state(resume_dir, state)
    mesh = ts.make_mesh(args.num_devices)
    state = ts.shard_state(state, mesh)
    start = int(state.step)
    cams = tuple(k for k in config.image_keys if k in dataset.images)
    kw = {"model_config": config, "config": tc, "encoded": cams}
    run_config = {**vars(args), "train_config": dataclasses.asdict(tc), "start_step": start}

    def to_inputs(batch):
        return data_lib.to_model_inputs(delta(batch), config, stats, tokenizer)

    if args.cache_prefix:
        from dsrl.base_policies.pi0.training import prefix_cache

        cached = prefix_cache.encode_dataset(
            dataset,
            config,
            state.params(use_ema=False),
            to_inputs,
            cams,
            progress=not args.no_progress,
        )
        print(
            f"prefix cache: {cached.nbytes / 2**20:.0f} MiB, {len(cached)} examples",
            file=sys.stderr,
        )
        batches = cached.batches(args.batch, seed=args.seed, start=start)
    else:
        batches = dataset.batches(args.batch, seed=args.seed, start=start)
    stop = args.steps if args.stop_after is None else min(args.steps, start + args.stop_after)
    with RunLogger(args.out, run_config, "dsrl-pi0-finetune", args.wandb_mode) as logger:
        bar = tqdm(
            range(start, stop),
            initial=start,
            total=args.steps,
            desc="finetune",
            disable=args.no_progress,
        )
        for step in bar:
            if args.cache_prefix:  # a PrefixCache stands in for the Observation
                obs, actions = prefix_cache.shard_batch(*next(batches), mesh)
            else:
                obs, actions = to_inputs(next(batches))
                drop_rng = np.random.default_rng((args.seed, step))  # resumes exactly
                obs = data_lib.drop_images(obs, args.image_dropout, drop_rng)
                obs, actions = ts.shard_batch((obs, actions), mesh)
            state, info = ts.train_step(state, obs, actions, **kw)
            done = step + 1
            if done % args.log_every == 0 or done == args.steps:
                info = {f"train/{k}": float(v) for k, v in info.items()}
                logger.log(info, done)
                bar.set_postfix(loss=f"{info['train/loss']:.4f}")
            if done % args.save_every == 0 or done in (args.steps, stop):
                ckpt = ts.export_openpi(
                    state, args.out / str(done), norm_stats=stats, asset_id=args.asset_id
                )
                ts.save_train_state(state, ckpt)
    print(
        json.dumps(
            {"checkpoint": str(args.out / str(args.steps)), "loss_plot": str(_plot_loss(args.out))}
        )
    )
    return args.out / str(args.steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        dry_run(Pi0Config.from_name(args.variant), args.batch)
        return 0
    finetune(args)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
