"""Turning a checkpoint into an MLX model: streaming conversion, error-corrected rounding
(GPTQ), sensitivities, the size-budgeted allocation, distillation and the fitted pipeline that
runs them, with its memory estimate. Imports the model, engine, evaluate and lower layers."""
