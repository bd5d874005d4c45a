"""edge_runtime: LLM driving controllers pruned during closed-loop training, exported and run on the edge."""
__version__ = "0.1.0"
