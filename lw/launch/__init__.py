"""Distributed training launched from the Hydra job: driver.py starts and watches the workers with
the trainer and DeepSpeed config file its caller hands it; topology.py works out nodes, ranks and
the rendezvous. The planner (lw/plan/) sits below this package and is never imported from it."""
