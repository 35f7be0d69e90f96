"""Multi-process runs on MXNet's parameter server (`lightnas launch`).

- `processes`: the launcher. Starts a scheduler, servers and workers (local processes on
  127.0.0.1, or over ssh from a host file), forwards their output with a `[worker k]` prefix,
  stops every role it started when one fails or on Ctrl-C. Imports no MXNet.
- `world`: what a worker sees. Its rank, the number of workers, the one distributed kvstore
  of the process (every Trainer gets its own key range on it), and small collectives (sums,
  broadcasts) the shared training loop uses so that all workers hold the same state.

Nothing here is imported at package import: the launcher process never loads MXNet.
"""
