"""Run utilities: `checkpoints` (orbax run checkpoints) and `logging` (W&B + metrics.jsonl).

Import the submodules directly (`from dsrl.utils.checkpoints import RunCheckpointer`); this
package does not import them eagerly, so `import dsrl` stays free of orbax and W&B start-up cost.
"""
