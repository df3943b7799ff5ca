"""galvatron-cost: fitted time and memory models of every candidate layer strategy.

    from galvatron_cost import fit, calibrate
    cost_model = fit(hardware_profile, model_profile, nodes=2, gpus_per_node=8)   # a cost-model document (dict)
    refined = calibrate(cost_model, [run_report])       # the terms the run-reports measured, refined
"""
__version__ = "0.1.0"

from galvatron_cost.calibrate import calibrate  # noqa: E402
from galvatron_cost.costmodel import fit  # noqa: E402

__all__ = ["fit", "calibrate", "__version__"]
