"""One trainer of a process group, for tests/test_trainer_group.py (run as a script, one process per rank).

    python tests/trainer_group_rank.py NAME_SERVICE_URL RANK WORLD_SIZE STEPS OUT_DIR [--die-after-join]

It joins the group through the name service; rank 0 samples one global batch from the starting weights and sends
it to the others at every step (as the trainer worker sends the trees it took from the sample stream), so the
steps after the first are off-policy. Each rank writes its final weights and gradients
(`rank{r}.safetensors`) and every step's metrics (`rank{r}.json`) to OUT_DIR. With --die-after-join, ranks > 0 exit
at once after joining, and rank 0 records how its next collectives failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from test_train_step import PAD, batch, small_model

from zrl.nameresolve import make_name_resolver
from zrl.rl.train_step import make_optimizer, train_step
from zrl.rl.tree.trajectory import Trajectory
from zrl.workers.trainer_group import TrainerGroupError, join_trainer_group

STORE_NAME = "exp/trial/trainer_ddp/policy/store"
TIMEOUT_S = 60.0


def main(url: str, rank: int, world_size: int, steps: int, out: Path, die_after_join: bool) -> None:
    from test_trainer_group import STEP_CONFIG

    torch.set_num_threads(1)
    model = small_model()
    resolver = make_name_resolver(url)
    group = join_trainer_group(resolver, STORE_NAME, rank, world_size, "127.0.0.1", torch.device("cpu"),
                               TIMEOUT_S, keepalive_ttl_s=2.0)
    if die_after_join:
        if rank > 0:
            os._exit(0)
        started = time.monotonic()
        try:
            group.broadcast({"step": 0})  # may not notice: a broadcast's root only sends
            group.sum_(torch.ones(4))
            error = ""
        except TrainerGroupError as exc:
            error = str(exc)
        (out / f"rank{rank}.json").write_text(json.dumps({"error": error, "after_s": time.monotonic() - started}))
        group.close()  # as a failed trainer does: a broken group left to interpreter exit may abort in gloo
        resolver.close()
        return
    group.broadcast_parameters(model)
    optimizer, scheduler = make_optimizer(model, STEP_CONFIG.optimizer)
    records = []
    global_batch = [t.to_dict() for t in batch(model, shared_first_segment=True)] if rank == 0 else None
    for step in range(steps):
        trees = group.broadcast(global_batch)
        trajectories = [Trajectory.from_dict(t) for t in trees]
        records.append(train_step(model, optimizer, scheduler, trajectories, STEP_CONFIG, PAD,
                                  on_policy_version=step, collective=group))
    tensors = {f"weight.{name}": p.detach().clone() for name, p in model.named_parameters()}
    tensors.update({f"grad.{name}": p.grad.clone() for name, p in model.named_parameters()})
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(records))
    group.close()
    resolver.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]), int(args[2]), int(args[3]), Path(args[4]), "--die-after-join" in args)
