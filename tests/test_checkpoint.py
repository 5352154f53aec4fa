"""Checkpoints of the training state and exact resume, in a synchronous, seeded setting without sockets.

The loop here is the trainer's in miniature: problems come from a shard cursor, trajectories are sampled from the
model with torch's global RNG, and `train_step` steps AdamW under the warm-up schedule. N steps in one go must give
the same weights and optimizer state as N/2 steps, a checkpoint, fresh objects, the checkpoint loaded, and N/2
more; leaving out any part of the state must show.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import zrl.paramdb.checkpoint as checkpoint_module
from zrl.paramdb.checkpoint import (
    CheckpointError,
    TrainingProgress,
    checkpoint_steps,
    latest_step,
    load_checkpoint,
    save_checkpoint,
)
from zrl.rl.problem import Problem
from zrl.rl.shard import ShardCursor
from zrl.rl.train_step import OptimizerConfig, StepConfig, make_optimizer, train_step
from zrl.rl.tree.trajectory import Trajectory

VOCAB = 40
PAD = 0
PROMPTS_PER_STEP = 2
SAMPLES = 4
RESPONSE_TOKENS = 8
SEGMENT_TOKENS = 4
STEPS = 6
# Warm-up longer than the run, so a schedule that restarted would give other learning rates.
CONFIG = StepConfig(OptimizerConfig(lr=1e-2, warmup_steps=10))


def small_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=1)
    return Qwen2ForCausalLM(config)


def problems(count: int) -> list[Problem]:
    return [Problem(f"p{i}", f"problem {i}", str(i)) for i in range(count)]


def prompt_ids(problem: Problem) -> list[int]:
    number = int(problem.answer)
    return [2 + (7 * number + k) % (VOCAB - 2) for k in range(3)]


def sample(model: torch.nn.Module, problem: Problem, version: int) -> list[Trajectory]:
    """SAMPLES responses to one problem, drawn token by token with torch's global RNG."""
    prompt = prompt_ids(problem)
    ids = torch.tensor([prompt] * SAMPLES)
    logprobs = []
    with torch.no_grad():
        for _ in range(RESPONSE_TOKENS):
            table = torch.log_softmax(model(input_ids=ids).logits[:, -1].float(), dim=-1)
            token = torch.multinomial(table.exp(), 1)
            logprobs.append(torch.gather(table, 1, token))
            ids = torch.cat([ids, token], dim=1)
    logprobs_by_row = torch.cat(logprobs, dim=1).tolist()
    out = []
    for row in range(SAMPLES):
        response = ids[row, len(prompt):].tolist()
        segments = RESPONSE_TOKENS // SEGMENT_TOKENS
        out.append(Trajectory(
            uid=problem.uid, prompt_ids=prompt, response_ids=response, logprobs=logprobs_by_row[row],
            segment_ids=[row * segments + k for k in range(segments)], segment_tokens=[SEGMENT_TOKENS] * segments,
            versions=[version] * segments, status="finished",
            reward=1.0 if response[0] % 2 == int(problem.answer) % 2 else -1.0))
    return out


@dataclass
class Loop:
    """The state a trainer carries from step to step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cursor: ShardCursor
    step: int = 0
    trained: int = 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            batch = [t for _ in range(PROMPTS_PER_STEP)
                     for t in sample(self.model, self.cursor.next()[1], self.step)]
            train_step(self.model, self.optimizer, self.scheduler, batch, CONFIG, PAD, on_policy_version=self.step)
            self.step += 1
            self.trained += len(batch)

    def progress(self) -> TrainingProgress:
        return TrainingProgress(self.step, self.step, {"trained": self.trained},
                                {"rollout/0": self.cursor.position})


def new_loop(data: list[Problem]) -> Loop:
    model = small_model()
    optimizer, scheduler = make_optimizer(model, CONFIG.optimizer)
    return Loop(model, optimizer, scheduler, ShardCursor(data, 0, 1, seed=3))


def resumed_loop(data: list[Problem], directory: Path, forget: str = "") -> Loop:
    """Fresh objects (as in a new process: other RNG states too) with the newest checkpoint loaded; `forget` names
    one part of the state to leave as a fresh process would have it, to show that the test sees it."""
    loop = new_loop(data)
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    progress = load_checkpoint(directory, loop.model, loop.optimizer, loop.scheduler)
    assert progress is not None
    loop.step, loop.trained = progress.step, progress.accounting["trained"]
    loop.cursor = ShardCursor(data, 0, 1, seed=3, position=progress.data_positions["rollout/0"])
    if forget == "optimizer":
        loop.optimizer.state.clear()
    elif forget == "scheduler":
        loop.scheduler.load_state_dict(make_optimizer(small_model(), CONFIG.optimizer)[1].state_dict())
    elif forget == "rng":
        torch.manual_seed(99)
    elif forget == "data_position":
        loop.cursor = ShardCursor(data, 0, 1, seed=3)
    return loop


def max_difference(a: Loop, b: Loop) -> float:
    weights = max((x - y).abs().max().item()
                  for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True))
    moments = max((sa[key] - sb[key]).abs().max().item()
                  for sa, sb in zip(a.optimizer.state.values(), b.optimizer.state.values(), strict=True)
                  for key in ("exp_avg", "exp_avg_sq", "step"))
    return max(weights, moments)


def straight_and_resumed(tmp_path: Path, shard_size: int, forget: str = "") -> tuple[Loop, Loop]:
    data = problems(shard_size)
    straight = new_loop(data)
    straight.run(STEPS)

    first_half = new_loop(data)
    first_half.run(STEPS // 2)
    save_checkpoint(tmp_path / "checkpoints", first_half.model, first_half.optimizer, first_half.scheduler,
                    first_half.progress())
    del first_half
    resumed = resumed_loop(data, tmp_path / "checkpoints", forget)
    resumed.run(STEPS - STEPS // 2)
    return straight, resumed


@pytest.mark.parametrize("shard_size", [5, 6], ids=["mid-epoch", "epoch-boundary"])
def test_half_a_run_a_checkpoint_and_the_other_half_equal_the_whole_run(tmp_path: Path, shard_size: int):
    straight, resumed = straight_and_resumed(tmp_path, shard_size)
    stop = STEPS // 2 * PROMPTS_PER_STEP
    assert (stop % shard_size == 0) == (shard_size == 6)  # the stop lies exactly on an epoch boundary, or not
    assert max_difference(straight, resumed) <= 1e-6
    assert resumed.step == straight.step == STEPS and resumed.trained == straight.trained
    assert resumed.cursor.position == straight.cursor.position == STEPS * PROMPTS_PER_STEP
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    assert isinstance(resumed.optimizer.param_groups[0]["betas"], tuple)


@pytest.mark.parametrize("forget", ["optimizer", "scheduler", "rng", "data_position"])
def test_the_resume_test_sees_each_part_of_the_state_left_out(tmp_path: Path, forget: str):
    straight, resumed = straight_and_resumed(tmp_path, 6, forget)
    assert max_difference(straight, resumed) > 1e-4


def test_python_numpy_and_torch_rng_continue_where_they_stood(tmp_path: Path):
    loop = new_loop(problems(4))
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    # Advance each generator; numpy's past the first of a pair of gaussians, whose second it keeps.
    random.random(), np.random.normal(), torch.rand(1)  # noqa: B018
    save_checkpoint(tmp_path, loop.model, loop.optimizer, loop.scheduler, loop.progress())
    expected = (random.random(), np.random.normal(), torch.rand(3).tolist())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    load_checkpoint(tmp_path, loop.model, loop.optimizer, loop.scheduler)
    assert (random.random(), np.random.normal(), torch.rand(3).tolist()) == expected


def saved(tmp_path: Path, steps: list[int], keep: int = 5) -> Loop:
    loop = new_loop(problems(4))
    for step in steps:
        loop.run(step - loop.step)
        save_checkpoint(tmp_path, loop.model, loop.optimizer, loop.scheduler, loop.progress(), keep=keep)
    return loop


def test_a_checkpoint_is_safetensors_and_json_with_a_manifest_and_a_latest_pointer(tmp_path: Path):
    saved(tmp_path, [1])
    assert latest_step(tmp_path) == 1 and checkpoint_steps(tmp_path) == [1]
    files = sorted(p.name for p in (tmp_path / "step-00000001").iterdir())
    assert files == ["manifest.json", "model.safetensors", "state.json", "state.safetensors"]
    manifest = json.loads((tmp_path / "step-00000001" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "state.json", "state.safetensors"}
    document = json.loads((tmp_path / "step-00000001" / "state.json").read_text())
    # The tied output head is stored once and restored from the input embedding.
    assert document["model_aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert document["progress"] == {"step": 1, "version": 1, "accounting": {"trained": 8},
                                    "data_positions": {"rollout/0": 2}}


def test_only_the_newest_checkpoints_are_kept_and_leftovers_of_dead_writers_go(tmp_path: Path):
    host = socket.gethostname()
    dead = tmp_path / f".tmp-step-00000009-{host}-999999999-abcd"  # no such pid
    dead.mkdir(parents=True)
    dead_pointer = tmp_path / f".tmp-latest-{host}-999999999-abcd"
    dead_pointer.write_text("7\n")
    live = tmp_path / f".tmp-step-00000009-{host}-{os.getppid()}-abcd"
    live.mkdir()
    saved(tmp_path, [1, 2, 3], keep=2)
    assert checkpoint_steps(tmp_path) == [2, 3] and latest_step(tmp_path) == 3
    assert not dead.exists() and not dead_pointer.exists() and live.exists()


def test_a_corrupted_checkpoint_is_set_aside_and_the_one_before_it_is_loaded(tmp_path: Path, caplog):
    saved(tmp_path, [1, 2, 3])
    model_file = tmp_path / "step-00000003" / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF
    model_file.write_bytes(bytes(data))
    (tmp_path / "step-00000002" / "manifest.json").unlink()  # as a copy that stopped half-way would be
    loop = new_loop(problems(4))
    with caplog.at_level(logging.WARNING):
        progress = load_checkpoint(tmp_path, loop.model, loop.optimizer, loop.scheduler)
    assert progress is not None and progress.step == 1
    assert "step-00000003 is unusable" in caplog.text and "checksum mismatch" in caplog.text
    assert "step-00000002 is unusable (manifest.json is missing)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-")) == [
        "step-00000001", "step-00000002.corrupt", "step-00000003.corrupt"]
    # A later save of the same step replaces nothing it should not, and becomes the newest again.
    save_checkpoint(tmp_path, loop.model, loop.optimizer, loop.scheduler, TrainingProgress(2, 2))
    assert checkpoint_steps(tmp_path) == [1, 2] and latest_step(tmp_path) == 2


def test_checkpoints_that_all_fail_are_an_error_not_a_fresh_start(tmp_path: Path):
    saved(tmp_path, [1])
    (tmp_path / "step-00000001" / "state.json").write_text("{}")
    loop = new_loop(problems(4))
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*step-00000001: .*state.json"):
        load_checkpoint(tmp_path, loop.model, loop.optimizer, loop.scheduler)
    assert load_checkpoint(tmp_path / "none", loop.model, loop.optimizer, loop.scheduler) is None


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path: Path):
    saved(tmp_path, [1])
    other = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2))
    optimizer, scheduler = make_optimizer(other, CONFIG.optimizer)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(tmp_path, other, optimizer, scheduler)


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint_as_it_was(tmp_path: Path, monkeypatch):
    loop = saved(tmp_path, [1])
    before = (tmp_path / "step-00000001" / "model.safetensors").read_bytes()
    real_write_shard = checkpoint_module.write_shard

    def disk_full_on_state(path: Path, tensors, durable):
        if path.name == "state.safetensors":
            raise OSError(28, "No space left on device", str(path))
        return real_write_shard(path, tensors, durable)

    monkeypatch.setattr(checkpoint_module, "write_shard", disk_full_on_state)
    loop.run(1)
    with pytest.raises(CheckpointError, match=r"step 2 .*No space left on device.*earlier checkpoints are intact"):
        save_checkpoint(tmp_path, loop.model, loop.optimizer, loop.scheduler, loop.progress())
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-00000001"]
    assert latest_step(tmp_path) == 1
    assert (tmp_path / "step-00000001" / "model.safetensors").read_bytes() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
@pytest.mark.parametrize("forget", ["", "cuda_rng"])
def test_a_model_and_optimizer_on_a_gpu_resume_where_they_stood(tmp_path: Path, forget: str):
    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        model = small_model().cuda()  # seeds the CUDA generator too
        return (model, *make_optimizer(model, CONFIG.optimizer))

    def run(parts, steps: int) -> None:
        model, optimizer, scheduler = parts
        for _ in range(steps):
            ids = torch.randint(2, VOCAB, (4, 12), device="cuda")  # data drawn by the CUDA generator
            loss = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[..., 3].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    straight = fresh()
    run(straight, STEPS)
    first_half = fresh()
    run(first_half, STEPS // 2)
    save_checkpoint(tmp_path, *first_half, TrainingProgress(STEPS // 2, STEPS // 2))
    resumed = fresh()
    torch.cuda.manual_seed(99)
    load_checkpoint(tmp_path, *resumed)
    assert all(state["exp_avg"].is_cuda for state in resumed[1].state.values())
    if forget:
        torch.cuda.manual_seed(99)
    run(resumed, STEPS - STEPS // 2)
    difference = max((a - b).abs().max().item()
                     for a, b in zip(straight[0].parameters(), resumed[0].parameters(), strict=True))
    # Kernels with atomic adds (the embedding's backward) may round differently from run to run.
    assert difference > 1e-3 if forget else difference <= 1e-5
