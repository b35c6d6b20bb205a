"""The node agent: ``python -m ringflow.agent`` starts one host's ranks for ``ringflow run``.

The launcher starts one agent per host (over ssh, or directly for local hosts) and writes the job
spec to its stdin as one JSON line; the job secret travels there, never in argv where ``ps``
would show it. The agent then:

- forks each of the host's ranks in a session of its own, with the agent's environment, the
  spec's allow-listed ``env`` and the rank's ``RINGFLOW_*`` variables;
- copies each rank's stdout / stderr line by line to its own, prefixed ``[rank] ``;
- reports ``<nonce> started <rank> <pid>`` and ``<nonce> exit <rank> <returncode> <unix time>`` lines on
  stdout, tagged with the job's nonce so that nothing a rank (or a login script) prints can pass
  for one;
- obeys ``stop <signal>`` lines on stdin: that signal to every rank's process group, SIGKILL
  after the grace period;
- stops its ranks the same way (SIGTERM) when stdin closes, i.e. when the launcher or its ssh
  connection goes away, or when the agent itself gets SIGTERM / SIGHUP / SIGINT;
- exits 0 when every rank exited 0, else with the first failing rank's code.

Spec fields: ``nonce``, ``command`` (argv), ``env`` (name → value), ``cwd`` (used when it exists
here), ``host`` (the host entry: the ranks' RINGFLOW_HOST_ID), ``size``, ``store_addr``,
``store_port``, ``secret``, ``job_id``, ``grace_period``, ``bind_to`` ("none" | "core") and
``ranks``: a list of ``{rank, local_rank, local_size, cross_rank, cross_size}``.
"""

from __future__ import annotations

from .node import main
from .spec import Spec, rank_environment

__all__ = ["Spec", "main", "rank_environment"]
