"""The pure core: the network, costs, optimizers, transforms, the run schema, the step, the epoch
and the whole run as pure functions, groups trained under ``vmap``, and metrics.

It imports only jax, optax, numpy (and the standard library): no files, no printing, no
sockets, no environment. The application shell (``jaxdigits.driver``, ``training``, ``sweeps``,
the folders, data files, reports, server and CLI) calls into it, never the reverse.
"""
