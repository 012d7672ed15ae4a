"""The experiment harness: the runner (:mod:`~agents.experiments.run`: one student under one agent), the bench
(:mod:`~agents.experiments.bench`: agents x seeds, resumable), reports and plots, W&B tracking, and the ``kd-gym
train`` / ``bench`` / ``demo`` command line with its flags generated from the config dataclasses.

Its modules depend one way (tests/test_layering.py checks that no import circle forms, lazy imports included):

- bottom: ``flags``, ``scores``, ``report``, ``plots``, ``tracking``, ``resume``, and ``monitor`` (the recorder of a run);
- ``protocol`` (online, train-eval) uses ``monitor``; ``run`` (one student) uses ``monitor``, ``protocol``, ``resume``;
- ``common`` (the run flags, :func:`~agents.experiments.common.run_one`) uses ``run``;
- ``cells`` (a cell's hash, folder and row) uses ``common``; ``sweep_check`` uses ``cells``;
- ``grid`` (sweeps across machines, merged reports) uses ``cells`` and ``sweep_check``; ``bench`` uses ``cells``
  and ``grid``; ``cli`` sits on top.

Policies live in :mod:`agents`; nothing here is needed to use one, and nothing in :mod:`agents` imports this
package.
"""
