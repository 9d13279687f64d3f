"""Training: pretraining, SFT and DPO through one loop (trainer.py), with LoRA/QLoRA, FSDP2 and HF export.

data.py makes rows and batches, losses.py the loss functions, lora.py the adapters, distributed.py
torchrun/FSDP2/checkpoints, export.py the HF directory, estimate.py the memory estimate, run.py puts
them together for `zen train`. Nothing here drives the inference engine.
"""
