"""This machine (chip, memory, budget, bandwidth) and the arithmetic of memory that every
estimate shares (the engine's plan, the fitted recipes, training). Imports models, storage."""
