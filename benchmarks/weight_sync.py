"""Weight sync: from the trainer's push to a policy worker answering with the new version, against the parameter
DB's own push + get of the same weights, in the same run.

    python benchmarks/weight_sync.py [--models tiny,qwen2.5-0.5b-shape] [--repeats 3] [--dir .cache/bench-sync]

A real `PolicyWorker` (hf engine) polls in a thread and serves the inference stream; a client keeps asking it for
one token. Each timed round pushes version v through `ParamDB.push` (which announces it in the name service) and
stops the clock at the first response stamped v. The floor is `push` followed by `get` of the same weights.
"qwen2.5-0.5b-shape" is a randomly initialised model of Qwen2.5-0.5B's shape (tied embeddings, 494M parameters).
The figures go to the "weight_sync" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
from pathlib import Path

import torch
from report import markdown_table, update_section
from transformers import Qwen2Config, Qwen2ForCausalLM

from zrl.nameresolve import make_name_resolver, names
from zrl.paramdb import ParamDB
from zrl.rl.tiny_model import build_tiny_model
from zrl.streams import NameResolvingInferenceClient
from zrl.workers.base import WorkerContext
from zrl.workers.policy import PolicyWorker
from zrl.workers.treepo_config import ModelSource, PolicyConfig

REPO = Path(__file__).resolve().parent.parent
QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
                eos_token_id=151643, bos_token_id=151643)


def model_dir(kind: str, work: Path) -> Path:
    if kind == "tiny":
        return build_tiny_model()
    target = work / kind
    if not (target / "config.json").exists():
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**QWEN_05B)).save_pretrained(str(target))
    return target


class ServedPolicy:
    """A PolicyWorker polling in a background thread, and a client that asks it for one token at a time."""

    def __init__(self, path: Path, paramdb_root: Path, resolver, trial: str):
        context = WorkerContext("bench", trial, "policy", 0)
        self.worker = PolicyWorker(context, resolver)
        config = PolicyConfig(model=ModelSource(path=str(path), paramdb_root=str(paramdb_root)))
        self.worker._configure(config)
        self.worker.config = config
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        self.client = NameResolvingInferenceClient(resolver, names.inference_stream("bench", trial, "policy"))

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.worker._poll()

    def version_served(self) -> int:
        return int(self.client.call({"prefix": [1, 2, 3], "max_new_tokens": 1}, timeout=120)["version"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.client.close()
        self.worker._close()


def measure(kind: str, work: Path, repeats: int) -> dict[str, float]:
    path = model_dir(kind, work)
    model = Qwen2ForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    resolver = make_name_resolver("memory://")
    trial = f"t{int(time.time())}"
    root = work / "params"
    shutil.rmtree(root, ignore_errors=True)
    db = ParamDB(root, "bench", trial, name_resolver=resolver)
    floor_db = ParamDB(root, "bench", f"{trial}-floor")
    served = ServedPolicy(path, root, resolver, trial)
    sync, floor = [], []
    try:
        served.version_served()  # warm up
        for version in range(1, repeats + 1):
            started = time.perf_counter()
            db.push("policy", model, version)
            while served.version_served() != version:
                pass
            sync.append(time.perf_counter() - started)
            started = time.perf_counter()
            floor_db.push("policy", model, version)
            floor_db.get("policy", version)
            floor.append(time.perf_counter() - started)
    finally:
        served.close()
        shutil.rmtree(root, ignore_errors=True)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "sync_s": statistics.median(sync), "floor_s": statistics.median(floor)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,qwen2.5-0.5b-shape")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=str(REPO / ".cache" / "bench-sync"))
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.models.split(","):
        result = measure(kind, work, args.repeats)
        ratio = result["sync_s"] / result["floor_s"]
        rows.append([kind, f"{result['params'] / 1e6:.1f}M", f"{result['sync_s']:.3f}", f"{result['floor_s']:.3f}",
                     f"{ratio:.2f}x (target <= 1.5x)"])
        print(rows[-1], flush=True)
    body = ("Push to served: `ParamDB.push` of version v until a policy worker (hf engine, float32, CPU) answers a "
            "request stamped v. Floor: `ParamDB.push` + `ParamDB.get` of the same weights. Median of "
            f"{args.repeats} rounds.\n\n"
            + markdown_table(["model", "parameters", "push to served s", "push + get s", "ratio"], rows) + "\n")
    print(body)
    if not args.no_doc:
        update_section("weight_sync", "Weight sync: trainer push to policy serving", "make bench-sync", body)


if __name__ == "__main__":
    main()
