#!/usr/bin/env python3
"""Full-size random-weight reference for the Rust/candle CLAP port (HF transformers `ClapModel`).

Builds a `ClapModel` with the *real* architecture of a LAION checkpoint (config taken from
tests/fixtures/clap/configs/<config>.json) but random weights, and writes a reference in exactly the
format of the tiny fixtures. Everything that matters is imported from tools/make_clap_fixtures.py: the
non-degenerate weight init (`build_model` / `reinit_weights`), the 600-entry byte-level BPE tokenizer, the
test signals, the 10 s windowing policy, the feature extractor settings and the reference computation /
writer. No model hub access is needed.

Usage:
    python tools/make_full_size_reference.py --config larger_clap_music_and_speech --out /tmp/full-lcms
    python tools/make_full_size_reference.py --config clap-htsat-unfused --out /tmp/full-unfused
    # on a GPU machine: reference computed in bf16 on CUDA (weights on disk stay f32)
    python tools/make_full_size_reference.py --config larger_clap_music_and_speech --out /tmp/full-lcms-bf16 \\
        --device cuda --dtype bfloat16

Outputs (under --out; the model is ~776 MB for larger_clap_music_and_speech, so never inside the repo):
    model/       HF layout: config.json, model.safetensors (f32), preprocessor_config.json,
                 tokenizer.json, tokenizer_config.json, special_tokens_map.json
    reference/<config>.safetensors, reference/<config>.json   same tensors / manifest keys as
                 tests/fixtures/clap/reference/tiny-a.*, plus a "full_size" manifest entry (config, seed,
                 device, dtype, timings)

The config keeps the real vocab_size (50265) although the tokenizer only has 600 entries (its ids are a
subset, so they are all valid). Then run the Rust check:
    TRAUM_FULL_SIZE_FIXTURE=/tmp/full-lcms cargo test --release -p clap-model --test parity -- --ignored --nocapture
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Before torch initialises cuBLAS: needed for deterministic CUDA matmuls.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_clap_fixtures as mcf  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "larger_clap_music_and_speech": REPO / "tests/fixtures/clap/configs/larger_clap_music_and_speech.json",
    "clap-htsat-unfused": REPO / "tests/fixtures/clap/configs/clap-htsat-unfused.json",
}
# Different seeds, so that the two configs' (identical) RoBERTa-base text towers get different weights.
DEFAULT_SEEDS = {"larger_clap_music_and_speech": 1234, "clap-htsat-unfused": 4321}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--out", required=True, type=Path, help="output directory (outside the repository)")
    ap.add_argument("--device", default="cpu", help="torch device for the reference forward passes: cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                    help="dtype of the reference forward passes (the saved weights are always float32)")
    ap.add_argument("--seed", type=int, default=None,
                    help="weight seed (torch.manual_seed; the re-init uses seed+1); default "
                         + ", ".join(f"{k} {v}" for k, v in DEFAULT_SEEDS.items()))
    args = ap.parse_args()
    if args.seed is None:
        args.seed = DEFAULT_SEEDS[args.config]

    out = args.out.resolve()
    if out == REPO or REPO in out.parents:
        ap.error(f"--out {out} is inside the repository; the full-size model is ~776 MB, write it elsewhere")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)

    import transformers
    from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

    name = args.config
    model_dir = out / "model"
    ref_dir = out / "reference"
    for d in (model_dir, ref_dir):
        if d.exists():
            shutil.rmtree(d)
    model_dir.mkdir(parents=True)

    config = ClapConfig.from_json_file(str(CONFIGS[name]))
    assert config.text_config.vocab_size == 50265, config.text_config.vocab_size

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        tok_src = mcf.train_tokenizer(Path(td) / "tok")
        model = mcf.build_model(config, args.seed)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(model_dir))
        del model
        assert (model_dir / "model.safetensors").exists(), sorted(p.name for p in model_dir.iterdir())
        ClapFeatureExtractor(**mcf.FEATURE_EXTRACTOR_KW).save_pretrained(str(model_dir))
        mcf.write_tokenizer(model_dir, tok_src, "tokenizer.json")
    t_built = time.perf_counter()
    print(f"[{name}] wrote {model_dir} ({n_params / 1e6:.1f} M parameters) in {t_built - t_start:.1f} s")

    signals = {c: mcf.make_signal(mcf.n_samples(secs), seed) for c, secs, seed in mcf.CLIPS}
    fe = ClapFeatureExtractor.from_pretrained(str(model_dir))
    feats = mcf.compute_features(fe, signals)

    model = ClapModel.from_pretrained(str(model_dir)).eval().float().to(device=device, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    # Inside one forward pass the projection of `pooled` must equal the embedding; in half precision the
    # two code paths may round differently.
    proj_atol = 1e-5 if dtype == torch.float32 else 3e-2
    t0 = time.perf_counter()
    r = mcf.compute_reference(model, tok, feats, signals, device=str(device), dtype=dtype, proj_atol=proj_atol)
    t_ref = time.perf_counter() - t0
    timings = {k: round(v, 3) for k, v in r["timings"].items()}
    timings["reference_total_s"] = round(t_ref, 3)
    n_windows = sum(len(mcf.window_starts(len(x))) for x in signals.values())
    extra = dict(full_size=dict(
        config=name,
        config_file=f"tests/fixtures/clap/configs/{name}.json",
        seed=args.seed,
        n_parameters=n_params,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=args.dtype,
        torch_threads=torch.get_num_threads(),
        n_audio_windows=n_windows,
        timings=timings,
        timings_note="audio_embedding_s: get_audio_features over all windows, one window per call; "
                     "text_batch_s: get_text_features on the padded batch of all texts; reference_total_s "
                     "includes the pooled re-runs and the unpadded single-text runs",
    ))
    mcf.write_reference(ref_dir, name, "model", model_dir, model.config, tok, r, extra=extra)
    print(f"[{name}] wrote {ref_dir / (name + '.safetensors')} (+ .json) on {device} / {args.dtype}")
    print(f"[{name}] timings: {timings}  (transformers {transformers.__version__}, torch {torch.__version__})")

    labels = [c[0] for c in mcf.CLIPS]
    tbl, mx = mcf.cos_table(labels, [r["clip_embs"][c] for c in labels])
    print(f"\n[{name}] clip embedding cosine (max off-diagonal {mx:.3f})\n{tbl}")
    tl = [f"t{j}" for j in range(len(r["texts"]))]
    tbl, mx2 = mcf.cos_table(tl, list(r["text_embs"]))
    print(f"\n[{name}] text embedding cosine (max off-diagonal {mx2:.3f})\n{tbl}")
    print(f"[{name}] padded-batch vs single text embedding max abs diff: {r['max_pad_diff']:.3g}")
    pooled = [r["tensors"][k] for k in r["tensors"] if k.endswith(".pooled")]
    print(f"[{name}] pooled |max| over windows: {max(float(p.abs().max()) for p in pooled):.3g}, "
          f"mean |x|: {float(np.mean([float(p.abs().mean()) for p in pooled])):.3g}")
    if max(mx, mx2) >= 0.95:
        print(f"WARNING: some embeddings are nearly identical (max cosine {max(mx, mx2):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
