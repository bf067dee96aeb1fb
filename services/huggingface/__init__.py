"""The HuggingFace (transformers + PEFT + TRL) trainer service."""
