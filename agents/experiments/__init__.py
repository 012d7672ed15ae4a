"""The experiment harness: the runner (:mod:`~agents.experiments.run`: one student under one agent), the bench
(:mod:`~agents.experiments.bench`: agents x seeds, resumable), reports and plots, W&B tracking, and the ``kd-gym
train`` / ``bench`` / ``demo`` command line with its flags generated from the config dataclasses.

Policies live in :mod:`agents`; nothing here is needed to use one, and nothing in :mod:`agents` imports this
package.
"""
