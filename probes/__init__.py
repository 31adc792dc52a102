"""Things that are *fit* on activations (behaviour probes, context knobs)."""

from probes.linear import BehaviorProbe, ProbeSweep, collect_features, probe_sweep

__all__ = ["BehaviorProbe", "ProbeSweep", "collect_features", "probe_sweep"]
