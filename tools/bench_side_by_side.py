#!/usr/bin/env python3
"""traum's CLAP against transformers (PyTorch eager) and ONNX Runtime: same machine, weights, inputs, threads.

Makes one random full-size `larger_clap_music_and_speech` model (fixed seed; HTSAT-base audio tower, RoBERTa-base
text tower, the weight init of tools/make_clap_fixtures.py), the mel features of eight 10 s clips and the token ids
of eight captions, then times, one after the other on the same threads:
  - transformers `ClapModel` (PyTorch eager, f32): get_audio_features / get_text_features;
  - ONNX Runtime (CPU execution provider, f32): both towers exported from that model;
  - traum: `cargo bench --bench side_by_side` (clap-model/benches/side_by_side.rs) on the same files;
  - clap.cpp (optional, --clap-cpp-bin): the `clap-cpp` crate through tools/clap-cpp-bench, on the model converted
    to GGUF here and the clips as WAV files; one item per call (it has no batch API), its audio time including
    its own decoding and mel front end;
at batch 1 and 8 (clips/s, texts/s, ms per batch), and each one's cosine against transformers' batch-1 embeddings.
It prints one table with traum's ratio to each, the audio tower's share of the machine's f32 peak, and the load.

Every implementation gets the mel features, not audio: this is the model alone (the mel front end is timed by
`cargo bench --bench throughput`). Text batches are padded to their longest caption, for every implementation.

Usage (Python 3.11; versions pinned in tools/requirements-bench.txt; ~5.5 GB with torch's CUDA wheels):
    python -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -r tools/requirements-bench.txt
    /tmp/bench-venv/bin/python tools/bench_side_by_side.py --threads 2
With clap.cpp (needs CMake >= 3.20; builds clap.cpp, ggml and ICU, ~15 min on 2 cores):
    CFLAGS=-march=native CXXFLAGS=-march=native cargo build --release --manifest-path tools/clap-cpp-bench/Cargo.toml
    ... tools/bench_side_by_side.py --clap-cpp-bin tools/clap-cpp-bench/target/release/clap-cpp-bench
The model (~776 MB) and the exported ONNX files are written under --work (default /tmp/traum-side-by-side) and
reused by later runs with the same seed. Nothing here is needed by `cargo test`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_clap_fixtures as mcf  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "tests/fixtures/clap/configs/larger_clap_music_and_speech.json"
# Multiply-adds of one 10 s window through HTSAT-base, counted layer by layer (x2 for FLOP).
AUDIO_GFLOP_PER_CLIP = 30.65
CAPTIONS = [
    "warm analog bass with slow attack",
    "a dog barking in the distance",
    "crisp hi-hat loop at 120 bpm",
    "rain on a tin roof",
    "a choir singing in a cathedral with long reverb",
    "distorted electric guitar riff",
    "footsteps on gravel",
    "a woman speaking softly in french",
]
N_CLIPS = 8


def time_it(min_time: float, f) -> tuple[float, int]:
    """Seconds per call: one warm-up call, then calls until min_time has passed."""
    f()
    runs, t0 = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - t0 < min_time:
        f()
        runs += 1
    return (time.perf_counter() - t0) / runs, runs


def l2n_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def min_cosine(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.min(np.sum(l2n_rows(a) * l2n_rows(ref), axis=1)))


def trim(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drops padding columns no row uses: the batch padded to its own longest text."""
    n = int(mask.sum(axis=1).max())
    return ids[:, :n], mask[:, :n]


def build_model(work: Path, seed: int) -> Path:
    from transformers import ClapConfig, ClapFeatureExtractor

    model_dir = work / "model"
    marker = model_dir / "traum-bench-seed.txt"
    if marker.exists() and marker.read_text().strip() == str(seed):
        return model_dir
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    config = ClapConfig.from_json_file(str(CONFIG))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        tok_src = mcf.train_tokenizer(Path(td) / "tok")
        model = mcf.build_model(config, seed)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(model_dir))
        del model
        ClapFeatureExtractor(**mcf.FEATURE_EXTRACTOR_KW).save_pretrained(str(model_dir))
        mcf.write_tokenizer(model_dir, tok_src, "tokenizer.json")
    marker.write_text(str(seed))
    print(f"made {model_dir}: {n_params / 1e6:.1f} M parameters, seed {seed}, {time.perf_counter() - t0:.0f} s")
    return model_dir


def make_inputs(work: Path, model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer, ClapFeatureExtractor

    fe = ClapFeatureExtractor.from_pretrained(str(model_dir))
    feats = []
    for i in range(N_CLIPS):
        x = mcf.make_signal(mcf.WINDOW, seed=11 + i)
        f = fe(x, sampling_rate=mcf.SR, return_tensors="np")["input_features"]
        assert f.shape == (1, 1, 1001, 64), f.shape
        feats.append(np.asarray(f[0], dtype=np.float32))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(CAPTIONS, padding=True, return_tensors="np")
    inputs = {
        "audio.features": np.stack(feats),
        "text.input_ids": enc["input_ids"].astype(np.int64),
        "text.attention_mask": enc["attention_mask"].astype(np.int64),
    }
    save_file(inputs, str(work / "inputs.safetensors"))
    lens = inputs["text.attention_mask"].sum(axis=1)
    print(f"inputs: {N_CLIPS} clips of 10 s as (1, 1001, 64) features; captions of {lens.min()}-{lens.max()} tokens")
    return inputs


def as_tensor(out) -> torch.Tensor:
    return mcf.as_features(out)


class AudioTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_features):
        return as_tensor(self.model.get_audio_features(input_features=input_features))


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return as_tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def tile(x: np.ndarray, b: int) -> np.ndarray:
    """The first b rows, repeating the rows when b is larger (as the Rust side does)."""
    return x[np.arange(b) % len(x)]


def run_batches(name, audio_fn, text_fn, inputs, batches, min_time):
    """Embeds every clip and text at each batch size; times the first batch. audio_fn(np) / text_fn(ids, mask)."""
    feats, ids, mask = inputs["audio.features"], inputs["text.input_ids"], inputs["text.attention_mask"]
    res = {}
    for b in batches:
        if b >= N_CLIPS:
            embs = audio_fn(tile(feats, b))[:N_CLIPS]
        else:
            embs = np.concatenate([audio_fn(feats[s:s + b]) for s in range(0, N_CLIPS - N_CLIPS % b, b)])
        batch = tile(feats, b)
        s, runs = time_it(min_time, lambda: audio_fn(batch))
        res[("audio", b)] = dict(s_per_batch=s, runs=runs, embs=embs)
        print(f"  {name} audio b{b}: {b / s:.2f} clips/s ({s * 1e3:.1f} ms/batch, {runs} runs)", flush=True)
        if b >= len(ids):
            tembs = text_fn(*trim(tile(ids, b), tile(mask, b)))[:len(ids)]
        else:
            tembs = np.concatenate([text_fn(*trim(ids[s:s + b], mask[s:s + b]))
                                    for s in range(0, len(ids) - len(ids) % b, b)])
        bi, bm = trim(tile(ids, b), tile(mask, b))
        s, runs = time_it(min_time, lambda: text_fn(bi, bm))
        res[("text", b)] = dict(s_per_batch=s, runs=runs, embs=tembs)
        print(f"  {name} text b{b}: {b / s:.2f} texts/s ({s * 1e3:.1f} ms/batch, {runs} runs)", flush=True)
    return res


def run_torch(model, inputs, batches, min_time, name="transformers", device="cpu", dtype=torch.float32):
    """Inputs go to the device in the model's dtype; results come back to the host (which synchronises)."""
    audio, text = AudioTower(model).eval(), TextTower(model).eval()

    def audio_fn(f):
        with torch.inference_mode():
            x = torch.from_numpy(f).to(device=device, dtype=dtype)
            return audio(x).float().cpu().numpy()

    def text_fn(i, m):
        with torch.inference_mode():
            return text(torch.from_numpy(i).to(device), torch.from_numpy(m).to(device)).float().cpu().numpy()

    return run_batches(name, audio_fn, text_fn, inputs, batches, min_time)


def export_onnx(model, work: Path, inputs) -> tuple[Path, Path]:
    audio_path, text_path = work / "onnx/audio.onnx", work / "onnx/text.onnx"
    marker = work / "onnx/seed.txt"
    seed = (work / "model/traum-bench-seed.txt").read_text()
    if audio_path.exists() and text_path.exists() and marker.exists() and marker.read_text() == seed:
        return audio_path, text_path
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    feats = torch.from_numpy(inputs["audio.features"][:2])
    ids, mask = (torch.from_numpy(inputs[k][:2]) for k in ("text.input_ids", "text.attention_mask"))
    t0 = time.perf_counter()
    with torch.inference_mode():
        kw = dict(opset_version=17, do_constant_folding=True)
        try:
            torch.onnx.export(AudioTower(model).eval(), (feats,), str(audio_path), input_names=["input_features"],
                              output_names=["embedding"], dynamic_axes={"input_features": {0: "batch"}},
                              dynamo=False, **kw)
            torch.onnx.export(TextTower(model).eval(), (ids, mask), str(text_path),
                              input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "len"},
                                            "attention_mask": {0: "batch", 1: "len"}},
                              dynamo=False, **kw)
        except TypeError:
            raise SystemExit("this torch has no TorchScript ONNX exporter (dynamo=False); use the pinned versions")
    marker.write_text(seed)
    print(f"exported both towers to {audio_path.parent} in {time.perf_counter() - t0:.0f} s")
    return audio_path, text_path


def run_ort(paths, inputs, batches, min_time, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    audio = ort.InferenceSession(str(paths[0]), opts, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(paths[1]), opts, providers=["CPUExecutionProvider"])

    def audio_fn(f):
        return audio.run(None, {"input_features": f})[0]

    def text_fn(i, m):
        return text.run(None, {"input_ids": i, "attention_mask": m})[0]

    return run_batches("onnxruntime", audio_fn, text_fn, inputs, batches, min_time)


def run_traum(work: Path, model_dir: Path, batches, min_time, threads, traum_bin: str | None,
              device: str = "cpu", dtype: str = "f32"):
    from safetensors.numpy import load_file

    out, js = work / f"traum-{dtype}.safetensors", work / f"traum-{dtype}.json"
    args = ["--model", str(model_dir), "--inputs", str(work / "inputs.safetensors"), "--out", str(out),
            "--json", str(js), "--min-time", str(min_time), "--batches", ",".join(map(str, batches)),
            "--device", device, "--dtype", dtype]
    cmd = [traum_bin, *args] if traum_bin else ["cargo", "bench", "--bench", "side_by_side", "--", *args]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    print("  $ RAYON_NUM_THREADS=%d %s" % (threads, " ".join(cmd)), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    report = json.loads(js.read_text())
    embs = load_file(str(out))
    res = {"peak_gflops": report.get("peak_gflops")}
    for row in report["rows"]:
        key = (row["what"], row["batch"])
        res[key] = dict(s_per_batch=row["s_per_batch"], runs=row["runs"], p50_s=row.get("p50_s"))
        if row["what"] != "mel":
            res[key]["embs"] = embs[f"{row['what']}.b{row['batch']}"]
    return res


def write_gguf(path: Path, metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> None:
    """GGUF v3 with string metadata and f32 tensors (ggml's axis order: the numpy shape reversed)."""
    import struct

    def string(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    header = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        header += string(key) + struct.pack("<I", 8) + string(value)
    offsets, at = [], 0
    for name, t in tensors.items():
        dims = t.shape[::-1]
        header += string(name) + struct.pack("<I", len(dims)) + struct.pack("<" + "Q" * len(dims), *dims)
        header += struct.pack("<IQ", 0, at)
        offsets.append(at)
        at += t.nbytes + (-t.nbytes % 32)
    with open(path, "wb") as f:
        f.write(header + b"\0" * (-len(header) % 32))
        for t in tensors.values():
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())
            f.write(b"\0" * (-t.nbytes % 32))


def to_gguf(work: Path, model_dir: Path) -> Path:
    """The model as clap.cpp loads it: HF tensors renamed (audio., text., audio_proj., text_proj.; the relative
    position table as rel_bias), the full config and tokenizer.json as metadata."""
    from safetensors.numpy import load_file
    from transformers import ClapConfig

    path = work / "model.gguf"
    marker = work / "model.gguf.seed"
    seed = (model_dir / "traum-bench-seed.txt").read_text()
    if path.exists() and marker.exists() and marker.read_text() == seed:
        return path
    renames = [("audio_model.audio_encoder.", "audio."), ("text_model.", "text."),
               ("audio_projection.", "audio_proj."), ("text_projection.", "text_proj.")]
    tensors = {}
    for name, t in load_file(str(model_dir / "model.safetensors")).items():
        if name.endswith(("relative_position_index", "position_ids", "token_type_ids")) or "logit_scale" in name:
            continue
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        else:
            continue
        tensors[name.replace("relative_position_bias_table", "rel_bias")] = t.astype(np.float32)
    config = ClapConfig.from_pretrained(str(model_dir)).to_dict()
    config["model_type"] = "clap"
    write_gguf(path, {"general.architecture": "clap", "clap.config": json.dumps(config),
                      "clap.tokenizer": (model_dir / "tokenizer.json").read_text()}, tensors)
    marker.write_text(seed)
    return path


def write_clips(work: Path) -> list[Path]:
    """The eight clips as 48 kHz mono float WAV files (clap.cpp takes files)."""
    import struct

    paths = []
    for i in range(N_CLIPS):
        x = np.asarray(mcf.make_signal(mcf.WINDOW, seed=11 + i), dtype="<f4")
        path = work / f"clip-{i}.wav"
        data = x.tobytes()
        fmt = struct.pack("<HHIIHH", 3, 1, mcf.SR, mcf.SR * 4, 4, 32)  # IEEE float, mono
        path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" +
                         b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
        paths.append(path)
    return paths


def run_clap_cpp(work: Path, model_dir: Path, binary: str, min_time: float, threads: int):
    gguf = to_gguf(work, model_dir)
    clips = write_clips(work)
    captions = work / "captions.json"
    captions.write_text(json.dumps(CAPTIONS))
    out = work / "clap-cpp.json"
    cmd = [binary, str(gguf), str(threads), str(min_time), str(out), str(captions), *map(str, clips)]
    print("  $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    report = json.loads(out.read_text())
    return {(w, 1): dict(s_per_batch=report[w]["s_per_call"], runs=report[w]["runs"],
                         embs=np.asarray(report[w]["embeddings"], dtype=np.float32)) for w in ("audio", "text")}


def peak_gflops(threads: int, ghz: float | None, flop_per_cycle: int) -> tuple[float, str]:
    if ghz is None:
        try:
            mhz = [float(l.split(":")[1]) for l in open("/proc/cpuinfo") if l.startswith("cpu MHz")]
            ghz = max(mhz) / 1e3
        except (OSError, ValueError):
            ghz = 0.0
    return threads * ghz * flop_per_cycle, f"{threads} cores x {ghz:.2f} GHz x {flop_per_cycle} f32 FLOP/cycle"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/traum-side-by-side"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--min-time", type=float, default=5.0, help="seconds of timed calls per measurement")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all implementations; medians are printed")
    ap.add_argument("--skip", default="", help="comma list of implementations to leave out: torch,ort,traum")
    ap.add_argument("--clap-cpp-bin", default=None,
                    help="a built tools/clap-cpp-bench binary: adds clap.cpp (batch 1 only)")
    ap.add_argument("--traum-bin", default=None,
                    help="a built side_by_side bench binary, instead of `cargo bench --bench side_by_side`")
    ap.add_argument("--ghz", type=float, default=None, help="clock for the peak estimate (default: /proc/cpuinfo)")
    ap.add_argument("--flop-per-cycle", type=int, default=32,
                    help="f32 FLOP per cycle and core (32: two 256-bit FMA pipes, AVX2/FMA; also Zen 4's AVX-512)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (then ONNX Runtime is left out)")
    ap.add_argument("--torch-dtypes", default="float32", help="comma list: float32,bfloat16,float16")
    ap.add_argument("--traum-dtypes", default="f32", help="comma list: f32,bf16,f16")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    work = args.work.resolve()
    if work == REPO or REPO in work.parents:
        ap.error("--work must be outside the repository (the model is ~776 MB)")
    work.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import transformers
    from transformers import ClapModel

    load_before = os.getloadavg()
    model_dir = build_model(work, args.seed)
    inputs = make_inputs(work, model_dir)
    model = ClapModel.from_pretrained(str(model_dir)).eval().float().to(args.device)
    if args.device.startswith("cuda"):
        skip.add("ort")

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    halves = {}
    for name in filter(None, args.torch_dtypes.split(",")):
        if name != "float32":
            dt = {"bfloat16": torch.bfloat16, "float16": torch.float16}[name]
            halves[name] = (dt, ClapModel.from_pretrained(str(model_dir)).eval().to(device=args.device, dtype=dt))
    if "ort" not in skip:
        import onnxruntime as ort

        versions["onnxruntime"] = ort.__version__
        paths = export_onnx(model, work, inputs)

    # Rounds: every implementation once per round, in turn, so that a slow spell of a shared
    # machine lands on all of them; each figure is the median over the rounds.
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}", flush=True)
        results = {}
        print(f"transformers (PyTorch eager, f32, {args.device})", flush=True)
        results["transformers"] = run_torch(model, inputs, batches, args.min_time, device=args.device)
        for name, (dt, half) in halves.items():
            print(f"transformers (PyTorch eager, {name}, {args.device})", flush=True)
            results[f"transformers {name}"] = run_torch(half, inputs, batches, args.min_time,
                                                        name=f"transformers {name}", device=args.device, dtype=dt)
        if "ort" not in skip:
            print("ONNX Runtime (CPU, f32)", flush=True)
            results["onnxruntime"] = run_ort(paths, inputs, batches, args.min_time, args.threads)
        if args.clap_cpp_bin and "clap.cpp" not in skip:
            print("clap.cpp (clap-cpp crate, f32, cpu, one item per call)", flush=True)
            results["clap.cpp"] = run_clap_cpp(work, model_dir, args.clap_cpp_bin, args.min_time, args.threads)
        if "traum" not in skip:
            for i, dt in enumerate(filter(None, args.traum_dtypes.split(","))):
                name = "traum" if i == 0 else f"traum {dt}"
                print(f"{name} (clap-model: its own CPU kernels in f32, candle otherwise; {dt}, {args.device})", flush=True)
                results[name] = run_traum(work, model_dir, batches, args.min_time, args.threads, args.traum_bin,
                                          device=args.device, dtype=dt)
        rounds.append(results)
    del model, halves
    results = rounds[0]
    for name, res in results.items():
        for key, cell in res.items():
            if isinstance(cell, dict):
                cell["s_per_batch"] = float(np.median([rd[name][key]["s_per_batch"] for rd in rounds]))
                cell["rounds"] = [rd[name][key]["s_per_batch"] for rd in rounds]
    ref = {"audio": results["transformers"][("audio", 1)]["embs"], "text": results["transformers"][("text", 1)]["embs"]}
    if "torch" in skip:
        del results["transformers"]
    load_after = os.getloadavg()

    measured = [r.pop("peak_gflops", None) for r in results.values() if "peak_gflops" in r]
    measured = [m for m in measured if m]
    if measured and args.ghz is None:
        peak = measured[0]
        peak_how = f"measured: {args.threads} threads of register-only FMAs, AVX-512 where the CPU has it, else AVX2 (side_by_side bench)"
    else:
        peak, peak_how = peak_gflops(args.threads, args.ghz, args.flop_per_cycle)
    cols = [(w, b) for w in ("audio", "text") for b in batches]
    print()
    print(f"medians of {args.rounds} rounds; machine: {cpu_name()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads for each implementation; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f", Python {platform.python_version()}")
    print()
    head = "| | " + " | ".join(f"{'clips' if w == 'audio' else 'texts'}/s b{b}" for w, b in cols) + \
           " | " + " | ".join(f"ms {w} b{b}" for w, b in cols) + " | min cos audio | min cos text |"
    print(head)
    print("|---|" + "---:|" * (2 * len(cols) + 2))
    def cell(res, key, f):
        return f(res[key]) if key in res else "–"

    for name, res in results.items():
        rates = [cell(res, (w, b), lambda c, b=b: f"{b / c['s_per_batch']:.2f}") for w, b in cols]
        ms = [cell(res, (w, b), lambda c: f"{c['s_per_batch'] * 1e3:.1f}") for w, b in cols]
        cos = []
        for w in ("audio", "text"):
            got = [min_cosine(res[(w, b)]["embs"], ref[w][:len(res[(w, b)]["embs"])])
                   for b in batches if (w, b) in res]
            cos.append(f"{min(got):.6f}")
        print(f"| {name} | " + " | ".join(rates) + " | " + " | ".join(ms) + f" | {cos[0]} | {cos[1]} |")
    print()
    for tname, tres in results.items():
        if not tname.startswith("traum"):
            continue
        for name, res in results.items():
            if name.startswith("traum"):
                continue
            ratios = [f"{w} b{b} {res[(w, b)]['s_per_batch'] / tres[(w, b)]['s_per_batch']:.2f}x"
                      for w, b in cols if (w, b) in res and (w, b) in tres]
            print(f"{tname} / {name}: " + ", ".join(ratios))
    for name, res in results.items():
        mel = [f"b{b} {b / res[('mel', b)]['s_per_batch']:.0f}" for b in batches if ("mel", b) in res]
        if mel:
            where = "on the device" if args.device.startswith("cuda") else f"{args.threads} threads"
            print(f"{name} mel front end, clips/s ({where}): " + ", ".join(mel))
        if ("text", 1) in res and res[("text", 1)].get("p50_s"):
            print(f"{name} text p50 at batch 1: {res[('text', 1)]['p50_s'] * 1e3:.2f} ms")
    if args.device.startswith("cuda"):
        peak = 0.0
    print()
    print(f"audio tower: {AUDIO_GFLOP_PER_CLIP} GFLOP per 10 s clip; f32 peak {peak:.0f} GFLOP/s ({peak_how})")
    for name, res in results.items():
        shares = [f"b{b} {b / res[('audio', b)]['s_per_batch'] * AUDIO_GFLOP_PER_CLIP:.0f} GFLOP/s "
                  f"({100 * b / res[('audio', b)]['s_per_batch'] * AUDIO_GFLOP_PER_CLIP / peak:.0f} % of peak)"
                  for b in batches if ("audio", b) in res] if peak > 0 else []
        print(f"  {name}: " + ", ".join(shares))
    if args.json:
        out = {name: {f"{w}.b{b}": {k: v for k, v in r.items() if k != "embs"} for (w, b), r in res.items()
                      if isinstance(r, dict)}
               for name, res in results.items()}
        args.json.write_text(json.dumps(dict(results=out, versions=versions, load=[load_before, load_after],
                                             threads=args.threads, peak_gflops=peak), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
