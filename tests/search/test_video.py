"""Videos: frames sampled by time (and after keyframe seeks, the same frames), segments folded from them, videos
indexed beside photos (incremental, per-item errors), searched as `PATH @ mm:ss–mm:ss`, and `caption`/`vqa`
on a moment of a video. The videos are made here with PyAV (tools/make_videos.py)."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV (the `video` extra) is not installed")

from clipblip import video  # noqa: E402
from clipblip.engine import ClipEngine  # noqa: E402
from clipblip.errors import ClipblipError, ImageTooLargeError  # noqa: E402
from clipblip.search import Store, index_paths, search  # noqa: E402
from clipblip.search.segments import fold  # noqa: E402
from tests.helpers import make_videos_module, run_cli  # noqa: E402

make_videos = make_videos_module()
SCENES = make_videos.SCENES
SHARP = 0.9999  # a tiny random model tells the flat scenes apart by little: fold only identical frames


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_videos.make_collection(tmp_path_factory.mktemp("videos") / "collection")


@pytest.fixture(scope="module")
def clip_dir(clip_with_attentions):
    return clip_with_attentions.exported


def scene_at(t: float):
    for i, scene in enumerate(SCENES):
        if t < sum(s.seconds for s in SCENES[: i + 1]) - 1e-9:
            return scene
    return SCENES[-1]


def close_colour(image, colour, tolerance=40) -> bool:
    corner = np.asarray(image.convert("RGB"))[1, 1].astype(int)
    return bool(np.abs(corner - np.array(colour)).max() <= tolerance)


# --- frames -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["h264", "vp9", "odd"])
def test_frames_are_sampled_every_s_seconds_and_show_the_scene_of_their_time(made, key):
    frames = list(video.sample_frames(made[key], 2.0))
    total = sum(s.seconds for s in (SCENES[1:2] if key == "odd" else SCENES))
    assert [round(f.time, 3) for f in frames] == [float(t) for t in range(0, int(total), 2)]
    for frame in frames:
        scene = SCENES[1] if key == "odd" else scene_at(frame.time)
        assert close_colour(frame.image, scene.background), (key, frame.time)
    assert video.probe(made[key]).duration == pytest.approx(total, abs=0.15)


def test_a_variable_frame_rate_gives_each_sample_the_first_frame_at_or_after_its_time(made):
    with av.open(str(made["vfr"])) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    frames = list(video.sample_frames(made["vfr"], 1.0))
    expected, target = [], 0.0
    for t in times:  # what decoding every frame gives
        if t + 1e-6 >= target:
            expected.append(t)
            target = (math.floor(t / 1.0 + 1e-9) + 1) * 1.0
    assert [f.time for f in frames] == pytest.approx(expected)
    assert len(set(np.diff(times).round(4))) > 1  # the rate really varies


def test_keyframe_seeks_give_the_frames_decoding_everything_gives(tmp_path):
    path = make_videos.write_video(tmp_path / "short-gop.mp4", fps=10, options={"g": "5", "bf": "2"}, moving=True)
    with av.open(str(path)) as container:
        every_frame = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24"))
                       for f in container.decode(container.streams.video[0])]
    sampled = list(video.sample_frames(path, 3.0))  # 3 s apart, keyframes 0.5 s apart: it seeks
    assert [f.time for f in sampled] == [0.0, 3.0, 6.0, 9.0]
    for frame in sampled:
        reference = next(pixels for t, pixels in every_frame if t + 1e-6 >= frame.time)
        np.testing.assert_array_equal(np.asarray(frame.image), reference)


def test_frame_at_is_the_frame_shown_at_that_time(made):
    for t in (0.0, 3.95, 4.0, 6.5, 11.9):
        frame = video.frame_at(made["h264"], t)
        assert frame.time <= t + 1e-6 and close_colour(frame.image, scene_at(t).background), t
    with pytest.raises(video.VideoError, match=r"scenes.mp4: has no frame at 00:30 \(30 s\); it lasts 00:12"):
        video.frame_at(made["h264"], 30)


@pytest.mark.parametrize("key, message", [
    ("truncated", "truncated.mp4: "),
    ("not_video", "not a video.avi: not a readable video"),
    ("audio_only", "sound only.mp4: holds no video stream"),
])
def test_broken_files_are_one_error_naming_the_file(made, key, message):
    with pytest.raises(video.VideoError) as e:
        list(video.sample_frames(made[key], 2.0))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_truncated_video_with_its_index_first_names_where_it_stops(tmp_path):
    path = make_videos.write_video(tmp_path / "fast.mp4", container_options={"movflags": "+faststart"})
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 5])
    with pytest.raises(video.VideoError, match=r"cut.mp4: (truncated: its frames stop at 0\d:\d\d of the 00:12|"
                                               r"cannot be decoded)"):
        list(video.sample_frames(cut, 2.0))


def test_streams_larger_than_the_bound_are_refused_before_decoding(made):
    with pytest.raises(ImageTooLargeError, match="scenes.mp4: its frames are 160x120 pixels, more than the 1000"):
        list(video.sample_frames(made["h264"], 2.0, max_pixels=1000))


def test_a_tiny_and_an_empty_video_are_handled(tmp_path, made):
    assert len(list(video.sample_frames(made["tiny"], 2.0))) == 2
    one = tmp_path / "one.avi"
    with av.open(str(one), "w") as container:
        stream = container.add_stream("rawvideo", rate=1)
        stream.width, stream.height, stream.pix_fmt = 1, 1, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.full((1, 1, 3), 200, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (frame,) = video.sample_frames(one, 2.0)
    assert frame.image.size == (1, 1)
    empty = tmp_path / "empty.mp4"  # zero bytes: FFmpeg has no video in it to read
    empty.write_bytes(b"")
    with pytest.raises(video.VideoError, match="empty.mp4: an empty file"):
        list(video.sample_frames(empty, 2.0))
    header_only = tmp_path / "header only.mp4"  # a container with its stream declared and no frame
    with av.open(str(header_only), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 16, 16
        container.start_encoding()
    with pytest.raises(video.VideoError, match="header only.mp4: holds no video stream"):
        list(video.sample_frames(header_only, 2.0))


def test_fold_keeps_a_static_shot_as_one_segment():
    a, b = np.eye(3, dtype=np.float32)[0], np.eye(3, dtype=np.float32)[1]
    vectors = np.stack([a, a, a * 2, b, b, a])  # (6, 3)
    segments = fold([0, 2, 4, 6, 8, 10], vectors, duration=11.5, similarity=0.99)
    assert [(s.start, s.end) for s in segments] == [(0, 6), (6, 10), (10, 11.5)]
    np.testing.assert_allclose(segments[0].vector, a)
    assert all(s.start <= s.frame < s.end for s in segments)
    assert [(s.start, s.end) for s in fold([0, 2, 4], np.stack([a, a, a]), 5.0, similarity=1.01)] == [
        (0, 2), (2, 4), (4, 5.0)]  # above 1: never fold


# --- index and search ---------------------------------------------------------------------------------------------

def segments_of(db, path) -> list[tuple[float, float]]:
    with Store.open(db) as store:
        return [(row.start, row.end) for row in store.segments(str(path))]


def test_videos_are_indexed_beside_photos_as_segments_and_found_by_time(tmp_path, made, clip_dir, capsys):
    db = tmp_path / "media.db"
    folder = made["h264"].parents[1]
    code, out, err = run_cli(capsys, "index", clip_dir, folder, "--db", db, "--json", "--fold-similarity", SHARP)
    report = json.loads(out)
    assert code == 16, err  # the broken files are named, the rest indexed
    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert sorted(failed) == ["not a video.avi", "sound only.mp4", "truncated.mp4"]
    assert "holds no video stream" in failed["sound only.mp4"] and "Traceback" not in err
    assert report["embedded"] == 3 + 5 and report["videos"] == 5  # photos, and h264 vp9 odd vfr tiny
    assert report["frames"] > 0 and report["decode_seconds"] >= 0 and report["video_seconds"] > 30
    assert segments_of(db, made["h264"]) == [(0, 4), (4, 8), (8, pytest.approx(12, abs=0.15))]
    assert segments_of(db, made["odd"]) == [(0, pytest.approx(4, abs=0.15))]

    # a scene's own frame as the query: its segment comes first among the segments of that video
    engine = ClipEngine.from_dir(clip_dir)
    for i, scene in enumerate(SCENES):
        frame = video.frame_at(made["h264"], 4 * i + 1).image
        hits = [h for h in search(db, image=frame, k=50) if h.path == str(made["h264"])]
        assert (hits[0].start, hits[0].end) == (4 * i, pytest.approx(4 * i + 4, abs=0.15)), scene.name
        with Store.open(db) as store:
            stored = store.vector_of(str(made["h264"]), at=hits[0].start)
        assert hits[0].score == pytest.approx(float(engine.embed_images([frame])[0] @ stored), abs=1e-5)

    code, out, _ = run_cli(capsys, "search", "--db", db, "--like", f"{made['h264']}@5", "-k", 50)
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith(f"{made['h264']} @ 00:04–00:08")
    assert float(lines[0].split()[0]) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = run_cli(capsys, "search", "--db", db, "--text", "a red square", "-k", 50, "--json")
    hits = json.loads(out)["hits"]
    assert {(h["start"], round(h["end"])) for h in hits if h["path"] == str(made["h264"])} == {(0, 4), (4, 8), (8, 12)}
    assert all("start" not in h for h in hits if h["path"].endswith(".png"))
    code, _, err = run_cli(capsys, "search", "--db", db, "--like", f"{made['h264']}@oops")
    assert code == 2 and "give PATH or PATH@SECONDS" in err
    code, _, err = run_cli(capsys, "search", "--db", db, "--like", f"{made['h264']}@99")
    assert code == 2 and "at 99 s: not a photo or video segment of" in err


def test_reindexing_decodes_nothing_unchanged_and_replaces_a_changed_videos_segments(tmp_path, made, clip_dir,
                                                                                     monkeypatch):
    folder = tmp_path / "v"
    folder.mkdir()
    clip = make_videos.write_video(folder / "clip.mp4")
    db = tmp_path / "v.db"
    first = index_paths(db, clip_dir, [folder], fold_similarity=SHARP)
    assert (first.embedded, first.videos, first.segments) == (1, 1, 3)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an unchanged video")

    with monkeypatch.context() as m:
        m.setattr(video, "sample_frames", no_decoding)
        again = index_paths(db, clip_dir, [folder], fold_similarity=SHARP)
        assert (again.embedded, again.unchanged, again.videos) == (0, 1, 0)
        os.utime(clip, ns=(0, 10**9))  # touched, same bytes: still nothing decoded
        assert index_paths(db, clip_dir, [folder], fold_similarity=SHARP).unchanged == 1
    make_videos.write_video(clip, scenes=SCENES[:2])  # changed: two scenes
    changed = index_paths(db, clip_dir, [folder], fold_similarity=SHARP)
    assert (changed.embedded, changed.videos) == (1, 1)
    assert segments_of(db, clip) == [(0, 4), (4, pytest.approx(8, abs=0.15))]
    with pytest.raises(ClipblipError, match=r"--fold-similarity 0.9: .*v.db was indexed with --fold-similarity "
                                            r"0.9999; give that, or index into a new database"):
        index_paths(db, clip_dir, [folder])  # two samplings would mix: refused
    with pytest.raises(ClipblipError, match="was indexed with --frame-every 2"):
        index_paths(db, clip_dir, [folder], frame_every=1.0, fold_similarity=SHARP)
    clip.unlink()
    assert index_paths(db, clip_dir, [folder], fold_similarity=SHARP).removed == 1
    with Store.open(db) as store:
        assert store.count() == 0 and store.segments(str(clip)) == []


def test_a_schema_1_database_is_read_and_gains_the_video_tables(tmp_path, clip_dir, made):
    import sqlite3

    db = tmp_path / "old.db"
    index_paths(db, clip_dir, [made["photo:" + SCENES[0].name]])
    with sqlite3.connect(db) as connection:  # as clipblip before videos wrote it
        connection.executescript("DROP TABLE videos; DROP TABLE segments; "
                                 "UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    assert [h.path for h in search(db, like=str(made["photo:" + SCENES[0].name]), k=5)]
    report = index_paths(db, clip_dir, [made["photo:" + SCENES[0].name], made["h264"]])
    assert report.videos == 1
    with Store.open(db) as store:
        assert store.meta.schema_version == 2 and store.count() > 1


def test_frame_options_are_checked(tmp_path, clip_dir, made, capsys):
    code, _, err = run_cli(capsys, "index", clip_dir, made["h264"], "--db", tmp_path / "x.db", "--frame-every", 0)
    assert code == 2 and "--frame-every 0: must be more than 0" in err and not (tmp_path / "x.db").exists()
    code, _, err = run_cli(capsys, "index", clip_dir, made["h264"], "--db", tmp_path / "x.db", "--fold-similarity",
                           "nan")
    assert code == 2 and "--fold-similarity nan: a cosine, at least -1" in err and not (tmp_path / "x.db").exists()
    report = index_paths(tmp_path / "y.db", clip_dir, [made["h264"]], fold_similarity=1.5)  # above 1: never fold
    assert report.segments == report.frames == 6


# --- caption and vqa of a moment -----------------------------------------------------------------------------------

def test_caption_and_vqa_at_a_time(blip_caption, blip_vqa, made, capsys):
    code, out, err = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--at", 5, "--max-new-tokens", 4)
    assert code == 0, err
    assert out.startswith(f"{made['h264']} @ 00:05 (5 s): ")
    code, out, _ = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--at", 5, "--max-new-tokens", 4,
                           "--json")
    (result,) = json.loads(out)["results"]
    assert result["video"] == str(made["h264"]) and result["at"] == 5
    frame = video.frame_at(made["h264"], 5).image
    from clipblip.engine import BlipEngine

    assert result["text"] == BlipEngine.from_dir(blip_caption.exported).caption([frame], max_new_tokens=4)[0]
    code, out, err = run_cli(capsys, "vqa", blip_vqa.exported, made["h264"], made["truncated"], "--at", 1,
                             "--question", "what colour?", "--max-new-tokens", 3)
    assert code == 16 and out.startswith(f"{made['h264']} @ 00:01") and "truncated.mp4" in err
    code, _, err = run_cli(capsys, "caption", blip_caption.exported, made["h264"])
    assert code == 2 and "a video; give --at SECONDS for the frame to read, or --every S" in err
    code, _, err = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--at", 40)
    assert code == 9 and "has no frame at 00:40" in err


def test_caption_every_writes_a_timed_list_and_subtitles(blip_caption, made, tmp_path, capsys):
    srt, vtt = tmp_path / "c.srt", tmp_path / "c.vtt"
    code, out, err = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--every", 4,
                             "--max-new-tokens", 3, "--out", srt)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["00:00–00:04", "00:04–00:08", "00:08–00:12"]
    text = srt.read_text(encoding="utf-8")
    assert text.startswith("1\n00:00:00,000 --> 00:00:04,000\n") and "3\n00:00:08,000 --> 00:00:12," in text
    code, out, _ = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--every", 4, "--max-new-tokens",
                           3, "--out", vtt, "--json")
    document = json.loads(out)
    assert [c["start"] for c in document["captions"]] == [0, 4, 8] and document["video"] == str(made["h264"])
    assert vtt.read_text(encoding="utf-8").startswith("WEBVTT\n\nNOTE written by clipblip ")
    code, _, err = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--every", 4, "--out", vtt)
    assert code != 0 and "exists" in err  # not replaced without --force
    assert run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--every", 4, "--max-new-tokens", 3,
                   "--out", vtt, "--force")[0] == 0
    user = tmp_path / "mine.srt"
    user.write_text("a user's subtitles\n")
    code, _, err = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--every", 4, "--out", user,
                           "--force")
    assert code != 0 and user.read_text() == "a user's subtitles\n"
    code, _, err = run_cli(capsys, "caption", blip_caption.exported, made["h264"], "--out", srt)
    assert code == 2 and "--out: writes the timed captions of --every" in err


def test_subtitles_escape_markup():
    from clipblip.cli.video import subtitles

    text = subtitles([{"start": 0, "end": 1.5, "text": "<b>bold</b> & more"}], ".vtt", "written by clipblip")
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in text and "00:00:00.000 --> 00:00:01.500" in text


def test_missing_pyav_is_named_with_its_extra(monkeypatch, made):
    import builtins

    real = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(ClipblipError, match=r"videos need PyAV, which is not installed: pip install 'clipblip\[video\]'"):
        video.probe(made["h264"])


def test_the_time_base_is_honoured(tmp_path):
    path = tmp_path / "ms.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 32, 32
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate((0, 40, 2500, 2540, 5000)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert [f.time for f in video.sample_frames(path, 2.0)] == pytest.approx([0.0, 2.5, 5.0])


def test_rerank_scores_a_segment_by_its_frame(tmp_path, made, clip_dir, blip_itm):
    from clipblip.engine import BlipEngine

    db = tmp_path / "r.db"
    index_paths(db, clip_dir, [made["h264"]], fold_similarity=SHARP)
    hits = search(db, text="a yellow circle", k=3, rerank=True, itm_dir=blip_itm.exported)
    assert len(hits) == 3 and all(h.is_segment and h.itc is not None for h in hits)
    frames = [video.frame_at(made["h264"], h.frame).image for h in hits]
    itm = BlipEngine.from_dir(blip_itm.exported).match(frames, ["a yellow circle"]).itm[:, 0]
    np.testing.assert_allclose([h.score for h in hits], itm, atol=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_each_kept_frame_is_checked_against_the_bound_not_only_the_header():
    """A stream may change size mid-way (H.264, VP9): the guard each kept frame passes before its pixels are made."""
    from types import SimpleNamespace

    video.check_size("clip.mp4", SimpleNamespace(width=100, height=100), 10_000, 3.0)  # at the bound: kept
    with pytest.raises(ImageTooLargeError, match=r"clip.mp4: its frame at 01:05 is 101x100 pixels, more than the 10000"):
        video.check_size("clip.mp4", SimpleNamespace(width=101, height=100), 10_000, 65.0)
