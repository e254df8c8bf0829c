#!/usr/bin/env python3
"""Writes starting seeds for the fuzz targets into OUT/<target>/ (default: fuzz/seeds-new).

Only needed to rebuild the corpora from scratch; the committed, minimised corpora in
fuzz/corpus/ already contain what these seeds contributed. Compressed-format seeds need
ffmpeg (skipped with a warning if it is missing); the rest is plain Python.

    python3 fuzz/make_seeds.py [OUT]
"""

import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile


def wav(fmt_tag, channels, rate, bits, payload, data_len=None, extra_chunks=b"", ext=None):
    """A RIFF/WAVE file; `ext` makes it WAVE_FORMAT_EXTENSIBLE with that sub-format tag."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * align, align, bits)
    if ext is not None:
        guid = struct.pack("<H", ext) + bytes.fromhex("000000001000800000aa00389b71")
        fmt += struct.pack("<HHI", 22, bits, (1 << channels) - 1) + guid
    body = b"WAVE" + extra_chunks + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(payload) if data_len is None else data_len) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(n, freq=440.0, rate=8000.0):
    return [math.sin(2 * math.pi * freq * i / rate) * 0.5 for i in range(n)]


def decode_seeds():
    t = tone(64)
    s16 = b"".join(struct.pack("<h", int(x * 32767)) for x in t)
    seeds = {
        "pcm16_mono_8k.wav": wav(1, 1, 8000, 16, s16),
        "pcm8_stereo_11k.wav": wav(1, 2, 11025, 8, bytes(int(128 + x * 100) for x in t for _ in (0, 1))),
        "pcm24_mono_44k.wav": wav(1, 1, 44100, 24, b"".join(struct.pack("<i", int(x * 8e6))[:3] for x in t)),
        "pcm32_mono_96k.wav": wav(1, 1, 96000, 32, b"".join(struct.pack("<i", int(x * 2e9)) for x in t)),
        "f32_mono_48k.wav": wav(3, 1, 48000, 32, b"".join(struct.pack("<f", x) for x in t)),
        "f64_mono_22k.wav": wav(3, 1, 22050, 64, b"".join(struct.pack("<d", x) for x in t)),
        # NaN, ±inf, huge and denormal floats: the decoder must sanitise them.
        "f32_specials.wav": wav(3, 1, 16000, 32, struct.pack(
            "<8f", float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 1e-40, 0.25, -0.25) * 4),
        "alaw_mono_8k.wav": wav(6, 1, 8000, 8, bytes(range(0, 256, 4))),
        "mulaw_mono_8k.wav": wav(7, 1, 8000, 8, bytes(range(0, 256, 4))),
        "extensible_pcm16_stereo.wav": wav(0xFFFE, 2, 32000, 16, s16 * 2, ext=1),
        "placeholder_length.wav": wav(1, 1, 8000, 16, s16, data_len=0xFFFFFFFF),
        "list_chunk_first.wav": wav(1, 1, 8000, 16, s16, extra_chunks=b"LIST\x04\x00\x00\x00INFO"),
        "header_only.wav": wav(1, 1, 8000, 16, b""),
        "odd_rate_44101.wav": wav(1, 1, 44101, 16, s16),
    }
    return seeds


def run(*cmd):
    subprocess.run(list(cmd), check=True)


def ffmpeg_seeds():
    """Tiny (0.05-0.2 s) files of every compressed format and the odd features the fixtures in
    tests/fixtures/audio have (stereo 44.1 kHz, MP3 without a Xing header, M4B chapters, a FLAC
    cue sheet, codecs we refuse), so the corpus stays small."""
    if shutil.which("ffmpeg") is None:
        print("warning: ffmpeg not found; no compressed-format seeds", file=sys.stderr)
        return {}
    mono8k = "sine=frequency=440:sample_rate=8000:duration=0.1"
    stereo44k = "sine=frequency=1000:sample_rate=44100:duration=0.2"
    specs = {
        "tiny.flac": (mono8k, 1, ["-c:a", "flac"]),
        "tiny.mp3": (mono8k, 1, ["-c:a", "libmp3lame", "-b:a", "32k"]),
        "tiny_no_xing.mp3": (mono8k, 1, ["-c:a", "libmp3lame", "-b:a", "32k", "-write_xing", "0"]),
        "tiny.ogg": (mono8k, 1, ["-c:a", "libvorbis", "-q:a", "0"]),
        "tiny.m4a": (mono8k, 1, ["-c:a", "aac", "-b:a", "16k"]),
        "tiny.aac": (mono8k, 1, ["-c:a", "aac", "-b:a", "16k", "-f", "adts"]),
        "stereo44k.flac": (stereo44k, 2, ["-c:a", "flac"]),
        "stereo44k.mp3": (stereo44k, 2, ["-c:a", "libmp3lame", "-b:a", "64k"]),
        "stereo44k.ogg": (stereo44k, 2, ["-c:a", "libvorbis", "-q:a", "0"]),
        "stereo44k.m4a": (stereo44k, 2, ["-c:a", "aac", "-b:a", "32k"]),
        "tiny.opus.ogg": (mono8k, 1, ["-c:a", "libopus", "-b:a", "8k"]),
        "tiny_alac.m4a": (mono8k, 1, ["-c:a", "alac"]),
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        def ffmpeg(src, channels, args, path, extra_inputs=()):
            run("ffmpeg", "-v", "error", "-f", "lavfi", "-i", src, *extra_inputs, "-ac", str(channels),
                *args, "-fflags", "+bitexact", path)

        for name, (src, channels, args) in specs.items():
            path = os.path.join(tmp, name)
            try:
                ffmpeg(src, channels, ["-map_metadata", "-1", *args], path)
            except subprocess.CalledProcessError:
                print(f"warning: ffmpeg cannot write {name}; skipped", file=sys.stderr)
                continue
            if name.endswith(".flac") and shutil.which("flac"):
                # ffmpeg leaves an 8 KiB padding block; the flac tool can drop it.
                run("flac", "-s", "-f", "--no-padding", "--no-seektable", "-o", path + ".small.flac", path)
                path += ".small.flac"
            with open(path, "rb") as f:
                out[name] = f.read()

        # M4B with chapters (like the audiobook fixture).
        meta = os.path.join(tmp, "chapters.txt")
        with open(meta, "w") as f:
            f.write(";FFMETADATA1\ntitle=t\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=100\ntitle=a\n"
                    "[CHAPTER]\nTIMEBASE=1/1000\nSTART=100\nEND=200\ntitle=b\n")
        path = os.path.join(tmp, "chapters.m4b")
        ffmpeg("sine=frequency=440:sample_rate=8000:duration=0.2", 1,
               ["-map", "0:a", "-map_metadata", "1", "-map_chapters", "1", "-c:a", "aac", "-b:a", "16k",
                "-f", "ipod"], path, extra_inputs=["-i", meta])
        with open(path, "rb") as f:
            out["chapters.m4b"] = f.read()

        # FLAC with an embedded CD cue sheet (CD-DA: 44.1 kHz, 16-bit stereo, 588-frame sectors).
        if shutil.which("flac"):
            wav_path = os.path.join(tmp, "cd.wav")
            ffmpeg("sine=frequency=440:sample_rate=44100:duration=0.2", 2, ["-c:a", "pcm_s16le"], wav_path)
            cue = os.path.join(tmp, "cd.cue")
            with open(cue, "w") as f:
                f.write('FILE "cd.wav" WAVE\n  TRACK 01 AUDIO\n    INDEX 01 00:00:00\n'
                        "  TRACK 02 AUDIO\n    INDEX 01 00:00:10\n")
            path = os.path.join(tmp, "cuesheet.flac")
            run("flac", "-s", "-f", "--no-padding", "--no-seektable", "--cuesheet=" + cue, "-o", path, wav_path)
            with open(path, "rb") as f:
                out["cuesheet.flac"] = f.read()
    return out


# traum_fuzz::COMMON_RATES: a rate in this list is encoded by its index, any other with the top
# bit set (see traum_fuzz::windows).
COMMON_RATES = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000,
                176400, 192000, 384000]


def windows_seed(rate, window, hop_frac, pattern, samples):
    code = COMMON_RATES.index(rate) if rate in COMMON_RATES else 0x80000000 | (rate - 1)
    return struct.pack("<IIB4B", code, window - 1, hop_frac, *pattern) + b"".join(
        struct.pack("<f", x) for x in samples)


def windows_seeds():
    t = tone(300, rate=44100.0)
    nan, inf = float("nan"), float("inf")
    return {
        "44k_hop_half.bin": windows_seed(44100, 100, 127, (16, 3, 0, 9), t),
        "48k_passthrough.bin": windows_seed(48000, 64, 255, (8, 8, 8, 8), t),
        "8k_short.bin": windows_seed(8000, 5000, 63, (1, 2, 3, 4), t),
        "96k_many.bin": windows_seed(96000, 32, 31, (20, 0, 20, 0), t),
        "odd_44101.bin": windows_seed(44101, 200, 200, (30, 30, 30, 30), t),
        "odd_767999.bin": windows_seed(767999, 1000, 255, (40, 1, 40, 1), t),
        "384k_window_480000.bin": windows_seed(384000, 480000, 255, (255, 255, 0, 7), t * 4),
        "nan_inf_denormal.bin": windows_seed(22050, 50, 100, (5, 5, 5, 5),
                                             [0.1, nan, 0.2, inf, -inf, 1e-40, 3e-45, 0.0] * 8),
        "one_sample.bin": windows_seed(16000, 1, 0, (1, 0, 0, 0), [0.5]),
        "empty.bin": windows_seed(32000, 10, 0, (0, 0, 0, 0), []),
    }


def mel_seed(n, samples):
    return struct.pack("<I", n) + b"".join(struct.pack("<f", x) for x in samples)


def mel_seeds():
    return {
        "full_window.bin": mel_seed(480000, tone(480, rate=48000.0)),
        "short_repeatpad.bin": mel_seed(7000, tone(100)),
        "one_sample.bin": mel_seed(1, [0.25]),
        "zero_len.bin": mel_seed(0, []),
        "too_long.bin": mel_seed(480001, [0.1, -0.1]),
        "nan_late.bin": mel_seed(1000, [0.0] * 99 + [float("nan")]),
        "full_scale.bin": mel_seed(48000, [1000.0, -1000.0, 0.0]),
        "silence.bin": mel_seed(480000, []),
    }


def multipart_seed(body, boundary=b"b0undary", pattern=(0, 0, 0, 0)):
    """`multipart` target input: 4 chunk-pattern bytes, the boundary, a newline, the body."""
    return bytes(pattern) + boundary + b"\n" + body


def form(parts, boundary=b"b0undary", close=True):
    """A multipart/form-data body from (name, filename or None, bytes) parts."""
    out = b""
    for name, filename, data in parts:
        out += b"--" + boundary + b"\r\n"
        disp = b'Content-Disposition: form-data; name="' + name + b'"'
        if filename is not None:
            disp += b'; filename="' + filename + b'"'
        out += disp + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    if close:
        out += b"--" + boundary + b"--\r\n"
    return out


def multipart_seeds():
    t = tone(64)
    wav16 = wav(1, 1, 8000, 16, b"".join(struct.pack("<h", int(x * 32767)) for x in t))
    one = b'{"query":"mutation($f: Upload!) { uploadFile(file: $f) { id } }","variables":{"f":null}}'
    two = (b'{"query":"mutation($fs: [Upload!]!) { uploadFiles(files: $fs) { __typename } }",'
           b'"variables":{"fs":[null,null]}}')
    batch = (b'[{"query":"mutation($f: Upload!) { uploadFile(file: $f) { id } }","variables":{"f":null}},'
             b'{"query":"mutation($f: Upload!) { uploadFile(file: $f) { id } }","variables":{"f":null}}]')
    return {
        "single.bin": multipart_seed(form([(b"operations", None, one), (b"map", None, b'{"0":["variables.f"]}'),
                                           (b"0", b"tone.wav", wav16)])),
        "two_files.bin": multipart_seed(form([(b"operations", None, two),
                                              (b"map", None, b'{"0":["variables.fs.0"],"1":["variables.fs.1"]}'),
                                              (b"0", b"a.wav", wav16), (b"1", b"b.txt", b"hello")])),
        "one_part_two_vars.bin": multipart_seed(form([(b"operations", None, two),
                                                      (b"map", None, b'{"0":["variables.fs.0","variables.fs.1"]}'),
                                                      (b"0", b"a.wav", wav16)])),
        "batched.bin": multipart_seed(form([(b"operations", None, batch),
                                            (b"map", None, b'{"0":["0.variables.f"],"1":["1.variables.f"]}'),
                                            (b"0", b"a.wav", wav16), (b"1", b"../../etc/passwd", wav16)])),
        "second_map.bin": multipart_seed(form([(b"operations", None, one), (b"map", None, b'{"0":["variables.f"]}'),
                                               (b"0", b"a.wav", wav16), (b"map", None, b'{"1":["variables.f"]}')])),
        "repeated_part.bin": multipart_seed(form([(b"operations", None, one), (b"map", None, b'{"0":["variables.f"]}'),
                                                  (b"0", b"a.wav", wav16), (b"0", b"a.wav", wav16)])),
        "file_before_map.bin": multipart_seed(form([(b"operations", None, one), (b"0", b"a.wav", wav16),
                                                    (b"map", None, b'{"0":["variables.f"]}')])),
        "missing_part.bin": multipart_seed(form([(b"operations", None, one),
                                                 (b"map", None, b'{"0":["variables.f"],"1":["variables.g"]}'),
                                                 (b"0", b"a.wav", wav16)])),
        "too_large.bin": multipart_seed(form([(b"operations", None, one), (b"map", None, b'{"0":["variables.f"]}'),
                                              (b"0", b"big.wav", wav16 + bytes(9000))])),
        "too_many.bin": multipart_seed(form([(b"operations", None, two),
                                             (b"map", None, b'{"0":["variables.fs.0"],"1":["a"],"2":["b"],"3":["c"],"4":["d"]}')])),
        "bad_path.bin": multipart_seed(form([(b"operations", None, one), (b"map", None, b'{"0":["variables.nope.9"]}'),
                                             (b"0", b"a.wav", wav16)])),
        "truncated.bin": multipart_seed(form([(b"operations", None, one), (b"map", None, b'{"0":["variables.f"]}'),
                                              (b"0", b"a.wav", wav16)], close=False)[:-40]),
        "split_chunks.bin": multipart_seed(form([(b"operations", None, one), (b"map", None, b'{"0":["variables.f"]}'),
                                                 (b"0", b"a.wav", wav16)]), pattern=(1, 2, 3, 0)),
    }


def graphql_seed(body, as_json):
    """`graphql` target input: a mode byte (0: the rest is a JSON request body; 1: a query)."""
    return bytes([0 if as_json else 1]) + body


def graphql_seeds():
    root = os.path.dirname(os.path.abspath(__file__))
    seeds = {}
    for rel in ("../tests/fixtures/graphql/introspection.graphql",
                "../tests/fixtures/graphql/introspection-all-options.graphql",
                "../client/src/api/operations.graphql"):
        with open(os.path.join(root, rel), "rb") as f:
            seeds[os.path.basename(rel) + ".bin"] = graphql_seed(f.read(), False)
    seeds.update({
        "aliases.bin": graphql_seed(b"{ " + b" ".join(b"a%d: health { status }" % i for i in range(50)) + b" }", False),
        "fragments.bin": graphql_seed(
            b"query Q { files(first: 5) { nodes { ...F } } } fragment F on AudioFile { id ...G } "
            b"fragment G on AudioFile { filename durationS }", False),
        "fragment_cycle.bin": graphql_seed(b"{ files { nodes { ...A } } } fragment A on AudioFile { ...B } "
                                           b"fragment B on AudioFile { ...A }", False),
        "deep.bin": graphql_seed(b"{ " + b"files { nodes { similarTo: __typename " * 10 + b"id" + b" } }" * 10 + b" }", False),
        "search.bin": graphql_seed(
            b'{"query":"query($q: String!) { search(text: $q, limit: 10) { results { score file { id } } latencyMs } }",'
            b'"variables":{"q":"warm analog bass"}}', True),
        "batch.bin": graphql_seed(b'[{"query":"{ health { status } }"},{"query":"{ access { scope } }"}]', True),
        "named_op.bin": graphql_seed(
            b'{"query":"query A { health { status } } query B { stats { files bytes } }","operationName":"B"}', True),
        "mutation.bin": graphql_seed(b'{"query":"mutation { deleteFile(id: \\"00000000-0000-0000-0000-000000000000\\") }"}', True),
        "subscription.bin": graphql_seed(b'{"query":"subscription { libraryEvents { kind } }"}', True),
        "nested_values.bin": graphql_seed(b'{"query":"{ files(first: [[[[1]]]]) { nodes { id } } }"}', True),
    })
    return seeds


def main():
    root = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "seeds-new")
    sets = {
        "decode": {**decode_seeds(), **ffmpeg_seeds()},
        "windows": windows_seeds(),
        "mel": mel_seeds(),
        "multipart": multipart_seeds(),
        "graphql": graphql_seeds(),
    }
    for target, seeds in sets.items():
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    main()
