"""TreePO tree sampling: config, the sampler state machine and its plain-data results."""

from zrl.rl.tree.config import TreeSamplerConfig
from zrl.rl.tree.sampler import GenerateFn, TreeSampler, merge_stats
from zrl.rl.tree.trajectory import Status, Trajectory, TreeResult, TreeStats

__all__ = ["GenerateFn", "Status", "TreeResult", "TreeSampler", "TreeSamplerConfig", "TreeStats", "Trajectory",
           "merge_stats"]
