"""Per-layer parallelism of a pipeline stage, torch-native, one module per concern:

- mesh.py: the process groups and 2-D (dp, tp) device meshes the plan needs, created alike on every rank;
- redistribute.py: moving an activation between layers whose layouts differ (and its gradient back);
- tensor_parallel.py: DTensor TP by galvatron_models' sharding plan of each layer kind;
- fsdp.py: FSDP2 ``fully_shard`` per layer on its dp mesh (zero1 / zero2 / zero3), and the root; zero1's
  gradient reduction deferred to the last micro-batch;
- buckets.py: ddp's gradient all-reduce, one bucket per layer, launched during the last micro-batch's backward;
- grads.py: completing ddp's all-reduce, sequence-parallel partial sums, the tied embedding's copies, clipping;
- pipeline.py: the torch.distributed.pipelining schedule of a stage;
- parallelize.py: ``parallelize_stage``, applying them in order (TP, recompute, FSDP2, root).
"""
from .buckets import DdpBuckets
from .grads import clip_grads, local, sync_grads
from .mesh import Env, make_env, needed_groups
from .parallelize import Unit, parallelize_stage
from .pipeline import make_schedule
from .redistribute import move

__all__ = ["DdpBuckets", "Env", "Unit", "clip_grads", "local", "make_env", "make_schedule", "move", "needed_groups",
           "parallelize_stage", "sync_grads"]
