"""The model: the paper's Transformer (`transformer`; tensors in, tensors out, no files) and,
beside its decoder block, the fast cached one-token step the searches use (`fast_step`).

`from translator.model import build_transformer, Transformer` is the seed API the tutorials
use: `build_transformer(src_vocab, tgt_vocab, src_seq_len, tgt_seq_len, d_model=512, N=6,
h=8, dropout=0.1, d_ff=2048)`.
"""

from translator.model.transformer import Transformer, build_transformer

__all__ = ["Transformer", "build_transformer"]
