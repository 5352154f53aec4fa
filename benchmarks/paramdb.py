"""Parameter DB throughput against the floor on the same filesystem, in the same run.

    python benchmarks/paramdb.py [--dir .cache/bench] [--tensors 16] [--tensor-mib 64] [--repeats 3]

Push is compared with `cp` of the same safetensors bytes (and `cp` followed by `sync`, since a push is
fsynced), and with `torch.save`; get is compared with reading the same files into memory and with
`torch.load(weights_only=True)`. Reads are timed warm (page cache) and, when /proc/sys/vm/drop_caches is
writable, cold too. The figures go to the "paramdb" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from report import markdown_table, update_section

from zrl.paramdb import ParamDB, ParamDBConfig

REPO = Path(__file__).resolve().parent.parent


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache; False when not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
    except OSError:
        return False
    return True


def timed_rounds(actions: dict[str, tuple[Callable[[], object], Callable[[], object] | None]],
                 repeats: int) -> dict[str, float]:
    """Median seconds of each action; rounds run every action once in turn, so load spikes hit them alike.

    Each action comes with an untimed `before` step (or None) run just ahead of it.
    """
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, (action, before) in actions.items():
            if before is not None:
                before()
            start = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path`, as `df` reports it."""
    out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True)
    lines = out.stdout.split()
    return lines[-1] if out.returncode == 0 and len(lines) > 1 else "unknown filesystem"


def read_into_memory(paths: list[Path]) -> None:
    for path in paths:
        buffer = torch.empty(path.stat().st_size, dtype=torch.uint8)
        with open(path, "rb", buffering=0) as handle:
            view = memoryview(buffer.numpy())
            position = 0
            while count := handle.readinto(view[position:]):
                position += count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".cache" / "bench",
                        help="directory on the filesystem to measure (temporary files go under it)")
    parser.add_argument("--tensors", type=int, default=16, help="number of float32 tensors")
    parser.add_argument("--tensor-mib", type=int, default=64, help="size of each tensor in MiB")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per operation (the median is kept)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="paramdb-", dir=args.dir))
    try:
        rows, notes = run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_gib = args.tensors * args.tensor_mib / 1024
    where = args.dir.resolve()
    shown = where.relative_to(REPO) if where.is_relative_to(REPO) else where
    table = markdown_table(["operation", "seconds", "GiB/s", "ratio to floor"], rows)
    body = (f"{args.tensors} float32 tensors of {args.tensor_mib} MiB ({total_gib:.2f} GiB), median of "
            f"{args.repeats} runs, files under `{shown}` ({filesystem(where)}).\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes))
    print(body)
    if not args.no_doc:
        update_section("paramdb", "Parameter DB push / get", "python benchmarks/paramdb.py", body)


def run(work: Path, args: argparse.Namespace) -> tuple[list[list[object]], list[str]]:
    numel = args.tensor_mib * (1 << 20) // 4
    state = {f"layer{i}.weight": torch.empty(numel).uniform_() for i in range(args.tensors)}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    db = ParamDB(work / "db", "bench", "t0")
    version = db.version_path("policy", 1)
    unsynced_db = ParamDB(work / "db", "bench", "t0", config=ParamDBConfig(fsync=False))
    unsynced = unsynced_db.version_path("policy", 2)

    copy = work / "copy"
    saved = work / "state.pt"

    def before_push() -> None:
        shutil.rmtree(version, ignore_errors=True)
        os.sync()

    def before_copy() -> None:
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        os.sync()

    def before_save() -> None:
        saved.unlink(missing_ok=True)
        os.sync()

    db.push("policy", state, 1)
    shards = [str(path) for path in sorted(version.glob("*.safetensors"))]

    def cp() -> None:
        subprocess.run(["cp", *shards, str(copy)], check=True)

    def cp_sync() -> None:
        cp()
        subprocess.run(["sync", *[str(copy / Path(s).name) for s in shards]], check=True)

    seconds = timed_rounds({
        "push (fsynced)": (lambda: db.push("policy", state, 1), before_push),
        "push (no fsync)": (lambda: unsynced_db.push("policy", state, 2),
                            lambda: (shutil.rmtree(unsynced, ignore_errors=True), os.sync())),
        "cp": (cp, before_copy),
        "cp + sync": (cp_sync, before_copy),
        "torch.save": (lambda: torch.save(state, saved), before_save),
    }, args.repeats)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(unsynced, ignore_errors=True)
    files = [Path(s) for s in shards]
    reads = {
        "get": lambda: db.get("policy", 1),
        "read files": lambda: read_into_memory(files),
        "torch.load": lambda: torch.load(saved, weights_only=True),
    }
    for action in reads.values():
        action()
    seconds.update(timed_rounds({f"{name} (warm)": (action, None) for name, action in reads.items()},
                                args.repeats))
    cold = drop_caches()
    if cold:
        seconds.update(timed_rounds({f"{name} (cold)": (action, drop_caches) for name, action in reads.items()},
                                    args.repeats))

    floors = {"push (fsynced)": "cp", "push (no fsync)": "cp", "torch.save": "cp"}
    for cache in ("warm", "cold"):
        floors[f"get ({cache})"] = f"read files ({cache})"
        floors[f"torch.load ({cache})"] = f"read files ({cache})"
    rows = []
    for name, value in seconds.items():
        floor = floors.get(name)
        ratio = f"{seconds[floor] / value:.2f} x {floor}" if floor else "floor"
        rows.append([name, f"{value:.3f}", f"{nbytes / value / (1 << 30):.2f}", ratio])
    notes = [
        f"push / cp = {seconds['cp'] / seconds['push (fsynced)']:.2f} (target >= 0.8); push / cp + sync = "
        f"{seconds['cp + sync'] / seconds['push (fsynced)']:.2f} (a push is durable, plain cp is not); "
        f"push without fsync / cp = {seconds['cp'] / seconds['push (no fsync)']:.2f}; push / torch.save = "
        f"{seconds['torch.save'] / seconds['push (fsynced)']:.2f} (target >= 1).",
        "Ratios are throughput ratios (floor time / our time); above 1 means faster than the floor.",
        "push writes 512 MiB shards on 2 threads (the defaults), computes an XXH3-128 checksum while writing, "
        "starts writeback as it goes and fsyncs every file; cp (one process over the same shard files) and "
        "torch.save do not fsync.",
        "get verifies the checksum of every file and returns tensors that map the files copy-on-write, so it "
        "reads every byte (from disk when cold) but copies none; read files and torch.load copy into memory.",
    ]
    for cache in ("warm", "cold") if cold else ("warm",):
        notes.append(f"{cache}: get / read = {seconds[f'read files ({cache})'] / seconds[f'get ({cache})']:.2f} "
                     f"(target >= 0.8); get / torch.load = "
                     f"{seconds[f'torch.load ({cache})'] / seconds[f'get ({cache})']:.2f} (target >= 1).")
    if not cold:
        notes.append("/proc/sys/vm/drop_caches is not writable here, so reads are warm only.")
    return rows, notes


if __name__ == "__main__":
    main()
