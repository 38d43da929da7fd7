#!/usr/bin/env python3
"""Make small videos of known scenes with PyAV (the `video` extra), for tests, the README's walk-through and the
indexing benchmark.

    python tools/make_videos.py OUT            # a folder of photos and videos: clipblip index MODEL OUT --db DB
    python tools/make_videos.py OUT --benchmark 600   # also a 10-minute 720p H.264 video (bench-720p.mp4)

A scene is a flat colour with a shape of another colour on it; a video is a list of scenes, each held for a number
of seconds, so a test knows which scene is shown at any time.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Scene", "SCENES", "scene_frame", "write_video", "write_audio_only", "make_collection"]


@dataclass(frozen=True)
class Scene:
    name: str
    background: tuple[int, int, int]
    shape: str  # "circle", "square", "triangle" or "none"
    colour: tuple[int, int, int]
    seconds: float


SCENES = (
    Scene("red square on blue", (30, 60, 200), "square", (220, 30, 30), 4.0),
    Scene("yellow circle on green", (20, 150, 40), "circle", (240, 220, 20), 4.0),
    Scene("white triangle on black", (10, 10, 10), "triangle", (250, 250, 250), 4.0),
)


def scene_frame(scene: Scene, width: int, height: int, t: float = 0.0, moving: bool = False) -> np.ndarray:
    """One RGB frame (height, width, 3) of ``scene``; ``moving``: the shape drifts with ``t`` (a real-looking shot
    for the benchmark, whose frames all differ)."""
    image = Image.new("RGB", (width, height), scene.background)
    if scene.shape != "none" and width >= 4 and height >= 4:
        draw = ImageDraw.Draw(image)
        side = min(width, height) // 2
        cx = width // 2 + (int(width / 6 * math.sin(t)) if moving else 0)
        cy = height // 2 + (int(height / 8 * math.cos(0.7 * t)) if moving else 0)
        box = (cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2)
        if scene.shape == "circle":
            draw.ellipse(box, fill=scene.colour)
        elif scene.shape == "square":
            draw.rectangle(box, fill=scene.colour)
        else:
            draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=scene.colour)
    frame = np.asarray(image)
    if moving:  # a little texture, so that an encoder has real work (a flat frame compresses to nothing)
        frame = np.clip(frame.astype(np.int16) + texture(width, height, int(t * 30) % 8), 0, 255)
    return frame.astype(np.uint8)


_TEXTURES: dict[tuple[int, int], list[np.ndarray]] = {}


def texture(width: int, height: int, i: int) -> np.ndarray:
    """One of 8 fixed noise patterns (height, width, 3), int16 in [-12, 12], made once per size."""
    if (width, height) not in _TEXTURES:
        rng = np.random.default_rng(0)
        _TEXTURES[(width, height)] = [rng.integers(-12, 13, (height, width, 3), dtype=np.int16) for _ in range(8)]
    return _TEXTURES[(width, height)][i]


def write_video(path: str | Path, scenes=SCENES, *, codec: str = "libx264", fps: int = 10, width: int = 160,
                height: int = 120, vfr: bool = False, audio: bool = False, moving: bool = False,
                options: dict | None = None, container_options: dict | None = None) -> Path:
    """A video of ``scenes`` in order. ``vfr``: frames at uneven intervals (timestamps in milliseconds);
    ``audio``: a sine tone beside the picture."""
    import av

    path = Path(path)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if vfr:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=16000) if audio else None
        t, pts = 0.0, 0
        for scene in scenes:
            end = t + scene.seconds
            while t < end - 1e-9:
                frame = av.VideoFrame.from_ndarray(scene_frame(scene, width, height, t, moving), format="rgb24")
                step = (1.0 / fps) * ((0.5 if (pts % 3 == 0) else 1.25) if vfr else 1.0)
                if vfr:
                    frame.pts = round(t * 1000)
                    frame.time_base = Fraction(1, 1000)
                else:
                    frame.pts = pts
                for packet in stream.encode(frame):
                    container.mux(packet)
                t += step
                pts += 1
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            write_tone(container, sound, t)
    return path


def write_tone(container, stream, seconds: float) -> None:
    import av

    rate, done = 16000, 0
    total = int(seconds * rate)
    while done < total:
        n = min(1024, total - done)
        samples = (0.2 * np.sin(2 * np.pi * 440 * (np.arange(done, done + n) / rate))).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, done
        for packet in stream.encode(frame):
            container.mux(packet)
        done += n
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: str | Path, seconds: float = 2.0) -> Path:
    """An .mp4 (by its name, a video) with a sound stream and no picture."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        write_tone(container, container.add_stream("aac", rate=16000), seconds)
    return path


def make_collection(out: str | Path) -> dict[str, Path]:
    """Photos and videos of the known scenes, and the broken files an index must name: what each file is, by key."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    made = {
        "h264": write_video(out / "videos" / "scenes.mp4"),
        "vp9": write_video(out / "videos" / "scenes.webm", codec="libvpx-vp9", width=96, height=64,
                           options={"deadline": "realtime", "cpu-used": "8"}),
        "odd": write_video(out / "videos" / "odd size.mkv", scenes=SCENES[1:2], width=99, height=57,
                           codec="libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}),
        "vfr": write_video(out / "videos" / "uneven.mov", vfr=True, audio=True),
        "tiny": write_video(out / "videos" / "tiny.webm", scenes=SCENES[:1], width=2, height=2, codec="libvpx-vp9",
                            options={"deadline": "realtime", "cpu-used": "8"}),
        "audio_only": write_audio_only(out / "videos" / "sound only.mp4"),
    }
    full = made["h264"].read_bytes()
    (out / "videos" / "truncated.mp4").write_bytes(full[: len(full) // 2])
    made["truncated"] = out / "videos" / "truncated.mp4"
    (out / "videos" / "not a video.avi").write_text("this is text, not a video\n", encoding="utf-8")
    made["not_video"] = out / "videos" / "not a video.avi"
    for scene in SCENES:
        photo = out / "photos" / f"{scene.name}.png"
        photo.parent.mkdir(exist_ok=True)
        Image.fromarray(scene_frame(scene, 160, 120)).save(photo)
        made[f"photo:{scene.name}"] = photo
    return made


def make_benchmark(out: Path, seconds: int) -> Path:
    """A ``seconds``-long 1280x720 H.264 video at 30 fps (x264 defaults: keyframes at most 250 frames apart), its
    scenes changing every 20 s, the shape moving and the frame textured throughout."""
    scenes = [Scene(s.name, s.background, s.shape, s.colour, 20.0) for s in SCENES]
    cycle = scenes * math.ceil(seconds / 60)
    return write_video(out / "bench-720p.mp4", cycle[: math.ceil(seconds / 20)], fps=30, width=1280, height=720,
                       moving=True, options={"preset": "veryfast"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--benchmark", type=int, default=None, metavar="SECONDS",
                        help="also write bench-720p.mp4, SECONDS long (600 for the issue's 10 minutes)")
    parser.add_argument("--force", action="store_true", help="empty OUT first if this script made it")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        if not (args.force and (args.out / "videos" / "scenes.mp4").exists()):
            parser.error(f"{args.out}: not empty (--force empties a folder this script made)")
        shutil.rmtree(args.out)
    made = make_collection(args.out)
    if args.benchmark:
        made["benchmark"] = make_benchmark(args.out, args.benchmark)
    for key, path in made.items():
        print(f"{key:>32}  {path}")


if __name__ == "__main__":
    main()
