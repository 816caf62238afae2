"""Shim until the UI stops importing these; delete with IN_RAY_QUEUE.

The Ray executor lives in engine/executors/ray.py (with the placement codes RAY_GPU, RAY_CPU,
RAY_PLACEMENTS) and the registry (executor_name, RAY, ENV_EXECUTOR) in engine/executors/__init__.py.
These are exactly the names pages/ imports from here, and those ui/ and analysis/ import on wt16.
"""
from __future__ import annotations

from engine.executors import ENV_EXECUTOR, RAY, executor_name
from engine.executors.ray import RAY_CPU, RAY_GPU, RAY_PLACEMENTS, RayNode, cluster_nodes, cpus_per_run, ray_address

# How a run handed to Ray and not started yet reads on the pages (screen words: they belong to the UI).
IN_RAY_QUEUE = {RAY_GPU: "in Ray's queue, waiting for a free GPU", RAY_CPU: "in Ray's queue, waiting for free CPUs"}

__all__ = ["ENV_EXECUTOR", "IN_RAY_QUEUE", "RAY", "RAY_CPU", "RAY_GPU", "RAY_PLACEMENTS", "RayNode", "cluster_nodes",
           "cpus_per_run", "executor_name", "ray_address"]
