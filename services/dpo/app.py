"""DPO trainer service: TRL's DPOTrainer on prompt/chosen/rejected data (LoRA, QLoRA or full)."""

from common.service import create_service_app
from services.dpo.backend import DPOBackend

app = create_service_app(DPOBackend())
