from galvatron_contracts.launch import run_as_rank
from galvatron_probe.cli import main

if __name__ == "__main__":
    run_as_rank(main)   # a torchrun rank ends by os._exit after its outputs (see exit_rank)
