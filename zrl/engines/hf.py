"""A transformers generation engine (CPU or GPU): left-padded batches, KV-cached decoding of new tokens only, and
prefixes computed once: a prefix's keys and values are kept (`zrl.engines.prefix_cache`) for the requests that
continue it.

Logprobs are those of the sampled tokens under the model's unscaled distribution (temperature 1, no top-p), the
same quantity vLLM reports by default, so the trainer's ratio is computed against the policy that the logits define.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from zrl.engines.base import Engine, GenerationRequest, GenerationResult
from zrl.engines.prefix_cache import LayerKV, PrefixKVCache
from zrl.engines.reserved_cache import ReservedLayer, reserved_cache


@dataclass(frozen=True)
class HFEngineConfig:
    """Settings of the transformers engine."""

    device: str = "auto"
    """torch device; "auto" picks cuda when available, else cpu."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16, float16, or auto (the checkpoint's)."""
    max_batch_size: int = 64
    """Most requests decoded together; larger batches are split."""
    seed: int = 0
    """Seed of the engine's sampling generator, used by requests without their own seed."""
    prefix_cache_tokens: int = 65536
    """Most tokens whose keys and values are kept for requests that continue them (a tree's children continue
    their parent; the samples of one prompt share its prefill), least recently used out first; 0 turns reuse off.
    Memory: 2 x layers x key/value heads x head size x dtype bytes per token (3 KB for the tiny model)."""


def read_state_dict(model_dir: Path | str) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors files in a model directory."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in model directory {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def expected_weights(config: Any) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Parameter names and shapes of a model built from a transformers config, and the names a checkpoint may omit
    (the output head when it is tied to the input embedding). Built on the meta device: no memory is allocated."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    tied = getattr(config, "tie_word_embeddings", False) or getattr(
        getattr(config, "get_text_config", lambda: config)(), "tie_word_embeddings", False
    )
    optional = {name for name in shapes if tied and name.endswith("lm_head.weight")}
    return shapes, optional


def validate_state_dict(
    state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], optional: set[str], source: str
) -> None:
    """Raise ValueError naming every unknown, missing or mis-shaped tensor of `state` (from `source`)."""
    problems = []
    unknown = sorted(set(state) - set(shapes))
    if unknown:
        problems.append(f"unknown tensors {unknown[:8]}")
    missing = sorted(set(shapes) - set(state) - optional)
    if missing:
        problems.append(f"missing tensors {missing[:8]}")
    for name, tensor in state.items():
        if name in shapes and tuple(tensor.shape) != shapes[name]:
            problems.append(f"{name} has shape {tuple(tensor.shape)}, expected {shapes[name]}")
    if problems:
        raise ValueError(f"weights from {source} do not fit the model: " + "; ".join(problems))


def pick_eos_token_ids(generation_eos: int | list[int] | None, config_eos: int | list[int] | None,
                       model_path: Path | str) -> tuple[int, ...]:
    """The generation config's EOS ids, else the model config's, in their listed order."""
    eos = generation_eos if generation_eos is not None else config_eos
    ids = (eos,) if isinstance(eos, int) else tuple(eos or ())
    if not ids:
        raise ValueError(f"model {model_path} defines no eos_token_id")
    return tuple(int(i) for i in ids)


def model_eos_token_ids(model_path: Path | str) -> tuple[int, ...]:
    """The EOS ids of a model directory: its generation config's, else its config's (no weights are loaded)."""
    from transformers import AutoConfig, GenerationConfig

    model_path = Path(model_path)
    generation_eos = None
    if (model_path / "generation_config.json").exists():
        generation_eos = GenerationConfig.from_pretrained(str(model_path)).eos_token_id
    return pick_eos_token_ids(generation_eos, AutoConfig.from_pretrained(str(model_path)).eos_token_id, model_path)


def pick_eos_token_id(generation_eos: int | list[int] | None, config_eos: int | list[int] | None,
                      model_path: Path | str) -> int:
    """The first of `pick_eos_token_ids`."""
    return pick_eos_token_ids(generation_eos, config_eos, model_path)[0]


def check_requests(requests: list[GenerationRequest], vocab_size: int) -> None:
    """Raise ValueError naming the first malformed request (by position and request_id)."""
    for index, request in enumerate(requests):
        where = f"request {index} (id {request.request_id!r})"
        if not request.prefix_ids:
            raise ValueError(f"{where}: prefix_ids is empty")
        if request.max_new_tokens < 0:
            raise ValueError(f"{where}: max_new_tokens must be >= 0, got {request.max_new_tokens}")
        bad = [t for t in request.prefix_ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"{where}: token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
        if request.sampling.temperature < 0 or not 0 < request.sampling.top_p <= 1:
            raise ValueError(
                f"{where}: need temperature >= 0 and 0 < top_p <= 1, got {request.sampling.temperature}, "
                f"{request.sampling.top_p}"
            )


def sample_rows(logits: torch.Tensor, temperatures: torch.Tensor, top_ps: torch.Tensor,
                generators: list[torch.Generator]) -> torch.Tensor:
    """The next token of every row: greedy where the temperature is 0, else temperature + top-p sampling.

    One uniform number per row comes from that row's own generator (so a seeded request samples the same tokens
    whatever else is in the batch); the tokens are then drawn for all rows at once by inverting the CDF.
    """
    greedy = temperatures == 0
    probs = torch.softmax(logits / torch.where(greedy, 1.0, temperatures)[:, None], dim=-1)
    if bool((top_ps < 1).any()):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_ps[:, None]
        probs = torch.zeros_like(probs).scatter(1, order, sorted_probs * keep)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    uniforms = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    cdf = torch.cumsum(probs.double(), dim=-1)
    # The first token whose CDF reaches the draw; a draw above zero never lands on a token of zero probability.
    draws = (uniforms.double() * cdf[:, -1]).clamp(min=torch.finfo(torch.float64).tiny)
    sampled = torch.searchsorted(cdf, draws[:, None]).squeeze(1).clamp(max=logits.shape[1] - 1)
    return torch.where(greedy, torch.argmax(logits, dim=-1), sampled)


class HFEngine(Engine):
    """Generation with a transformers causal LM loaded from a model directory."""

    def __init__(self, model_path: Path | str, config: HFEngineConfig | None = None, version: int = 0):
        from transformers import AutoModelForCausalLM

        self.config = config or HFEngineConfig()
        self.model_path = Path(model_path)
        if self.config.max_batch_size < 1:
            raise ValueError(f"HFEngineConfig.max_batch_size must be >= 1, got {self.config.max_batch_size}")
        if self.config.prefix_cache_tokens < 0:
            raise ValueError(f"HFEngineConfig.prefix_cache_tokens must be >= 0 (0: off), got "
                             f"{self.config.prefix_cache_tokens}")
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = self.config.dtype if self.config.dtype == "auto" else getattr(torch, self.config.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).to(self.device)
        self.model.eval()
        self._shapes, self._optional = expected_weights(self.model.config)
        self._eos_ids = pick_eos_token_ids(self.model.generation_config.eos_token_id,
                                           self.model.config.eos_token_id, model_path)
        self._eos = self._eos_ids[0]
        pad = self.model.config.pad_token_id
        self._pad = int(pad) if pad is not None else self._eos
        self._version = version
        self._generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self._prefix_cache = PrefixKVCache(self.config.prefix_cache_tokens) if self.config.prefix_cache_tokens else None

    @property
    def version(self) -> int:
        return self._version

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_ids

    def load_weights(self, source: Path | str | dict[str, Any], version: int, *, adopt: bool = False) -> None:
        if isinstance(source, Mapping):
            state, where = dict(source), "a state dict"
        else:
            # Tensors read here belong to nobody else, so they are adopted rather than copied.
            state, where, adopt = read_state_dict(source), str(source), True
        validate_state_dict(state, self._shapes, self._optional, where)
        self._load_state(state, adopt)
        self._version = version
        if self._prefix_cache is not None:
            self._prefix_cache.clear()  # keys and values of the old weights

    def _load_state(self, state: dict[str, torch.Tensor], adopt: bool) -> None:
        # A tied output head is the input embedding's own tensor, so loading the embedding loads the head too.
        # The head's entry, when a checkpoint has one, is left out so that it cannot overwrite the embedding.
        untied = {name: tensor for name, tensor in state.items() if name not in self._optional}
        adopted = self._adopt(untied) if adopt else set()
        to_copy = {name: tensor for name, tensor in untied.items() if name not in adopted}
        incompatible = self.model.load_state_dict(to_copy, strict=False)
        missing = set(incompatible.missing_keys) - self._optional - adopted
        if missing or incompatible.unexpected_keys:
            raise RuntimeError(f"loading weights left tensors {sorted(missing)[:8]} unset and "
                               f"{sorted(incompatible.unexpected_keys)[:8]} unused")

    def _adopt(self, state: dict[str, torch.Tensor]) -> set[str]:
        """Make the model's tensors those of `state` where dtype, device and layout already fit, and return their
        names; a copy of a large model's weights costs more than reading them from the parameter DB."""
        targets = dict(self.model.named_parameters())
        targets.update(self.model.named_buffers())
        adopted = set()
        for name, tensor in state.items():
            target = targets.get(name)
            if (target is not None and tensor.dtype == target.dtype and tensor.device == target.device
                    and tensor.is_contiguous()):
                target.data = tensor
                adopted.add(name)
        return adopted

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        check_requests(requests, self.model.config.vocab_size)
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prefix_ids))
        results: list[GenerationResult | None] = [None] * len(requests)
        size = self.config.max_batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            for index, result in zip(chunk, self._generate_batch([requests[i] for i in chunk]), strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    def stats(self) -> dict[str, int]:
        if self._prefix_cache is None:
            return {}
        return {**self._prefix_cache.stats.as_dict(), "cached_tokens": self._prefix_cache.tokens,
                "cached_prefixes": len(self._prefix_cache)}

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        room = max(r.max_new_tokens for r in requests)
        if self._prefix_cache is None:
            ids, mask, positions = self._left_padded([r.prefix_ids for r in requests], [0] * len(requests))
            return self._decode(requests, ids, mask, positions, reserved_cache(room))
        # Every prefix but its last token comes from the cache (computed first where missing); the first forward
        # then feeds one token per row.
        past, mask = self._stack_kv(self._prefix_kv(requests), room)
        ids = torch.tensor([[r.prefix_ids[-1]] for r in requests], device=self.device)
        positions = torch.tensor([[len(r.prefix_ids) - 1] for r in requests], device=self.device)
        mask = torch.cat([mask, torch.ones((len(requests), 1), dtype=mask.dtype, device=self.device)], dim=1)
        return self._decode(requests, ids, mask, positions, past)

    def _left_padded(self, sequences: list[list[int]], starts: list[int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids left-padded to one width, their mask, and positions counted from each row's start."""
        width = max(len(sequence) for sequence in sequences)
        ids = torch.full((len(sequences), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            if sequence:
                ids[row, width - len(sequence) :] = torch.tensor(sequence)
                mask[row, width - len(sequence) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0) + torch.tensor(starts, device=self.device)[:, None]
        return ids, mask, positions

    def _prefix_kv(self, requests: list[GenerationRequest]) -> list[list[LayerKV] | None]:
        """The keys and values of each request's prefix without its last token: cached, or computed once for all
        the requests that share it (and cached)."""
        cache, stats = self._prefix_cache, self._prefix_cache.stats
        keys = [tuple(r.prefix_ids[:-1]) for r in requests]
        found: dict[tuple[int, ...], list[LayerKV]] = {}
        missing: list[tuple[int, ...]] = []
        seen: set[tuple[int, ...]] = set()
        for key in keys:
            if not key:
                continue
            if key not in seen:
                seen.add(key)
                entry = cache.get(key)
                if entry is None:
                    missing.append(key)
                    stats.misses += 1
                    continue
                found[key] = entry
            stats.hits += 1
            stats.reused_tokens += len(key)
        size = self.config.max_batch_size
        for start in range(0, len(missing), size):
            found.update(self._compute_kv(missing[start : start + size]))
        return [found.get(key) for key in keys]

    def _compute_kv(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], list[LayerKV]]:
        """Compute the keys and values of token sequences, each from its longest cached prefix on."""
        cache = self._prefix_cache
        bases = [cache.longest_prefix(key) for key in keys]
        cache.stats.reused_tokens += sum(length for length, _ in bases)
        cache.stats.computed_tokens += sum(len(key) - length for key, (length, _) in zip(keys, bases, strict=True))
        past, past_mask = self._stack_kv([entry for _, entry in bases], room=0)
        ids, mask, positions = self._left_padded([list(key[length:]) for key, (length, _) in zip(keys, bases,
                                                                                              strict=True)],
                                                 [length for length, _ in bases])
        mask = torch.cat([past_mask, mask], dim=1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                         use_cache=True, logits_to_keep=1)
        computed = {}
        for row, key in enumerate(keys):
            computed[key] = _row_kv(out.past_key_values, row, mask[row])
            cache.put(key, computed[key])
        return computed

    def _stack_kv(self, rows: list[list[LayerKV] | None], room: int) -> tuple[DynamicCache, torch.Tensor]:
        """One left-padded batch cache of per-row keys and values (None: no tokens) with room for `room` more
        tokens, and its attention mask."""
        lengths = [entry[0][0].shape[1] if entry else 0 for entry in rows]
        width = max(lengths)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        for row, length in enumerate(lengths):
            mask[row, width - length :] = 1
        if width == 0:
            return reserved_cache(room), mask
        template = next(entry for entry in rows if entry)
        layers = []
        for layer, (layer_keys, layer_values) in enumerate(template):
            keys = layer_keys.new_zeros((len(rows), layer_keys.shape[0], width + room, layer_keys.shape[2]))
            values = layer_values.new_zeros((len(rows), layer_values.shape[0], width + room, layer_values.shape[2]))
            for row, entry in enumerate(rows):
                if entry:
                    keys[row, :, width - lengths[row] : width] = entry[layer][0]
                    values[row, :, width - lengths[row] : width] = entry[layer][1]
            layers.append(ReservedLayer.filled(keys, values, width, room))
        return reserved_cache(room, layers), mask

    def _decode(self, requests: list[GenerationRequest], step_ids: torch.Tensor, mask: torch.Tensor,
                step_positions: torch.Tensor, past: DynamicCache) -> list[GenerationResult]:
        """Sample until every row ends, feeding `step_ids` first; with the prefix cache on, a row that stops at
        its token limit leaves its keys and values there for the request that continues it."""
        rows = len(requests)
        generators = [
            torch.Generator(device=self.device).manual_seed(r.sampling.seed) if r.sampling.seed is not None
            else self._generator
            for r in requests
        ]
        temperatures = torch.tensor([r.sampling.temperature for r in requests], device=self.device)
        top_ps = torch.tensor([r.sampling.top_p for r in requests], device=self.device)
        tokens: list[list[int]] = [[] for _ in requests]
        logprobs: list[list[float]] = [[] for _ in requests]
        done = [r.max_new_tokens == 0 for r in requests]
        eos = [False] * rows
        active = list(range(rows))
        """The request row of each row of the running batch; finished rows leave it, so they cost nothing more."""
        while not all(done):
            out = self.model(
                input_ids=step_ids, attention_mask=mask, position_ids=step_positions,
                past_key_values=past, use_cache=True, logits_to_keep=1,
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            picked = sample_rows(logits, temperatures, top_ps, generators)
            picked_logprobs = log_probs.gather(1, picked[:, None]).squeeze(1).tolist()
            picked_list = picked.tolist()
            for slot, row in enumerate(active):
                if done[row]:
                    continue
                token = picked_list[slot]
                tokens[row].append(token)
                logprobs[row].append(picked_logprobs[slot])
                eos[row] = token in self._eos_ids
                done[row] = eos[row] or len(tokens[row]) >= requests[row].max_new_tokens
                if done[row] and not eos[row] and self._prefix_cache is not None:
                    # The cache holds the prefix and every sampled token but the last, which was never fed.
                    self._prefix_cache.put(tuple(requests[row].prefix_ids + tokens[row][:-1]),
                                           _row_kv(past, slot, mask[slot]))
            keep = [slot for slot, row in enumerate(active) if not done[row]]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                past.batch_select_indices(index)
                mask, step_positions, picked = mask[index], step_positions[index], picked[index]
                temperatures, top_ps = temperatures[index], top_ps[index]
                generators = [generators[slot] for slot in keep]
                active = [active[slot] for slot in keep]
            step_ids = picked[:, None].to(self.device)
            step_positions = step_positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=self.device)], dim=1)
        return [
            GenerationResult(r.request_id, tokens[row], logprobs[row], eos[row], self._version)
            for row, r in enumerate(requests)
        ]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._prefix_cache = None


def _row_kv(past: DynamicCache, row: int, row_mask: torch.Tensor) -> list[LayerKV]:
    """One row's keys and values at its unmasked positions, copied out of a batch cache (a boolean index copies)."""
    valid = row_mask.bool()
    return [(layer.keys[row][:, valid], layer.values[row][:, valid]) for layer in past.layers]
