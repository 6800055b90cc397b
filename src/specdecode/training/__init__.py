"""Training small modules on top of a target model (draft heads), by self-distillation."""
