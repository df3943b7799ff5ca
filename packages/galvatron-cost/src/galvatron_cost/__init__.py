"""galvatron-cost: fitted time and memory models of every candidate layer strategy.

    from galvatron_cost import fit
    cost_model = fit(hardware_profile, model_profile, nodes=2, gpus_per_node=8)   # a cost-model document (dict)
"""
__version__ = "0.1.0"

from galvatron_cost.costmodel import fit  # noqa: E402

__all__ = ["fit", "__version__"]
