"""Training tokens/s of the model alone (d_model 256, 3+3 layers, dropout 0.1; 25 AdamW steps
of 64 x 30 random tokens after 3 warm-up steps): the A/B of a model-side change, run once in
each checkout, alternating (`python scripts/bench/train_step.py LABEL`).
"""

import sys
import time

import torch
import torch.nn.functional as F

from translator.model.transformer import build_transformer

torch.set_num_threads(2)
torch.manual_seed(0)
m = build_transformer(8000, 8000, 100, 100, d_model=256, N=3, h=4, dropout=0.1, d_ff=512)
m.train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
src = torch.randint(4, 8000, (64, 28))
tgt = torch.randint(4, 8000, (64, 30))


def step() -> None:
    logits = m(src, tgt[:, :-1], None)
    loss = F.cross_entropy(logits.reshape(-1, 8000), tgt[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(25):
    step()
tokens_per_s = 25 * 64 * 58 / (time.perf_counter() - start)
print(sys.argv[1] if len(sys.argv) > 1 else "", round(tokens_per_s), "tokens/s")
