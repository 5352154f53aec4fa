"""The trainer worker: drains scored trees into a buffer and steps the policy on batches of them.

Each poll: take the trees that arrived on the sample stream; drop (and count) trees with uniform rewards when
dynamic sampling is on, and trees whose oldest segment is more than `max_staleness` versions older than the
weights being trained; once `prompts_per_step` trees wait, run one optimizer step (`zrl.rl.train_step`), push
the weights to the parameter DB every `push_every` steps, and write the step's metrics. After `total_steps` it
pushes the final version (tagged "final") and completes.

The weights after step s are version s; version 0 is the starting model, which the other workers load from the
model directory themselves.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from zrl.engines.hf import model_eos_token_ids
from zrl.nameresolve import NameResolveError, names
from zrl.rl.advantage import dynamic_sampling
from zrl.rl.train_step import OptimizerConfig, StepConfig, make_optimizer, train_step
from zrl.rl.tree import TreeResult, merge_stats
from zrl.streams import NameResolvingSampleConsumer, SampleStreamConfig, SocketConfig
from zrl.workers.base import PollResult, Worker
from zrl.workers.treepo_common import FINAL_TAG, MetricsLog, model_path, open_paramdb, run_dir, set_threads
from zrl.workers.treepo_config import TrainerConfig

MAX_DRAIN = 256
WAIT_S = 0.05


class ReceivedTree:
    """A scored tree from the sample stream with what the trainer needs to know about it."""

    def __init__(self, tree: TreeResult, sample: dict[str, Any]):
        self.tree = tree
        self.oldest_version = min((min(t.versions) for t in tree.trajectories if t.versions), default=0)
        self.producer = str(sample.get("producer", ""))
        self.gen_s = float(sample.get("gen_s", 0.0))
        self.reward_s = float(sample.get("reward_s", 0.0))

    @property
    def size(self) -> int:
        return len(self.tree.trajectories)


class TrainerWorker(Worker):
    config_class = TrainerConfig

    def _configure(self, config: TrainerConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        set_threads(config.threads)
        torch.manual_seed(config.seed)
        path = model_path(config.model)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        pad = self.model.config.pad_token_id
        self.pad_id = int(pad) if pad is not None else model_eos_token_ids(path)[0]
        self.step_config = StepConfig(
            OptimizerConfig(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
                            grad_clip=config.grad_clip),
            config.advantage, config.loss, config.micro_batch_tokens)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.step_config.optimizer)
        self.paramdb = open_paramdb(config.model, self.context, self.name_resolver)
        self.consumer = NameResolvingSampleConsumer(
            self.name_resolver, names.sample_stream(self.context.experiment, self.context.trial, config.sample_stream),
            SampleStreamConfig(sockets=SocketConfig(bind_host=self.context.host)), name=config.sample_stream,
            curve=self.context.curve)
        self.metrics = MetricsLog(run_dir(self.context), self.context.worker_id.replace("/", "-"))
        self.buffer: deque[ReceivedTree] = deque()
        self.step = 0
        self.accounting = {"received": 0, "trained": 0, "dropped_stale": 0, "dropped_dynamic": 0, "garbage": 0}
        self.headline: dict[str, str] = {}
        self.last_step_at = self.started = time.monotonic()
        self.wait_s = 0.0
        self.in_step = 0
        self.drops_by_producer: dict[str, int] = {}
        self.unpublished_drops: set[str] = set()

    def _poll(self) -> PollResult:
        config = self.config
        waited = time.monotonic()
        self._drain(WAIT_S if len(self.buffer) < config.prompts_per_step else 0.0)
        self._drop_stale()
        if self.unpublished_drops:
            self._publish_drops()
        if len(self.buffer) < config.prompts_per_step:
            self.wait_s += time.monotonic() - waited
            return PollResult()
        batch = [self.buffer.popleft() for _ in range(config.prompts_per_step)]
        self.in_step = sum(b.size for b in batch)
        self._train(batch)
        self.in_step = 0
        return PollResult(sample_count=sum(b.size for b in batch), batch_count=1,
                          done=self.step >= config.total_steps)

    # ---- steps of a poll ----

    def _drain(self, timeout: float) -> None:
        for sample in self.consumer.consume(MAX_DRAIN, timeout=timeout):
            try:
                item = ReceivedTree(TreeResult.from_dict(sample["tree"]), sample)
            except (KeyError, TypeError, ValueError) as exc:
                self.accounting["garbage"] += 1
                if self.accounting["garbage"] == 1:
                    self.logger.warning("dropping a malformed sample (further ones are only counted): %s", exc)
                continue
            self.accounting["received"] += item.size
            if self.config.advantage.dynamic_sampling and not dynamic_sampling(item.tree.trajectories).kept:
                self.accounting["dropped_dynamic"] += item.size
                self._dropped_tree(item)
                continue
            self.buffer.append(item)

    def _drop_stale(self) -> None:
        fresh: deque[ReceivedTree] = deque()
        for item in self.buffer:
            if self.step - item.oldest_version <= self.config.max_staleness:
                fresh.append(item)
            else:
                self.accounting["dropped_stale"] += item.size
                self._dropped_tree(item)
        self.buffer = fresh

    def _dropped_tree(self, item: ReceivedTree) -> None:
        self.drops_by_producer[item.producer] = self.drops_by_producer.get(item.producer, 0) + 1
        self.unpublished_drops.add(item.producer)

    def _publish_drops(self) -> None:
        """Tell each rollout worker how many of its trees were dropped, so its throttle replaces them."""
        for producer in sorted(self.unpublished_drops):
            try:
                key = names.sample_drops(self.context.experiment, self.context.trial, self.config.sample_stream,
                                         producer)
                self.name_resolver.add(key, str(self.drops_by_producer[producer]), replace=True)
            except ValueError:
                continue  # not a worker id: a producer outside this experiment's workers
            except NameResolveError as exc:
                self.logger.warning("cannot publish the drop count of %s (will retry): %s", producer, exc)
                return
            self.unpublished_drops.discard(producer)

    def _train(self, batch: list[ReceivedTree]) -> None:
        config = self.config
        trajectories = [t for b in batch for t in b.tree.trajectories]
        metrics = train_step(self.model, self.optimizer, self.scheduler, trajectories, self.step_config,
                             self.pad_id, on_policy_version=self.step)
        staleness = [self.step - b.oldest_version for b in batch]
        self.step += 1
        self.accounting["trained"] += len(trajectories)
        sync_s = 0.0
        if self.step % config.push_every == 0 or self.step >= config.total_steps:
            sync_s = self._push()
        now = time.monotonic()
        step_s, self.last_step_at = now - self.last_step_at, now
        stats = merge_stats([b.tree.stats for b in batch])
        n = len(trajectories)
        metrics.update({
            "version": self.step,
            "staleness_mean": float(np.mean(staleness)), "staleness_max": float(max(staleness)),
            "trajectories_per_s": n / step_s, "tokens_per_s": metrics["tokens"] / step_s,
            "decoded_tokens_per_trajectory": stats.decoded_tokens / n,
            "independent_tokens_per_trajectory": sum(len(t.response_ids) for t in trajectories) / n,
            "depth_mean": float(np.mean([len(t.segment_ids) for t in trajectories])),
            "fallbacks": float(stats.fallbacks),
            **{f"status_{name}": float(count) for name, count in sorted(stats.statuses.items())},
            "time_generation_s": float(np.mean([b.gen_s for b in batch])),
            "time_reward_s": float(np.mean([b.reward_s for b in batch])),
            "time_sync_s": sync_s, "time_wait_s": self.wait_s, "step_s": step_s,
            "elapsed_s": now - self.started,
        })
        self.wait_s = 0.0
        self.metrics.write("train", self.step, metrics)
        eta = (config.total_steps - self.step) * (now - self.started) / self.step
        self.headline = {"step": f"{self.step}/{config.total_steps}", "reward": f"{metrics['reward_mean']:+.2f}",
                         "acc": f"{metrics['accuracy']:.2f}", "traj/s": f"{n / step_s:.0f}",
                         "stale": f"{np.mean(staleness):.1f}", "eta": _duration(eta)}

    def _push(self) -> float:
        started = time.perf_counter()
        tags = (FINAL_TAG,) if self.step >= self.config.total_steps else ()
        model = self.config.model.name
        self.paramdb.push(model, self.model, self.step, tags=tags)
        self.paramdb.gc(model, self.config.keep_versions)
        return time.perf_counter() - started

    def _stats(self) -> dict[str, Any]:
        if not hasattr(self, "consumer"):
            return {}
        buffered = sum(b.size for b in self.buffer) + self.in_step
        return {"step": self.step, "version": self.step, "headline": self.headline,
                "accounting": {**self.accounting, "buffered": buffered}, "samples": self.consumer.as_dict()}

    def _close(self) -> None:
        if hasattr(self, "consumer"):
            self.consumer.close()
            self.metrics.close()


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
