"""The core: open_clip tower access, the prompted-tower engine, tokenisation, the encoder contract,
the method registry, checkpoints and model creation. It imports no method, dataset or training code."""
