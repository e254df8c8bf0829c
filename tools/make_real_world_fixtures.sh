#!/usr/bin/env bash
# Regenerates the fixtures for file shapes real libraries hold that once failed to decode
# (tests/fixtures/audio/real_*) and a codec we do not read inside a known container
# (unsupported_speex.ogg). The outputs are committed; run this only to change them.
#
# Needs Debian's ffmpeg, sox, flac (metaflac) and speex (speexenc).
set -euo pipefail

out="$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/audio"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for tool in ffmpeg sox flac metaflac speexenc; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install ffmpeg sox flac speex)" >&2; exit 1; }
done

# 4 s of a 330 Hz tone, mono 22.05 kHz.
sox -n -r 22050 -c 1 -b 16 "$work/tone.wav" synth 4 sine 330 gain -6

# FLAC with a CUESHEET metadata block (two tracks), as CD rips carry; libFLAC plays it.
flac -s -f -o "$out/real_flac_cuesheet.flac" "$work/tone.wav"
printf 'FILE "tone.wav" WAVE\n  TRACK 01 AUDIO\n    INDEX 01 00:00:00\n  TRACK 02 AUDIO\n    INDEX 01 00:02:00\n' >"$work/tone.cue"
metaflac --import-cuesheet-from="$work/tone.cue" "$out/real_flac_cuesheet.flac"

# An audiobook: AAC plus a chapter text track (M4B).
printf ';FFMETADATA1\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=2000\ntitle=One\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=2000\nEND=4000\ntitle=Two\n' >"$work/chapters.txt"
ffmpeg -hide_banner -loglevel error -y -i "$work/tone.wav" -i "$work/chapters.txt" \
    -map_metadata 1 -map 0:a -c:a aac -b:a 32k -fflags +bitexact -flags:a +bitexact \
    "$out/real_m4b_chapters.m4b"

# MP3 without a Xing/Info header: its length is nowhere in the file until it is decoded.
ffmpeg -hide_banner -loglevel error -y -i "$work/tone.wav" -c:a libmp3lame -b:a 32k \
    -write_xing 0 -map_metadata -1 -fflags +bitexact -flags:a +bitexact "$out/real_mp3_no_xing.mp3"

# Real files are looser than symphonia 0.5 is: a CUESHEET track with a reserved bit set
# (libFLAC ignores reserved bits and plays it), and a chapter text track whose sample
# description lists two entries (ffmpeg plays the audio). Both once failed as CORRUPT.
python3 - "$out" <<'PY'
import struct, sys
out = sys.argv[1]
d = bytearray(open(f"{out}/real_flac_cuesheet.flac", "rb").read())
pos = 4
while True:
    kind, size = d[pos] & 0x7F, int.from_bytes(d[pos + 1:pos + 4], "big")
    if kind == 5:  # CUESHEET: catalog 128, lead-in 8, flags 1, reserved 258, tracks 1
        track = pos + 4 + 128 + 8 + 1 + 258 + 1
        d[track + 8 + 1 + 12 + 1] = 0x01  # offset 8, number 1, ISRC 12: low byte of flags
    if d[pos] & 0x80:
        break
    pos += 4 + size
open(f"{out}/real_flac_cuesheet_reserved_bits.flac", "wb").write(d)

d = bytearray(open(f"{out}/real_m4b_chapters.m4b", "rb").read())
def boxes(a, b):
    while a + 8 <= b:
        size = struct.unpack(">I", d[a:a + 4])[0]
        if size < 8:
            return
        yield bytes(d[a + 4:a + 8]), a + 8, a + size
        a += size
def find(a, b, path):
    for kind, body, end in boxes(a, b):
        if kind == path[0]:
            return (body, end) if len(path) == 1 else find(body, end, path[1:])
moov = find(0, len(d), [b"moov"])
for kind, body, end in boxes(*moov):
    if kind == b"trak":
        hdlr = find(body, end, [b"mdia", b"hdlr"])
        if d[hdlr[0] + 8:hdlr[0] + 12] != b"soun":
            stsd = find(body, end, [b"mdia", b"minf", b"stbl", b"stsd"])
            d[stsd[0] + 4:stsd[0] + 8] = struct.pack(">I", 2)
open(f"{out}/real_m4b_chapter_track_two_entries.m4b", "wb").write(d)
PY
flac -t -s "$out/real_flac_cuesheet_reserved_bits.flac"
ffmpeg -hide_banner -loglevel error -i "$out/real_m4b_chapter_track_two_entries.m4b" -map 0:a -f null -

# Speex in Ogg: a known container, a codec we do not decode (must say UNSUPPORTED_FORMAT).
sox -n -r 16000 -c 1 -b 16 "$work/speech.wav" synth 1 sine 300
speexenc --quiet "$work/speech.wav" "$out/unsupported_speex.ogg"

ls -l "$out"/real_* "$out/unsupported_speex.ogg"
