"""Tensor parallelism over torch.distributed: plan.py (what each rank holds), shard.py (cutting a loaded model
to one rank's shard), step.py (rank 0's step inputs to the other ranks), launch.py (starting and stopping the
ranks), worker.py (the loop a rank other than 0 runs). Nothing here is imported unless tp > 1 is asked for.
"""
