"""HuggingFace trainer service: transformers + PEFT (LoRA, QLoRA, full) via TRL's SFTTrainer."""

from common.service import create_service_app
from services.huggingface.backend import HuggingFaceBackend

app = create_service_app(HuggingFaceBackend())
