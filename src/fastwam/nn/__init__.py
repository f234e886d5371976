"""Building blocks shared by both experts: norms, FFN, timestep embedding, RoPE, attention."""
