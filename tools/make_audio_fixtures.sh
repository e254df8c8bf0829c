#!/usr/bin/env bash
# Regenerates the small encoded-audio fixtures used by traum-audio's tests
# (tests/fixtures/audio/). The outputs are committed; run this only to change them.
#
# Needs Debian's ffmpeg (libmp3lame, libvorbis, libopus, native aac/alac/flac/mpeg4 encoders)
# and python3.
# Tones are ffmpeg's lavfi `sine` source (amplitude 1/8, i.e. about -18 dBFS), so the
# tests can check duration and dominant frequency after decoding.
# `-bitexact` and `-map_metadata -1` keep encoder version strings and dates out, so
# reruns on the same ffmpeg give the same bytes.
set -euo pipefail

out="$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/audio"
mkdir -p "$out"

command -v ffmpeg >/dev/null || { echo "ffmpeg not found (apt-get install ffmpeg)" >&2; exit 1; }

# Names given on the command line: make only those (the others keep their committed bytes).
only=" $* "

# make NAME FREQ RATE CHANNELS SECONDS -- ENCODER-ARGS...
make() {
    local name=$1 freq=$2 rate=$3 ch=$4 secs=$5 layout=mono extra=""
    if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then return 0; fi
    shift 6
    # pan copies the tone into both channels at full level (-ac 2 would scale it by -3 dB).
    if [ "$ch" = 2 ]; then layout=stereo extra="|c1=c0"; fi
    ffmpeg -hide_banner -loglevel error -y \
        -f lavfi -i "sine=frequency=${freq}:sample_rate=${rate}:duration=${secs}" \
        -af "pan=${layout}|c0=c0${extra}" -map_metadata -1 -fflags +bitexact -flags:a +bitexact \
        "$@" "$out/$name"
}

# Stereo 44.1 kHz, 1 kHz tone; mono 22.05 kHz, 440 Hz tone; one pair per codec.
make tone_1k_stereo_44k.flac 1000 44100 2 1.0 -- -c:a flac -sample_fmt s16 -compression_level 12
make tone_440_mono_22k.flac 440 22050 1 1.0 -- -c:a flac -sample_fmt s16 -compression_level 12
make tone_1k_stereo_44k.mp3 1000 44100 2 1.5 -- -c:a libmp3lame -b:a 48k
make tone_440_mono_22k.mp3 440 22050 1 1.5 -- -c:a libmp3lame -b:a 24k
make tone_1k_stereo_44k.ogg 1000 44100 2 1.5 -- -c:a libvorbis -q:a 0
make tone_440_mono_22k.ogg 440 22050 1 1.5 -- -c:a libvorbis -q:a 0
make tone_1k_stereo_44k.m4a 1000 44100 2 1.5 -- -c:a aac -b:a 48k -movflags +faststart
make tone_440_mono_22k.m4a 440 22050 1 1.5 -- -c:a aac -b:a 24k -movflags +faststart
# Raw AAC in ADTS frames (no container), as some recorders and downloaders write it.
make tone_440_mono_22k.aac 440 22050 1 1.5 -- -c:a aac -b:a 24k -f adts

# AIFF as sample packs ship it (big-endian PCM), and AIFF-C with float and little-endian
# ("sowt", what Apple's tools write) samples.
make tone_1k_stereo_44k.aiff 1000 44100 2 0.5 -- -c:a pcm_s16be
make tone_440_mono_22k.aifc 440 22050 1 0.5 -- -c:a pcm_f32be
make tone_1k_stereo_44k_sowt.aifc 1000 44100 2 0.5 -- -c:a pcm_s16le -f aiff
# ADPCM WAVs (old samplers, games, voice recorders).
make tone_1k_stereo_44k_ms_adpcm.wav 1000 44100 2 1.0 -- -c:a adpcm_ms
make tone_440_mono_22k_ima_adpcm.wav 440 22050 1 1.0 -- -c:a adpcm_ima_wav
# Apple Lossless in M4A.
make tone_1k_stereo_44k_alac.m4a 1000 44100 2 1.0 -- -c:a alac -sample_fmt s16p
make tone_440_mono_22k_alac.m4a 440 22050 1 1.0 -- -c:a alac -sample_fmt s32p
# Opus in Ogg (always decoded at 48 kHz; the header keeps the input rate).
make tone_1k_stereo_48k.opus 1000 48000 2 1.5 -- -c:a libopus -b:a 64k
make tone_440_mono_16k.opus 440 16000 1 1.5 -- -c:a libopus -b:a 24k -f ogg

# Valid files the crate must refuse with a clear error: no audio.
if [ "$only" = "  " ]; then
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "color=c=black:s=16x16:d=0.2:r=5" \
    -c:v mpeg4 -map_metadata -1 -fflags +bitexact -flags:v +bitexact "$out/video_only.mp4"
fi

# ffmpeg reserves an 8 KiB PADDING block in FLAC headers; drop it to keep the fixtures small.
for f in "$out"/tone_*.flac; do
    python3 - "$f" <<'PY'
import sys
path = sys.argv[1]
data = open(path, "rb").read()
assert data[:4] == b"fLaC"
blocks, pos = [], 4
while True:
    head, size = data[pos], int.from_bytes(data[pos + 1:pos + 4], "big")
    blocks.append((head & 0x7F, data[pos + 4:pos + 4 + size]))
    pos += 4 + size
    if head & 0x80:
        break
blocks = [b for b in blocks if b[0] != 1]  # 1 = PADDING
out = bytearray(b"fLaC")
for i, (kind, body) in enumerate(blocks):
    out.append(kind | (0x80 if i == len(blocks) - 1 else 0))
    out += len(body).to_bytes(3, "big") + body
open(path, "wb").write(bytes(out) + data[pos:])
PY
done

ls -l "$out"
