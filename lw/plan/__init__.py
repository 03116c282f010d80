"""The planner: what a run would do and need, computed without loading weights (`dry_run=true`), and
the offload decision of `launcher.deepspeed: auto`. Below lw/launch/ and lw/tasks/, which hand it
the trainer module and the launch command.

training.py   task=train and task=prepare's plan: data, steps, the report and plan.json
eval.py       task=eval's plan: prompts, tokens to generate, the judge's calls and cost
attention.py  the attention implementation of the workers' device, and a dense mask's cost with packs
memory.py     GPU memory per rank and host memory per node
deepspeed.py  the DeepSpeed config files, their "auto" values filled
offload.py    launcher.deepspeed=auto: the fastest config that fits
flops.py      training FLOPs (attention within each sample of a pack)
trainer_plan.py  what a trainer adds to a plan (its `plan` hook)

Nothing is imported here, so the light modules stay light (experiments/gpu_check.py imports
flops.py where omegaconf and Hydra are not installed).
"""
