"""The specification of M³ViT: configuration, cost model, float reference model and (later) the integer
golden model. Imports neither `hw` nor `firmware`; torch is imported only by `golden.float_model`."""
