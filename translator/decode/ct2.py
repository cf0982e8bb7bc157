"""Export to CTranslate2 and translate with it.

`export_ctranslate2` writes a CTranslate2 model folder built with CTranslate2's own Python
specification API from our weights (fused QKV, pre/post-norm, our sinusoidal table, the
sqrt(d_model) embedding scale, LayerNorm eps), beside the run's two tokenizers and a
`translator.json` holding the languages, special tokens and decoding defaults. That folder
alone is enough to translate (`CT2Translator.from_dir`). `ctranslate2` is an optional extra:
`pip install -e ".[ct2]"`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from translator.config import Config, DecodingConfig
from translator.data.tokenizer import SPECIAL_TOKENS, TextTokenizer
from translator.decode.engine import Engine, Scored
from translator.decode.search import in_batches, output_caps
from translator.decode.translator import Translator
from translator.errors import TranslatorError, first_line
from translator.files import atomic_write, check_replaceable, replace_dir
from translator.run import RunLayout, inference_config, tokenizer_file

QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "bfloat16", "float32")
META = "translator.json"
FORMAT = 1
INSTALL_HINT = "CTranslate2 is not installed: pip install 'translator[ct2]' (or ctranslate2)"
UNK, PAD, SOS, EOS = SPECIAL_TOKENS


INTRA_THREADS = 1
"""CTranslate2's threads per batch. One, measured: on a 2-core VM (Intel, AVX-512/AMX) a
d256 3+3 Multi30k model decoded 522 sentences/s batched and 129 at batch 1 with 1 thread,
but 94 and 16 with 2 (and the same with CTranslate2's default, with OMP_WAIT_POLICY=PASSIVE,
and with or without torch's pool in the process): for matrices this small, synchronising two
OpenMP threads at every operation costs more than the work it splits. The cores are used by
running batches side by side instead (`inter_threads`, one per core: 1,005 and 264).
`scripts/bench/ct2_threads.py` measures it; docs/benchmarks.md has the table."""


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_threads(intra: int, inter: int) -> tuple[int, int]:
    """(intra_threads, inter_threads) to give CTranslate2: `inter` 0 means one per core."""
    return intra, inter if inter > 0 else cpu_cores()


def _ct2() -> Any:
    try:
        import ctranslate2
    except ImportError as exc:
        raise TranslatorError(INSTALL_HINT) from exc
    return ctranslate2


def _vocabulary(tok: TextTokenizer) -> list[str]:
    """Token strings in id order: CTranslate2 maps tokens to ids through this list."""
    vocab = tok.tok.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


def build_spec(translator: Translator) -> Any:
    """The CTranslate2 `TransformerSpec` of a loaded run, its weights set from ours."""
    _ct2()
    from ctranslate2.specs import common_spec, transformer_spec

    model, cfg = translator.model, translator.cfg
    w = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    pre = cfg.model.norm == "pre"
    enc_layers = len(model.encoder.blocks)
    dec_layers = len(model.decoder.blocks)
    spec = transformer_spec.TransformerSpec.from_config(
        (enc_layers, dec_layers), cfg.model.heads, pre_norm=pre,
        activation=common_spec.Activation.RELU)
    norm_eps = model.encoder.blocks[0].res[0].norm.eps

    def linear(target: Any, name: str) -> None:
        target.weight = w[f"{name}.weight"]
        if f"{name}.bias" in w:
            target.bias = w[f"{name}.bias"]

    def norm(target: Any, name: str) -> None:
        target.gamma, target.beta = w[f"{name}.weight"], w[f"{name}.bias"]

    # Enough positions for the longest source and the longest output the defaults allow.
    dec = cfg.decoding
    positions = max(1024, math.ceil(dec.max_len_a * cfg.data.max_len + dec.max_len_b) + 2)
    table = model.tgt_pos.table(positions)[:positions].float().cpu().numpy()

    for side, stack, embed in (("encoder", spec.encoder, "src_embed"),
                               ("decoder", spec.decoder, "tgt_embed")):
        emb = stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings
        emb.weight = w[f"{embed}.embedding.weight"]
        stack.scale_embeddings = True  # ours multiply by sqrt(d_model), as CTranslate2 does
        stack.position_encodings.encodings = table
        if pre:
            norm(stack.layer_norm, f"{side}.norm")
        for i, layer in enumerate(stack.layer):
            p = f"{side}.blocks.{i}"
            linear(layer.self_attention.linear[0], f"{p}.self_attn.qkv_proj")
            linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
            norm(layer.self_attention.layer_norm, f"{p}.res.0.norm")
            if side == "decoder":
                linear(layer.attention.linear[0], f"{p}.cross_attn.q_proj")
                linear(layer.attention.linear[1], f"{p}.cross_attn.kv_proj")
                linear(layer.attention.linear[2], f"{p}.cross_attn.out_proj")
                norm(layer.attention.layer_norm, f"{p}.res.1.norm")
            ff = 2 if side == "decoder" else 1
            linear(layer.ffn.linear_0, f"{p}.ff.linear1")
            linear(layer.ffn.linear_1, f"{p}.ff.linear2")
            norm(layer.ffn.layer_norm, f"{p}.res.{ff}.norm")
    linear(spec.decoder.projection, "projection.proj")

    spec.config.unk_token, spec.config.bos_token = UNK, SOS
    spec.config.eos_token, spec.config.decoder_start_token = EOS, SOS
    spec.config.layer_norm_epsilon = float(norm_eps)
    spec.register_source_vocabulary(_vocabulary(translator.src_tok))
    spec.register_target_vocabulary(_vocabulary(translator.tgt_tok))
    return spec


def export_ctranslate2(run_dir: str | Path, out_dir: str | Path, quantization: str = "int8",
                       checkpoint: str | Path | None = None, force: bool = False) -> Path:
    """Write a CTranslate2 model folder for a run (default checkpoint: best.pt, else latest.pt)
    with `quantization` (one of QUANTIZATIONS), its tokenizers and `translator.json`. `force`
    replaces only an empty folder or a previous export (`translator.files.check_replaceable`),
    never the run folder or anything holding it."""
    if quantization not in QUANTIZATIONS:
        raise TranslatorError(f"unknown quantization '{quantization}' "
                              f"(choose from {', '.join(QUANTIZATIONS)})")
    _ct2()
    check_replaceable(out_dir, force, (Path(run_dir),))
    translator = Translator.from_run(run_dir, checkpoint, device="cpu", dtype="fp32")
    return save_ctranslate2(translator, out_dir, quantization, force=force,
                            run_dirs=(Path(run_dir),))


def save_ctranslate2(translator: Translator, out_dir: str | Path, quantization: str = "int8",
                     force: bool = False, run_dirs: tuple[Path, ...] = ()) -> Path:
    """Write a loaded (fp32) translator as a CTranslate2 model folder; `export_ctranslate2`
    does this for a run folder, the decode benchmark for a model it built itself. The folder
    is built under a fresh temp name beside `out_dir` and swapped in (`replace_dir`), so a
    crash leaves the old export or the new one whole."""
    if quantization not in QUANTIZATIONS:
        raise TranslatorError(f"unknown quantization '{quantization}' "
                              f"(choose from {', '.join(QUANTIZATIONS)})")
    check_replaceable(out_dir, force, run_dirs)
    spec = build_spec(translator)
    spec.validate()
    spec.optimize(quantization=quantization)
    cfg = translator.cfg
    ckpt = Path(translator.checkpoint) if translator.checkpoint else None
    meta = {
        "format": FORMAT,
        "src_lang": cfg.data.src_lang,
        "tgt_lang": cfg.data.tgt_lang,
        "max_len": cfg.data.max_len,
        "special_tokens": {"unk": UNK, "pad": PAD, "bos": SOS, "eos": EOS},
        "source_template": [SOS, "<tokens>", EOS],
        "decoding": {k: getattr(cfg.decoding, k)
                     for k in ("beam_size", "length_penalty", "max_len_a", "max_len_b")},
        "quantization": quantization,
        "checkpoint": ckpt.name if ckpt else None,
        "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns if ckpt else None,
        "model": {"d_model": cfg.model.d_model, "heads": cfg.model.heads,
                  "encoder_layers": len(translator.model.encoder.blocks),
                  "decoder_layers": len(translator.model.decoder.blocks),
                  "norm": cfg.model.norm},
    }

    def build(tmp: Path) -> None:
        spec.save(str(tmp))
        translator.src_tok.save(tmp / tokenizer_file(cfg.data.src_lang))
        translator.tgt_tok.save(tmp / tokenizer_file(cfg.data.tgt_lang))
        atomic_write(tmp / META, json.dumps(meta, indent=2) + "\n")

    return replace_dir(out_dir, build)


def cached_export(run_dir: str | Path, quantization: str = "int8",
                  checkpoint: str | Path | None = None) -> Path:
    """The run's export under <run>/export/ctranslate2-<quantization>, made (again) when it is
    missing or older than the checkpoint it would be made from."""
    layout = RunLayout(Path(run_dir))
    ckpt = Path(checkpoint) if checkpoint else layout.default_checkpoint()
    out = layout.ct2_export(quantization)
    meta_path = out / META
    if meta_path.is_file() and ckpt.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if (meta.get("checkpoint") == ckpt.name
                and meta.get("checkpoint_mtime_ns") == ckpt.stat().st_mtime_ns):
            return out
    return export_ctranslate2(run_dir, out, quantization, checkpoint, force=True)


class CT2Translator(Engine):
    """A CTranslate2 export loaded for translation: the engine interface
    (`translator.decode.engine.Engine`) over a `ctranslate2.Translator`, so the CLI, evaluate
    and the server use it as they use the native one.

    Length penalty: CTranslate2 divides a hypothesis' log-probability by
    length ** length_penalty, where ours uses GNMT's ((5 + length) / 6) ** length_penalty;
    with 0 both rank by the plain sum."""

    engine_name = "ctranslate2"
    quantization: str | None = None
    """The weights' type the export was made with (from translator.json)."""
    source_checkpoint: str | None = None
    """The name of the checkpoint the export was made from (from translator.json)."""

    def __init__(self, model_dir: Path, cfg: Config, src_tok: TextTokenizer,
                 tgt_tok: TextTokenizer, engine: Any, device: str) -> None:
        super().__init__(cfg, src_tok, tgt_tok, device, model_dir)
        self.engine = engine
        self._src_vocab = _vocabulary(src_tok)
        self._tgt_index = {t: i for i, t in enumerate(_vocabulary(tgt_tok))}

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu",
                 compute_type: str = "default", threads: int = INTRA_THREADS,
                 inter_threads: int = 0) -> CT2Translator:
        """Load an exported folder; its config holds the languages, max_len and decoding
        defaults of translator.json. `threads` is CTranslate2's intra_threads (threads per
        batch; 0: its default; `INTRA_THREADS` says why 1), `inter_threads` how many batches
        it runs at once (0: one per core)."""
        threads, inter_threads = resolve_threads(threads, inter_threads)
        ct2 = _ct2()
        path = Path(model_dir)
        meta_path = path / META
        if not meta_path.is_file():
            raise TranslatorError(f"{path} is not a translator CTranslate2 export "
                                  f"(no {META}); make one with translator export")
        try:
            meta = json.loads(meta_path.read_text())
            src_lang, tgt_lang = meta["src_lang"], meta["tgt_lang"]
        except (ValueError, KeyError) as exc:
            raise TranslatorError(f"{meta_path} is unreadable: {exc}") from exc
        if device == "auto":
            device = "cuda" if ct2.get_cuda_device_count() > 0 else "cpu"
        index = 0
        if device.startswith("cuda:"):
            device, index = "cuda", int(device.split(":", 1)[1])
        if device not in ("cpu", "cuda"):
            raise TranslatorError(f"the ctranslate2 engine runs on cpu or cuda, not '{device}'")
        if device == "cuda" and ct2.get_cuda_device_count() == 0:
            raise TranslatorError("device 'cuda' requested but CUDA is not available here")
        try:
            engine = ct2.Translator(str(path), device=device, device_index=index,
                                    compute_type=compute_type, intra_threads=threads,
                                    inter_threads=inter_threads)
        except (RuntimeError, ValueError) as exc:
            first = first_line(exc)
            raise TranslatorError(f"cannot load the CTranslate2 model in {path}: {first}")\
                from exc
        src_tok = TextTokenizer.load(path / tokenizer_file(src_lang))
        tgt_tok = TextTokenizer.load(path / tokenizer_file(tgt_lang))
        cfg = Config()
        cfg.data.src_lang, cfg.data.tgt_lang = src_lang, tgt_lang
        cfg.data.max_len = int(meta.get("max_len", cfg.data.max_len))
        cfg.decoding = DecodingConfig(**meta.get("decoding", {}))
        translator = cls(path, cfg, src_tok, tgt_tok, engine, device)
        translator.inter_threads = inter_threads
        translator.quantization = meta.get("quantization")
        translator.source_checkpoint = meta.get("checkpoint")
        return translator

    @classmethod
    def from_run(cls, run_dir: str | Path, quantization: str = "int8",
                 checkpoint: str | Path | None = None, device: str = "cpu",
                 overrides: Sequence[str] = (), threads: int = INTRA_THREADS,
                 inter_threads: int = 0) -> CT2Translator:
        """A run through its cached export (`cached_export`), with the config in force that
        `translator.run.inference_config` gives the native engine too, so that evaluate can
        read its splits and write to <run>/eval/."""
        layout = RunLayout(Path(run_dir))
        # The checkpoint is read for its config only: no weights are mapped into memory.
        cfg, _, path = inference_config(layout, checkpoint, overrides, map_location="meta")
        translator = cls.from_dir(cached_export(run_dir, quantization, path), device,
                                  threads=threads, inter_threads=inter_threads)
        translator.cfg.data, translator.cfg.output = cfg.data, cfg.output
        translator.cfg.decoding = cfg.decoding  # with any --set decoding.* applied
        return translator

    def search(self, src_ids: Sequence[Sequence[int]], decoding: DecodingConfig,
               n_best: int | None, batch_size: int) -> list[Scored]:
        """Per sentence, its n_best (ids, score) pairs (the best when `n_best` is None), in
        the length-sorted batches and with the output cap of `translator.decode.search`: a
        batch decodes to its longest cap and each sentence is cut at its own, which leaves
        greedy output exactly as ours.

        A beam's output cut at a cap is not what a search stopped there gives, but only a
        sentence whose best hypothesis reaches its cap can tell: those few are decoded again,
        grouped by cap, with the cap as the search's own limit. Deciding per cap for the whole
        batch instead would split a batch of mixed lengths into one call per length, a
        fraction of the batched speed (the server's batches are such mixes)."""
        k = n_best or 1

        def run(rows: list[Sequence[int]]) -> list[Scored]:
            caps = output_caps([len(ids) for ids in rows], decoding.max_len_a, decoding.max_len_b)
            results = self._decode(rows, caps, batch_size, decoding, k)
            if decoding.beam_size > 1:
                at_cap = [i for i, r in enumerate(results) if len(r[0][0]) >= caps[i]]
                for cap in sorted({caps[i] for i in at_cap}):
                    group = [i for i in at_cap if caps[i] == cap]
                    again = self._decode([rows[i] for i in group], [cap] * len(group),
                                         batch_size, decoding, k)
                    for i, r in zip(group, again, strict=True):
                        results[i] = r
            return results

        if self.inter_threads <= 1:
            return in_batches(src_ids, batch_size, run)
        # CTranslate2 releases the GIL: batches submitted from several threads run on its
        # inter_threads replicas side by side (the cores are used across batches).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.inter_threads) as pool:
            return in_batches(src_ids, batch_size, run, mapper=pool.map)

    def _decode(self, rows: Sequence[Sequence[int]], caps: list[int], batch_size: int,
                dec: DecodingConfig, n_best: int) -> list[Scored]:
        """Decode sentences `rows` in one call to their longest cap; each one's n-best, cut
        at its own cap."""
        tokens = [[SOS, *(self._src_vocab[t] for t in ids), EOS] for ids in rows]
        outs = self.engine.translate_batch(
            tokens, max_batch_size=batch_size, beam_size=dec.beam_size,
            num_hypotheses=n_best,
            length_penalty=dec.length_penalty if dec.beam_size > 1 else 0.0,
            max_decoding_length=max(caps), min_decoding_length=0,
            return_scores=True, max_input_length=0)
        return [[([self._tgt_index[t] for t in hyp[:cap]], float(score))
                 for hyp, score in zip(out.hypotheses, out.scores, strict=True)]
                for out, cap in zip(outs, caps, strict=True)]
