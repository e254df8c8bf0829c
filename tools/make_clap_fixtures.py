#!/usr/bin/env python3
"""Generate reference fixtures for the Rust/candle port of LAION CLAP (HF transformers `ClapModel`).

Everything is built locally from random weights (no model hub access needed) and is deterministic:
re-running the script gives the same files (same library versions assumed, see
tools/requirements-fixtures.txt).

Usage:
    python tools/make_clap_fixtures.py [--out tests/fixtures/clap]

tools/make_full_size_reference.py imports this module (build_model/reinit_weights, train_tokenizer,
write_tokenizer, make_signal, window_starts, compute_features, compute_reference, write_reference) to make
the same reference for a full-size random-weight model; keep those functions importable.

Outputs (under --out):
    models/tiny-a/   HF-hub-like repo: config.json, preprocessor_config.json, model.safetensors,
                     tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ vocab/merges if written)
    models/tiny-b/   same, but weights ONLY as pytorch_model.bin and tokenizer ONLY as vocab.json + merges.txt
                     (+ tokenizer_config.json / special_tokens_map.json), no tokenizer.json
    configs/larger_clap_music_and_speech.json, configs/clap-htsat-unfused.json   (config.json of the real models)
    reference/features.safetensors      ClapFeatureExtractor output per clip window
    reference/tiny-a.safetensors, reference/tiny-b.safetensors   embeddings / ids
    reference/tiny-a.json, reference/tiny-b.json                 manifests

Test signal (the Rust tests reproduce it), sr = 48000, computed in float64 then cast to float32:

    t_i   = i / 48000                      for i in 0..n,  n = round(seconds * 48000)
    f0    = 110.0 * (1 + seed)
    lcg:  state = seed (u64); for every sample, in order:
            state = state * 6364136223846793005 + 1442695040888963407   (mod 2^64)
            u     = (state >> 11) / 2^53
            noise_i = 2*u - 1
    env   = 0.6 + 0.4*sin(2*pi*0.37*t)
    x_i   = env * (0.4*sin(2*pi*f0*t) + 0.2*sin(2*pi*3.1*f0*t + 0.3)
                   + 0.15*sin(2*pi*(200*t + 200*t*t)) + 0.05*noise_i)
    (products are evaluated left to right, e.g. ((2*pi)*f0)*t; pi = f64 pi)

Clips (name, seconds, seed): tiny 0.5 s seed 1, short 3.7 s seed 2, exact 10.0 s seed 3,
mid 17.3 s seed 4, silence 2.0 s (all zeros, no seed).

Windowing policy: window = hop = 480000 samples (10 s).
    n <= window: one window [0, n)   (the feature extractor's "repeatpad" fills it to 10 s)
    n >  window: starts 0, hop, 2*hop, ... while start + window <= n; if the last window ends before n,
                 add a final window starting at n - window (end-aligned).
    ("mid": 830400 samples -> starts [0, 350400].)

Reference tensors (per model file reference/<model>.safetensors):
    clip.<name>.window.<i>.embedding  [D]       get_audio_features(window) (L2-normalised)
    clip.<name>.window.<i>.pooled     [hidden]  audio_model(...).pooler_output (before projection)
    clip.<name>.embedding             [D]       L2-normalise(mean_i window embeddings)
    text.<j>.input_ids                [L] int64 tokenizer(text, truncation=True), unpadded
    text.<j>.embedding                [D]       get_text_features on the padded batch of all texts
features.safetensors:
    clip.<name>.window.<i>.input_features  [1001, 64] f32
    clip.<name>.samples_head               [1024] f32  first samples of the generated signal
    clip.<name>.samples_stride997          [ceil(n/997)] f32  x[0], x[997], x[2*997], ... (generator check)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SR = 48000
WINDOW = 480000
HOP = 480000

CLIPS = [
    # (name, seconds, seed)  seed None => silence
    ("tiny", 0.5, 1),
    ("short", 3.7, 2),
    ("exact", 10.0, 3),
    ("mid", 17.3, 4),
    ("silence", 2.0, None),
]

LONG_SENTENCE = "a warm pad slowly swells under soft rain and distant thunder while a dog barks. "

TEXTS = [
    "warm analog bass with slow attack",
    "a dog barking in the distance",
    "crisp hi-hat loop at 120 bpm",
    "rain on a tin roof",
    "Ünïcödé café — bells 🎵",
    "",
    # ~700 tokens untruncated; truncated to 512 by the tokenizer (checked below)
    (LONG_SENTENCE * 27).strip(),
]

FEATURE_EXTRACTOR_KW = dict(
    feature_size=64,
    sampling_rate=48000,
    hop_length=480,
    max_length_s=10,
    fft_window_size=1024,
    padding_value=0.0,
    return_attention_mask=False,
    frequency_min=50,
    frequency_max=14000,
    top_db=None,
    truncation="rand_trunc",
    padding="repeatpad",
)

MODELS = {
    "tiny-a": dict(
        seed=1234,
        audio=dict(
            spec_size=256,
            num_mel_bins=64,
            patch_embeds_hidden_size=16,
            depths=[2, 2, 2, 2],
            num_attention_heads=[2, 2, 4, 8],
            window_size=8,
            mlp_ratio=2.0,
            hidden_size=128,
            enable_fusion=False,
        ),
        text=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=514,
        ),
        projection_dim=24,
        weights="safetensors",
        tokenizer="tokenizer.json",
    ),
    "tiny-b": dict(
        seed=10,
        audio=dict(
            spec_size=256,
            num_mel_bins=64,
            patch_embeds_hidden_size=12,
            depths=[2, 2, 2, 2],
            num_attention_heads=[2, 3, 4, 6],
            window_size=4,
            mlp_ratio=4.0,
            hidden_size=96,
            enable_fusion=False,
        ),
        text=dict(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=6,
            intermediate_size=80,
            max_position_embeddings=514,
            layer_norm_eps=1e-5,
        ),
        projection_dim=20,
        weights="bin",
        tokenizer="vocab+merges",
    ),
}


# --------------------------------------------------------------------------------------------
# signals and windows
# --------------------------------------------------------------------------------------------

def n_samples(seconds: float) -> int:
    return int(round(seconds * SR))


def make_signal(n: int, seed: int | None) -> np.ndarray:
    if seed is None:
        return np.zeros(n, dtype=np.float32)
    mask = (1 << 64) - 1
    state = seed & mask
    noise = np.empty(n, dtype=np.float64)
    for i in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) & mask
        u = (state >> 11) / float(1 << 53)
        noise[i] = 2.0 * u - 1.0
    t = np.arange(n, dtype=np.float64) / 48000.0
    f0 = 110.0 * (1 + seed)
    pi = np.pi
    env = 0.6 + 0.4 * np.sin(2.0 * pi * 0.37 * t)
    x = env * (
        0.4 * np.sin(2.0 * pi * f0 * t)
        + 0.2 * np.sin(2.0 * pi * 3.1 * f0 * t + 0.3)
        + 0.15 * np.sin(2.0 * pi * (200.0 * t + 200.0 * t * t))
        + 0.05 * noise
    )
    return x.astype(np.float32)


def window_starts(n: int) -> list[int]:
    if n <= WINDOW:
        return [0]
    starts = []
    s = 0
    while s + WINDOW <= n:
        starts.append(s)
        s += HOP
    if starts[-1] + WINDOW < n:
        starts.append(n - WINDOW)
    return starts


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------

def make_corpus() -> list[str]:
    rng = np.random.default_rng(20240601)
    adjectives = ["warm", "bright", "dark", "crisp", "soft", "loud", "quiet", "distant", "muffled", "heavy",
                  "gentle", "harsh", "deep", "airy", "metallic", "wooden", "slow", "fast", "analog", "digital",
                  "noisy", "clean", "distorted", "lush", "dry", "wet", "resonant", "sharp", "smooth", "glassy"]
    sources = ["bass", "piano", "guitar", "drum", "kick", "snare", "hi-hat", "cymbal", "violin", "cello",
               "synth", "pad", "choir", "voice", "dog", "cat", "bird", "rain", "thunder", "wind", "engine",
               "car", "train", "bell", "bells", "flute", "trumpet", "organ", "crowd", "water", "roof", "door",
               "footsteps", "applause", "siren", "clock", "phone", "keyboard", "river", "ocean", "fire"]
    verbs = ["barking", "ringing", "playing", "falling", "humming", "buzzing", "crackling", "rumbling",
             "singing", "whistling", "knocking", "tapping", "dripping", "roaring", "chirping", "swelling",
             "fading", "echoing", "pulsing", "looping"]
    places = ["in the distance", "on a tin roof", "in a large hall", "in a small room", "outside", "underwater",
              "in the forest", "in the city", "at night", "in the kitchen", "near the sea", "under a bridge",
              "in a cathedral", "on the street", "in a cave"]
    extras = ["with slow attack", "with fast attack", "at 120 bpm", "at 90 bpm", "with long reverb",
              "with a short decay", "and soft noise", "in stereo", "with vibrato", "played legato",
              "played staccato", "with heavy compression", "and a low hum", "under soft rain"]
    non_ascii = ["café", "naïve", "Ünïcödé", "jalapeño", "crème brûlée", "Straße", "Über", "façade", "résumé",
                 "smörgåsbord", "piñata", "Zürich", "São Paulo", "déjà vu", "Åland", "Ωmega", "東京", "音楽",
                 "🎵", "🔔", "—", "–", "…", "°C", "½"]
    corpus = []
    for _ in range(3000):
        parts = []
        if rng.random() < 0.5:
            parts.append(str(rng.choice(["a", "the", "some", "many", "one", "two"])))
        parts.append(str(rng.choice(adjectives)))
        if rng.random() < 0.4:
            parts.append(str(rng.choice(adjectives)))
        parts.append(str(rng.choice(sources)))
        if rng.random() < 0.7:
            parts.append(str(rng.choice(verbs)))
        if rng.random() < 0.6:
            parts.append(str(rng.choice(places)))
        if rng.random() < 0.5:
            parts.append(str(rng.choice(extras)))
        if rng.random() < 0.25:
            parts.append(str(rng.choice(non_ascii)))
        s = " ".join(parts)
        r = rng.random()
        if r < 0.2:
            s = s.capitalize()
        elif r < 0.3:
            s = s + "."
        elif r < 0.35:
            s = s + ", " + str(rng.choice(non_ascii)) + "!"
        corpus.append(s)
    corpus.append(LONG_SENTENCE)
    return corpus


SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(workdir: Path) -> Path:
    """Train a byte-level BPE; writes vocab.json + merges.txt into workdir and returns it."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(make_corpus(), vocab_size=600, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    workdir.mkdir(parents=True, exist_ok=True)
    tok.save_model(str(workdir))
    return workdir


def write_tokenizer(model_dir: Path, tok_src: Path, kind: str) -> None:
    from transformers import RobertaTokenizerFast

    vocab = json.loads((tok_src / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (tok_src / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        a, b = line.split(" ")
        merges.append((a, b))
    # transformers 5 ignores vocab_file/merges_file here: pass the vocab and merges themselves.
    hf_tok = RobertaTokenizerFast(
        vocab=vocab,
        merges=merges,
        add_prefix_space=False,
        model_max_length=512,
    )
    hf_tok.save_pretrained(str(model_dir))
    # tiny-a: tokenizer.json (whatever else save_pretrained writes is kept);
    # tiny-b: only vocab.json + merges.txt (+ tokenizer_config.json, special_tokens_map.json).
    shutil.copy(tok_src / "vocab.json", model_dir / "vocab.json")
    shutil.copy(tok_src / "merges.txt", model_dir / "merges.txt")
    if kind == "tokenizer.json":
        assert (model_dir / "tokenizer.json").exists()
        os.remove(model_dir / "vocab.json")
        os.remove(model_dir / "merges.txt")
    else:
        if (model_dir / "tokenizer.json").exists():
            os.remove(model_dir / "tokenizer.json")
    # special_tokens_map.json: transformers 5 no longer writes it; write the classic one ourselves (plain strings:
    # transformers 5 gives <mask> lstrip=false in tokenizer.json, unlike the real roberta files).
    stm = model_dir / "special_tokens_map.json"
    if not stm.exists():
        stm.write_text(json.dumps({
            "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
            "mask_token": "<mask>",
            "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg.get("model_max_length") == 512, cfg
    cfg.setdefault("tokenizer_class", "RobertaTokenizer")
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def reinit_weights(model: torch.nn.Module, gen: torch.Generator, gain: float = 1.0, qk_gain: float = 3.0,
                   bn_mean: float = -25.0, bn_mean_std: float = 5.0, bias_std: float = 0.05,
                   bn_var: tuple = (100.0, 300.0)) -> None:
    """Make random weights non-trivial (the HF init gives near-constant embeddings).

    Linear/Conv weight ~ N(0, gain/sqrt(fan_in)), query/key weights use qk_gain (sharper attention: with
    near-uniform attention every input pools to almost the same vector), biases ~ N(0, bias_std),
    LayerNorm/BatchNorm weight ~ 1+N(0,0.1), bias ~ N(0,0.05), BatchNorm running_mean ~ N(bn_mean, bn_mean_std)
    and running_var ~ U(bn_var) (roughly centres/scales the dB features of the test signals, about -25 dB
    mean; with mean 0 / var 20..60 every token carries the same large DC offset and all clips embed alike),
    embeddings ~ N(0, 0.5), relative_position_bias_table ~ N(0, 0.5), logit scales log(1/0.07)+N(0,0.3).
    """
    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                g = qk_gain if name.endswith((".query", ".key")) else gain
                mod.weight.copy_(normal(mod.weight.shape, g / math.sqrt(fan_in)))
                if mod.bias is not None:
                    mod.bias.copy_(normal(mod.bias.shape, bias_std))
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(normal(mod.weight.shape, 0.1, 1.0))
                mod.bias.copy_(normal(mod.bias.shape, 0.05))
            elif isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.weight.copy_(normal(mod.weight.shape, 0.1, 1.0))
                mod.bias.copy_(normal(mod.bias.shape, 0.05))
                mod.running_mean.copy_(normal(mod.running_mean.shape, bn_mean_std, bn_mean))
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) * (bn_var[1] - bn_var[0]) + bn_var[0])
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(normal(mod.weight.shape, 0.5))
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(normal(p.shape, 0.5))
        model.logit_scale_a.copy_(torch.tensor(math.log(1 / 0.07)) + normal([], 0.3))
        model.logit_scale_t.copy_(torch.tensor(math.log(1 / 0.07)) + normal([], 0.3))


def make_config(spec: dict, vocab_size: int):
    from transformers import ClapConfig

    text = dict(spec["text"])
    text["vocab_size"] = vocab_size
    return ClapConfig(text_config=text, audio_config=dict(spec["audio"]), projection_dim=spec["projection_dim"])


def build_model(config, seed: int) -> torch.nn.Module:
    """`ClapModel(config)` after `torch.manual_seed(seed)`, re-initialised by `reinit_weights` with a
    generator seeded with seed+1 (f32, eval mode)."""
    from transformers import ClapModel

    torch.manual_seed(seed)
    model = ClapModel(config).eval().float()
    gen = torch.Generator().manual_seed(seed + 1)
    reinit_weights(model, gen)
    return model


def write_model(model_dir: Path, name: str, spec: dict, tok_src: Path, vocab_size: int) -> None:
    from transformers import ClapFeatureExtractor

    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    config = make_config(spec, vocab_size)
    model = build_model(config, spec["seed"])
    if spec["weights"] == "safetensors":
        model.save_pretrained(str(model_dir))
        assert (model_dir / "model.safetensors").exists()
    else:
        config.save_pretrained(str(model_dir))
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        torch.save(sd, model_dir / "pytorch_model.bin")
    for f in model_dir.iterdir():
        if f.name.startswith("model") and spec["weights"] != "safetensors":
            raise RuntimeError(f"unexpected {f}")
    ClapFeatureExtractor(**FEATURE_EXTRACTOR_KW).save_pretrained(str(model_dir))
    write_tokenizer(model_dir, tok_src, spec["tokenizer"])


def write_big_configs(out: Path) -> None:
    from transformers import ClapConfig

    cdir = out / "configs"
    cdir.mkdir(parents=True, exist_ok=True)
    cfgs = {
        "larger_clap_music_and_speech.json": ClapConfig(
            audio_config=dict(depths=[2, 2, 12, 2], hidden_size=1024, patch_embeds_hidden_size=128),
            text_config={},
            hidden_size=768,
            num_hidden_layers=16,
            projection_dim=512,
            projection_hidden_act="relu",
        ),
        "clap-htsat-unfused.json": ClapConfig(audio_config={}, text_config={}),
    }
    for fname, cfg in cfgs.items():
        with tempfile.TemporaryDirectory() as td:
            cfg.save_pretrained(td)
            shutil.copy(Path(td) / "config.json", cdir / fname)


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------

def as_features(out) -> torch.Tensor:
    """transformers 4.x returns a tensor, 5.x an output object whose pooler_output is the embedding."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "pooler_output"):
        return out.pooler_output
    return out[0]


def l2n(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def compute_features(fe, signals):
    feats = {}
    for name, _secs, _seed in CLIPS:
        x = signals[name]
        for wi, s in enumerate(window_starts(len(x))):
            w = x[s:s + WINDOW]
            np.random.seed(0)
            f1 = fe(w, sampling_rate=48000, return_tensors="np")
            f2 = fe(w, sampling_rate=48000, return_tensors="np")
            a = np.asarray(f1["input_features"])
            b = np.asarray(f2["input_features"])
            assert a.shape == (1, 1, 1001, 64), a.shape
            assert np.array_equal(a, b), "feature extractor not deterministic"
            feats[(name, wi)] = (a[0, 0].astype(np.float32), f1.get("is_longer"))
    return feats


def compute_reference(model, tok, feats, signals, device: str = "cpu", dtype: torch.dtype = torch.float32,
                      proj_atol: float = 1e-6) -> dict:
    """Runs `model` (already on `device` in `dtype`) on every clip window and text; returns the reference
    tensors (f32, CPU) and what the manifest needs."""
    tensors = {}
    clip_info = []
    clip_embs = {}
    timings = dict(audio_embedding_s=0.0, text_batch_s=0.0)

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        for cname, secs, seed in CLIPS:
            n = len(signals[cname])
            starts = window_starts(n)
            embs = []
            for wi, _s in enumerate(starts):
                f, is_longer = feats[(cname, wi)]
                inp = torch.from_numpy(f)[None, None].to(device=device, dtype=dtype)
                il = torch.tensor([[False]], device=device)
                sync()
                t0 = time.perf_counter()
                emb = as_features(model.get_audio_features(input_features=inp, is_longer=il))[0]
                sync()
                timings["audio_embedding_s"] += time.perf_counter() - t0
                pooled = model.audio_model(input_features=inp, is_longer=il).pooler_output[0]
                # cross-check: projection of pooled == embedding
                chk = torch.nn.functional.normalize(model.audio_projection(pooled[None]), dim=-1)[0]
                assert torch.allclose(chk, emb, atol=proj_atol)
                tensors[f"clip.{cname}.window.{wi}.embedding"] = emb.float().cpu().contiguous()
                tensors[f"clip.{cname}.window.{wi}.pooled"] = pooled.float().cpu().contiguous()
                embs.append(emb.float().cpu().numpy().astype(np.float64))
            ce = l2n(np.mean(embs, axis=0)).astype(np.float32)
            tensors[f"clip.{cname}.embedding"] = torch.from_numpy(ce)
            clip_embs[cname] = ce
            clip_info.append(dict(name=cname, seconds=secs, seed=seed, n_samples=n, window_starts=starts))

        texts = list(TEXTS)
        enc_unpadded = [tok(t, truncation=True)["input_ids"] for t in texts]
        batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
        sync()
        t0 = time.perf_counter()
        temb = as_features(model.get_text_features(input_ids=batch["input_ids"].to(device),
                                                   attention_mask=batch["attention_mask"].to(device)))
        sync()
        timings["text_batch_s"] = time.perf_counter() - t0
        temb = temb.float().cpu()
        # cross-check vs unpadded single runs
        max_pad_diff = 0.0
        for j, ids in enumerate(enc_unpadded):
            single = as_features(model.get_text_features(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device)))[0]
            max_pad_diff = max(max_pad_diff, float((single.float().cpu() - temb[j]).abs().max()))
            tensors[f"text.{j}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
            tensors[f"text.{j}.embedding"] = temb[j].float().contiguous()
        # long text truncation check
        long_j = len(texts) - 1
        full_len = len(tok(texts[long_j], truncation=False)["input_ids"])
        assert len(enc_unpadded[long_j]) == 512, len(enc_unpadded[long_j])
        assert full_len > 600, full_len

        logit_scale_a = float(model.logit_scale_a)
        logit_scale_t = float(model.logit_scale_t)
    return dict(tensors=tensors, clip_info=clip_info, clip_embs=clip_embs, text_embs=temb.numpy(),
                enc_unpadded=enc_unpadded, texts=texts, max_pad_diff=max_pad_diff,
                logit_scale_a=logit_scale_a, logit_scale_t=logit_scale_t, timings=timings)


def write_reference(ref_dir: Path, name: str, model_rel: str, model_dir: Path, config, tok, r: dict,
                    extra: dict | None = None) -> None:
    """Writes `ref_dir/<name>.safetensors` and the manifest `ref_dir/<name>.json` from `compute_reference`'s
    result. `model_rel` is the model directory as recorded (relative to the fixture root); `extra` adds
    manifest keys after the standard ones."""
    from safetensors.torch import save_file
    import transformers

    ref_dir.mkdir(parents=True, exist_ok=True)
    save_file(r["tensors"], str(ref_dir / f"{name}.safetensors"), metadata={"model": model_rel})
    dim = int(config.projection_dim)
    texts = r["texts"]
    enc_unpadded = r["enc_unpadded"]
    manifest = dict(
        model_dir=model_rel,
        weights_file="model.safetensors" if (model_dir / "model.safetensors").exists() else "pytorch_model.bin",
        tokenizer_files=sorted(p.name for p in model_dir.iterdir() if "token" in p.name or p.name in
                               ("vocab.json", "merges.txt")),
        embedding_dim=dim,
        audio_hidden_size=int(config.audio_config.hidden_size),
        text_hidden_size=int(config.text_config.hidden_size),
        sample_rate=SR,
        window=WINDOW,
        hop=HOP,
        clips=r["clip_info"],
        texts=[dict(index=j, text=t, n_tokens=len(enc_unpadded[j]),
                    n_tokens_untruncated=len(tok(t, truncation=False)["input_ids"])) for j, t in enumerate(texts)],
        logit_scale_a=r["logit_scale_a"],
        logit_scale_t=r["logit_scale_t"],
        text_embedding_note="text.<j>.embedding computed on a padded batch (padding=True, attention mask); "
                            f"max abs diff vs unpadded single runs = {r['max_pad_diff']:.3g}",
        versions=dict(transformers=transformers.__version__, torch=torch.__version__,
                      tokenizers=__import__("tokenizers").__version__, numpy=np.__version__,
                      safetensors=__import__("safetensors").__version__),
    )
    if extra:
        manifest.update(extra)
    (ref_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def reference_for_model(out: Path, name: str, feats, signals) -> dict:
    from transformers import AutoTokenizer, ClapModel

    model_dir = out / "models" / name
    model = ClapModel.from_pretrained(str(model_dir)).eval().float()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    r = compute_reference(model, tok, feats, signals)
    write_reference(out / "reference", name, f"models/{name}", model_dir, model.config, tok, r)
    return dict(clip_embs=r["clip_embs"], text_embs=r["text_embs"], tensors=r["tensors"], tok=tok,
                max_pad_diff=r["max_pad_diff"], texts=r["texts"])


def cos_table(labels, vecs) -> tuple[str, float]:
    m = np.stack([l2n(np.asarray(v, dtype=np.float64)) for v in vecs])
    c = m @ m.T
    w = max(len(l) for l in labels)
    lines = [" " * (w + 1) + " ".join(f"{l[:7]:>7}" for l in labels)]
    for i, l in enumerate(labels):
        lines.append(f"{l:>{w}} " + " ".join(f"{c[i, j]:7.3f}" for j in range(len(labels))))
    off = c[~np.eye(len(labels), dtype=bool)]
    return "\n".join(lines), float(off.max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/clap")
    args = ap.parse_args()
    out = Path(args.out)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)

    from safetensors.numpy import save_file as np_save_file
    from transformers import AutoTokenizer, ClapFeatureExtractor

    for sub in ("models", "reference", "configs"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)

    # tokenizer
    with tempfile.TemporaryDirectory() as td:
        tok_src = train_tokenizer(Path(td) / "tok")
        vocab_size = len(json.loads((tok_src / "vocab.json").read_text()))
        print(f"tokenizer vocab size: {vocab_size}")
        for name, spec in MODELS.items():
            write_model(out / "models" / name, name, spec, tok_src, vocab_size)
            print(f"wrote models/{name}")

    # both tokenizer layouts must give identical ids
    ta = AutoTokenizer.from_pretrained(str(out / "models" / "tiny-a"))
    tb = AutoTokenizer.from_pretrained(str(out / "models" / "tiny-b"))
    for t in TEXTS:
        assert ta(t, truncation=True)["input_ids"] == tb(t, truncation=True)["input_ids"], t

    write_big_configs(out)

    # signals + features
    signals = {name: make_signal(n_samples(secs), seed) for name, secs, seed in CLIPS}
    fe = ClapFeatureExtractor.from_pretrained(str(out / "models" / "tiny-a"))
    assert fe.truncation == "rand_trunc" and fe.padding == "repeatpad" and fe.frequency_min == 50
    feats = compute_features(fe, signals)
    ft = {f"clip.{n}.window.{i}.input_features": np.ascontiguousarray(f) for (n, i), (f, _) in feats.items()}
    for name, x in signals.items():
        ft[f"clip.{name}.samples_head"] = np.ascontiguousarray(x[:1024])
        ft[f"clip.{name}.samples_stride997"] = np.ascontiguousarray(x[::997])
    (out / "reference").mkdir(parents=True, exist_ok=True)
    np_save_file(ft, str(out / "reference" / "features.safetensors"))
    print("wrote reference/features.safetensors")

    results = {}
    for name in MODELS:
        results[name] = reference_for_model(out, name, feats, signals)
        print(f"wrote reference/{name}.safetensors (+ .json)")

    # sanity checks
    print("\n=== sanity check ===")
    worst = 0.0
    for name, r in results.items():
        labels = [c[0] for c in CLIPS]
        tbl, mx = cos_table(labels, [r["clip_embs"][l] for l in labels])
        print(f"\n[{name}] clip embedding cosine (max off-diagonal {mx:.3f})\n{tbl}")
        worst = max(worst, mx)
        tl = [f"t{j}" for j in range(len(r["texts"]))]
        tbl, mx = cos_table(tl, list(r["text_embs"]))
        print(f"\n[{name}] text embedding cosine (max off-diagonal {mx:.3f})\n{tbl}")
        worst = max(worst, mx)
        print(f"[{name}] padded-batch vs single text embedding max abs diff: {r['max_pad_diff']:.3g}")
        for j, t in enumerate(r["texts"]):
            ids = r["tensors"][f"text.{j}.input_ids"].tolist()
            shown = ids if len(ids) <= 24 else ids[:12] + ["..."] + ids[-4:]
            print(f"  t{j} {t[:40]!r}: {len(ids)} ids {shown}")
    if worst >= 0.95:
        print(f"WARNING: some embeddings are nearly identical (max cosine {worst:.3f})")
    print("\n=== files ===")
    total = 0
    for p in sorted(out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"{p.stat().st_size:>10}  {p.relative_to(out)}")
    print(f"{total:>10}  TOTAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
