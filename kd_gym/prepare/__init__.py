"""What kd-gym computes once, before any step: disk caches, batched teacher and encoder inference, sentence
embeddings, the default teacher pool, and the tensors an environment indexes.

Nothing in this subpackage runs inside ``env.step``; the per-step code (``kd_gym.env``, ``kd_gym.student``,
``kd_gym.losses``, ``kd_gym.features``, ``kd_gym.rewards``) only indexes what is prepared here.
"""
