"""One router module per resource; app.py collects them."""
