"""The trainer worker: drains scored trees into a buffer and steps the policy on batches of them.

Each poll: take the trees that arrived on the sample stream; drop (and count) trees with uniform rewards when
dynamic sampling is on, and trees whose oldest segment is more than `max_staleness` versions older than the
weights being trained; once `prompts_per_step` trees wait, run one optimizer step (`zrl.rl.train_step`), push
the weights to the parameter DB every `push_every` steps, and write the step's metrics. After `total_steps` it
pushes the final version (tagged "final") and completes.

The weights after step s are version s; version 0 is the starting model, which the other workers load from the
model directory themselves.

Several trainers (group count > 1) train as one torch.distributed group (`zrl.workers.trainer_group`), rank =
worker index. Rank 0 alone consumes the sample stream, applies the drops and counts the samples; each poll it
sends the others either nothing (no batch yet) or the batch it chose, and all of them step on it together, each
on its share of the rows (`zrl.rl.data_parallel`). Only rank 0 pushes weights and writes metrics.

Checkpoints: every `save_every` steps and after the last, the model, optimizer, LR schedule, RNG states, step,
version, sample-accounting counters and data positions go to `{run_dir}/checkpoints/` (`zrl.paramdb.checkpoint`). On
configure the trainer continues from the newest one: a relaunched trainer, or a resumed trial. The parameter DB may
then hold versions newer than the checkpoint, pushed by the trainer that died; the resumed weights are pushed as
the version after the newest, so the policy workers serve them at once, and versions count on from there (a
resumed run's versions run ahead of its steps). Trees the trainer had received and not trained when it stopped
are counted as `lost`: those in the checkpoint's buffer and those received after the checkpoint (the trainer keeps
its running count of received trees in `checkpoints/received.json`). Then it clears the drop counts of its sample
stream and announces the reset (`names.sample_stream_reset`), so the rollout workers' throttles count anew.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from zrl.atomic_file import write_json_atomic
from zrl.engines.hf import model_eos_token_ids
from zrl.nameresolve import NameEntryNotFoundError, NameResolveError, names
from zrl.paramdb.checkpoint import TrainingProgress, load_checkpoint, save_checkpoint
from zrl.rl.advantage import dynamic_sampling
from zrl.rl.sample_accounting import SampleAccounting
from zrl.rl.train_step import StepConfig, make_optimizer, train_step
from zrl.rl.tree import merge_stats
from zrl.streams import NameResolvingSampleConsumer, SampleStreamConfig, SocketConfig
from zrl.wire import WireError
from zrl.workers.base import PollResult, Worker
from zrl.workers.messages import TreeSample
from zrl.workers.trainer_group import TrainerGroup, TrainerGroupError, join_trainer_group
from zrl.workers.treepo_common import (
    FINAL_TAG,
    MetricsLog,
    load_tokenizer,
    model_path,
    open_paramdb,
    run_dir,
    set_threads,
    torch_device,
)
from zrl.workers.treepo_config import TrainerConfig

MAX_DRAIN = 256
WAIT_S = 0.05
CHECKPOINTS_DIR = "checkpoints"
RECEIVED_FILE = "received.json"
TREES_DIR = "trees"


class ReceivedTree:
    """A scored tree from the sample stream, and the oldest policy version that sampled it."""

    def __init__(self, sample: TreeSample):
        self.sample = sample
        self.tree = sample.tree
        self.oldest_version = min((min(t.versions) for t in self.tree.trajectories if t.versions), default=0)

    @property
    def size(self) -> int:
        return len(self.tree.trajectories)


class TrainerRole(enum.Enum):
    LEADER = "leader"
    """The only trainer, or rank 0 of a group: consumes the samples, counts them, pushes weights, writes metrics."""
    FOLLOWER = "follower"
    """Rank > 0 of a group: steps on the batches the leader sends."""


class TrainerWorker(Worker):
    config_class = TrainerConfig
    role: TrainerRole | None = None
    """None until `_configure` is done: a status reply then carries no counters."""
    group: TrainerGroup | None = None
    consumer: NameResolvingSampleConsumer | None = None
    metrics: MetricsLog | None = None
    tokenizer: Any = None
    """Loaded at the first tree picture."""

    def _configure(self, config: TrainerConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        set_threads(config.threads)
        torch.manual_seed(config.seed)
        path = model_path(config.model)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(
            torch_device(config.device))
        pad = self.model.config.pad_token_id
        self.pad_id = int(pad) if pad is not None else model_eos_token_ids(path)[0]
        self.step_config = StepConfig(
            dataclasses.replace(config.optimizer, decay_steps=config.optimizer.decay_steps or config.total_steps),
            config.advantage, config.loss, config.micro_batch_tokens, config.pack_trees)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.step_config.optimizer)
        self.step = self.version = 0
        self.resumed_from: int | None = None
        self.checkpoints = run_dir(self.context) / CHECKPOINTS_DIR
        # Every trainer of a group restores the same checkpoint, optimizer state included: each one steps.
        progress = load_checkpoint(self.checkpoints, self.model, self.optimizer, self.scheduler, self.logger)
        self.group = self._join_group(config) if self.context.group_size > 1 else None
        if self.group is not None and self.group.rank > 0:
            if progress is not None:
                self.step = self.resumed_from = progress.step
                self.version = progress.version
            self.role = TrainerRole.FOLLOWER  # rank 0 chooses the batches, counts the samples, pushes, writes metrics
            return
        self.paramdb = open_paramdb(config.model, self.context, self.name_resolver)
        self.metrics = MetricsLog(run_dir(self.context), self.context.worker_id.replace("/", "-"))
        self.buffer: deque[ReceivedTree] = deque()
        self.accounting = SampleAccounting()
        self.data_positions: dict[str, int] = {}
        self.restored: dict[str, int] = {}
        """The counters as this trainer took them over (reported under `accounting.restored`)."""
        self.headline: dict[str, str] = {}
        self.last_step_at = self.started = time.monotonic()
        self.wait_s = 0.0
        self.in_step = 0
        self.counting = threading.Lock()
        """Held while a tree moves between `buffer`, `in_step` and `accounting`, so that a status reply (served by
        the control thread) never counts a tree twice or not at all."""
        self.drops_by_producer: dict[str, int] = {}
        self.received_from: dict[str, int] = {}
        """Trajectories received from each producer process (for the sample accounting)."""
        self.unpublished_drops: set[str] = set()
        self.consumer = NameResolvingSampleConsumer(
            self.name_resolver, names.sample_stream(self.context.experiment, self.context.trial, config.sample_stream),
            SampleStreamConfig(sockets=SocketConfig(bind_host=self.context.host)), name=config.sample_stream,
            curve=self.context.curve)
        self._take_over(config, progress)
        self.role = TrainerRole.LEADER

    def _take_over(self, config: TrainerConfig, progress: TrainingProgress | None) -> None:
        """Continue from the newest checkpoint, or from step 0 if a trainer ran before this one without saving any."""
        received, garbage = self._received_before()
        model = config.model.name
        stored = max([*self.paramdb.list_versions(model), self.paramdb.newer_version(model, None) or 0], default=0)
        if progress is None and received is None and stored == 0:
            return  # a fresh trial
        progress = progress or TrainingProgress(0, 0)
        self.step = self.resumed_from = progress.step
        accounting, lost = SampleAccounting.from_dict(progress.accounting).taken_over(
            progress.accounting.get("buffered", 0), received, garbage)
        with self.counting:
            self.accounting = accounting
            self.restored = {**accounting.as_dict(), "buffered": 0}
        self.data_positions = dict(progress.data_positions)
        self.version = progress.version
        if self.step < config.total_steps:
            if stored > 0 and stored >= progress.version:
                self.version = stored + 1
            self.paramdb.untag(model, FINAL_TAG)
            if self.version > 0:
                self.paramdb.push(model, self.model, self.version)
            self._reset_sample_stream(config.sample_stream)
        self.logger.info("resumed from step %d (weights version %d, pushed as version %d); %d trajectories received "
                         "and not trained before are lost", self.step, progress.version, self.version, lost)
        self.metrics.write("resume", self.step, {"version": self.version, "checkpoint_version": progress.version,
                                                 "lost": lost})
        self.headline = {"resumed": f"step {self.step}"}

    def _received_before(self) -> tuple[int | None, int]:
        """What the trainers before this one received in all (None: no trainer ran before) and dropped as garbage."""
        path = self.checkpoints / RECEIVED_FILE
        try:
            saved = json.loads(path.read_text())
            return int(saved["received"]), int(saved["garbage"])
        except FileNotFoundError:
            return None, 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.logger.warning("cannot read %s (%s); the trees received since the checkpoint count as in flight",
                                path, exc)
            return None, 0

    def _reset_sample_stream(self, stream: str) -> None:
        """Clear the drop counts of the stream and announce the version this trainer counts from."""
        experiment, trial = self.context.experiment, self.context.trial
        for key in self.name_resolver.find_subtree(names.sample_drops_root(experiment, trial, stream)):
            try:
                self.name_resolver.delete(key)
            except NameEntryNotFoundError:
                pass
        self.name_resolver.add(names.sample_stream_reset(experiment, trial, stream), str(self.version), replace=True)

    def _join_group(self, config: TrainerConfig) -> TrainerGroup:
        context = self.context
        group = join_trainer_group(
            self.name_resolver, names.trainer_ddp(context.experiment, context.trial, config.model.name, "store"),
            context.index, context.group_size, context.host, next(self.model.parameters()).device,
            config.group_timeout_s, context.keepalive_ttl_s)
        group.broadcast_parameters(self.model)
        return group

    def _poll(self) -> PollResult:
        if self.role is TrainerRole.FOLLOWER:
            return self._follow()
        config = self.config
        if self.step >= config.total_steps:
            return PollResult(done=True)  # resumed from the checkpoint of the last step
        waited = time.monotonic()
        self._drain(WAIT_S if len(self.buffer) < config.prompts_per_step else 0.0)
        self._drop_stale()
        if self.unpublished_drops:
            self._publish_drops()
        if len(self.buffer) < config.prompts_per_step:
            self.wait_s += time.monotonic() - waited
            if self.group is not None:
                self.group.broadcast(None)
            return PollResult()
        with self.counting:
            batch = [self.buffer.popleft() for _ in range(config.prompts_per_step)]
            self.in_step = sum(b.size for b in batch)
        if self.group is not None:
            self.group.broadcast({"step": self.step, "version": self.version,
                                  "trees": [b.sample.to_wire() for b in batch]})
        self._train(batch)
        return PollResult(sample_count=sum(b.size for b in batch), batch_count=1,
                          done=self.step >= config.total_steps)

    def _follow(self) -> PollResult:
        """Rank > 0: take what rank 0 sends this poll (None while it waits for trees) and step on that batch."""
        assert self.group is not None
        message = self.group.broadcast()
        if message is None:
            return PollResult()
        if message["step"] != self.step:
            raise TrainerGroupError(f"trainer rank {self.group.rank} is at step {self.step}, but rank 0 sent the "
                                    f"batch of step {message['step']}")
        self.version = int(message["version"])  # rank 0 may have pushed its resumed weights as a newer version
        self._train([ReceivedTree(TreeSample.from_wire(sample)) for sample in message["trees"]])
        return PollResult(batch_count=1, done=self.step >= self.config.total_steps)

    # ---- steps of a poll ----

    def _drain(self, timeout: float) -> None:
        samples = self.consumer.consume(MAX_DRAIN, timeout=timeout)
        for sample in samples:
            try:
                item = ReceivedTree(TreeSample.from_wire(sample))
            except WireError as exc:
                self.accounting.garbage += 1
                if self.accounting.garbage == 1:
                    self.logger.warning("dropping a malformed sample (further ones are only counted): %s", exc)
                continue
            kept = not self.config.advantage.dynamic_sampling or dynamic_sampling(item.tree.trajectories).kept
            with self.counting:
                self.accounting.received += item.size
                incarnation = item.sample.incarnation
                self.received_from[incarnation] = self.received_from.get(incarnation, 0) + item.size
                if kept:
                    self.buffer.append(item)
                else:
                    self.accounting.dropped_dynamic += item.size
            if not kept:
                self._dropped_tree(item)
        if samples:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.checkpoints / RECEIVED_FILE, {"received": self.accounting.received,
                                                                 "garbage": self.accounting.garbage})

    def _drop_stale(self) -> None:
        fresh: deque[ReceivedTree] = deque()
        stale: list[ReceivedTree] = []
        rule = self.config.staleness
        for item in self.buffer:
            (stale if rule.is_stale(self.version, item.oldest_version) else fresh).append(item)
        if not stale:
            return
        with self.counting:
            self.accounting.dropped_stale += sum(item.size for item in stale)
            self.buffer = fresh
        for item in stale:
            self._dropped_tree(item)

    def _dropped_tree(self, item: ReceivedTree) -> None:
        producer = item.sample.producer
        self.drops_by_producer[producer] = self.drops_by_producer.get(producer, 0) + 1
        self.unpublished_drops.add(producer)

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
                             self.pad_id, on_policy_version=self.version, collective=self.group)
        staleness = [self.version - b.oldest_version for b in batch]
        self.step += 1
        self.version += 1
        if self.role is TrainerRole.FOLLOWER:
            return
        with self.counting:
            self.accounting.trained += len(trajectories)
            self.in_step = 0
        for item in batch:
            producer, position = item.sample.producer, item.sample.shard_position
            if position is not None:
                self.data_positions[producer] = max(self.data_positions.get(producer, 0), position + 1)
        sync_s = checkpoint_s = 0.0
        if self.step % config.push_every == 0 or self.step >= config.total_steps:
            sync_s = self._push()
        if self.step % config.save_every == 0 or self.step >= config.total_steps:
            checkpoint_s = self._save_checkpoint()
        now = time.monotonic()
        step_s, self.last_step_at = now - self.last_step_at, now
        stats = merge_stats([b.tree.stats for b in batch])
        n = len(trajectories)
        metrics.update({
            "version": self.version,
            "staleness_mean": float(np.mean(staleness)), "staleness_max": float(max(staleness)),
            "trajectories_per_s": n / step_s, "tokens_per_s": metrics["tokens"] / step_s,
            "decoded_tokens_per_trajectory": stats.decoded_tokens / n,
            "independent_tokens_per_trajectory": sum(len(t.response_ids) for t in trajectories) / n,
            "depth_mean": float(np.mean([len(t.segment_ids) for t in trajectories])),
            "fallbacks": float(stats.fallbacks),
            **{f"status_{name}": float(count) for name, count in sorted(stats.statuses.items())},
            "time_generation_s": float(np.mean([b.sample.gen_s for b in batch])),
            "time_reward_s": float(np.mean([b.sample.reward_s for b in batch])),
            "time_sync_s": sync_s, "time_checkpoint_s": checkpoint_s, "time_wait_s": self.wait_s, "step_s": step_s,
            "elapsed_s": now - self.started,
            "trees": _trees_by_incarnation(batch),
        })
        self.wait_s = 0.0
        self.metrics.write("train", self.step, metrics)
        every = config.tree_picture_every
        if every and (self.step % every == 0 or self.step == 1):
            self._draw_tree(batch)
        eta = (config.total_steps - self.step) * (now - self.started) / (self.step - (self.resumed_from or 0))
        self.headline = {"step": f"{self.step}/{config.total_steps}", "reward": f"{metrics['reward_mean']:+.2f}",
                         "acc": f"{metrics['accuracy']:.2f}", "traj/s": f"{n / step_s:.0f}",
                         "stale": f"{np.mean(staleness):.1f}", "eta": _duration(eta)}

    def _draw_tree(self, batch: list[ReceivedTree]) -> None:
        """A picture of the most telling tree of the batch; a failure to draw is logged and training goes on."""
        from zrl.rl.tree.picture import draw_tree, most_telling_tree

        try:
            if self.tokenizer is None:
                self.tokenizer = load_tokenizer(model_path(self.config.model))
            tree = most_telling_tree([item.tree.trajectories for item in batch])
            prompt = self.tokenizer.decode(tree[0].prompt_ids, skip_special_tokens=True).strip()
            path = run_dir(self.context) / TREES_DIR / f"step-{self.step}.png"
            draw_tree(tree, self.tokenizer.decode, f"step {self.step}, version {self.version}: {prompt}", path)
        except (OSError, ValueError, RuntimeError) as exc:
            self.logger.error("could not draw a tree at step %d: %s", self.step, exc)

    def _push(self) -> float:
        started = time.perf_counter()
        tags = (FINAL_TAG,) if self.step >= self.config.total_steps else ()
        model = self.config.model.name
        self.paramdb.push(model, self.model, self.version, tags=tags)
        self.paramdb.gc(model, self.config.keep_versions)
        return time.perf_counter() - started

    def _save_checkpoint(self) -> float:
        started = time.perf_counter()
        buffered = sum(b.size for b in self.buffer)
        progress = TrainingProgress(self.step, self.version, {**self.accounting.as_dict(), "buffered": buffered},
                                    dict(self.data_positions))
        save_checkpoint(self.checkpoints, self.model, self.optimizer, self.scheduler, progress,
                        keep=self.config.keep_checkpoints)
        return time.perf_counter() - started

    def _stats(self) -> dict[str, Any]:
        if self.role is None:
            return {}
        stats: dict[str, Any] = {"step": self.step, "version": self.version}
        if self.group is not None:
            stats["group"] = {"rank": self.group.rank, "world_size": self.group.world_size}
        if self.role is TrainerRole.FOLLOWER:
            return stats  # rank 0 counts every sample of the group, once
        assert self.consumer is not None
        with self.counting:
            buffered = sum(b.size for b in self.buffer) + self.in_step
            accounting = {**self.accounting.as_dict(), "buffered": buffered,
                          "received_from": dict(self.received_from)}
        if self.restored:
            accounting["restored"] = self.restored
        return {**stats, "resumed_from": self.resumed_from, "headline": self.headline, "accounting": accounting,
                "samples": self.consumer.as_dict()}

    def _close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.group is not None:
            self.group.close()


def _trees_by_incarnation(batch: list[ReceivedTree]) -> dict[str, list[str]]:
    """The uids (problem@epoch) of a step's trees by the process (`incarnation`) that produced them."""
    trees: dict[str, list[str]] = {}
    for item in batch:
        trees.setdefault(item.sample.incarnation, []).append(item.tree.uid)
    return trees


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
