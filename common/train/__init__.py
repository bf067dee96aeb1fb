"""The training program that runs inside a job: ``python -m common.train SPEC_URI``."""
