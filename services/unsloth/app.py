"""Unsloth trainer service. Its jobs run in the Unsloth environment (``.venv-unsloth``, see
``services.unsloth.backend.job_python``); this process itself never imports unsloth or torch."""

from common.service import create_service_app
from common.settings import get_settings
from services.unsloth.backend import UnslothBackend, job_python

settings = get_settings()
settings = settings.model_copy(update={"python_executable": job_python(settings.python_executable)})
app = create_service_app(UnslothBackend(python=settings.python_executable), settings)
