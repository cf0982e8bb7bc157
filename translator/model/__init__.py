"""The model: the paper's Transformer (`transformer`; tensors in, tensors out, no files) and the
byte-mask dropout (`fast_dropout`)."""
