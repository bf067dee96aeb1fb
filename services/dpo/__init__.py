"""DPO trainer service: preference tuning with TRL's DPOTrainer (LoRA by default)."""
