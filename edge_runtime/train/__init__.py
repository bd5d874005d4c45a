"""Training side: SFT, closed-loop RL and the pruning recipes (may import torch / transformers)."""
