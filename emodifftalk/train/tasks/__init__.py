"""Training tasks for the shared loop; each module registers itself with ``register_task``."""
