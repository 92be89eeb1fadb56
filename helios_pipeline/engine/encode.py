"""The chunk encoder: captured frames are piped into FFmpeg's stdin, never written to disk.

Every chunk is encoded so that joining chunks by stream copy is exact: one closed GOP that
starts with an IDR frame, no B-frames, no scene-cut keyframes, and identical parameters and
timescale in every chunk.
"""

from __future__ import annotations

import contextlib
import math
import queue
import resource
import threading
import time
from fractions import Fraction
from pathlib import Path

from helios_pipeline.engine.errors import RenderError, StuckError
from helios_pipeline.engine.ffmpeg import FFmpegProcess, ffmpeg_command
from helios_pipeline.engine.subtitles import subtitles_filter
from helios_pipeline.spec import RenderSpec

CRF_CODECS = ("libx264", "libx265", "libvpx", "libvpx-vp9", "libaom-av1", "libsvtav1")
PRESET_CODECS = ("libx264", "libx265", "libsvtav1")
# x264's rate-control look-ahead holds 20-40 frames at these presets: frames arrive at capture speed,
# so the encoder ends seconds after the last capture and holds ~200 MB more at 1080p. 10 frames cut
# the tail from 2.2 to 0.08-0.8 s and FFmpeg's memory from 433 to 246 MB at medium, for -0.5 dB PSNR
# and 6 % fewer bytes (benchmarks/README.md). The slow presets keep theirs: they are chosen for quality.
SHORT_LOOKAHEAD_PRESETS = ("faster", "fast", "medium")
X264_LOOKAHEAD = 10
X264_THREADS = 2
"""x264's threads per chunk. Left to x264, they are 1.5 per CPU the process may use, and they change the encoded
bits: the same chunk came out different from a 1-CPU and a 2-CPU worker. A 16-CPU worker's encoder would run 24
threads, each holding ~24 MB at 1080p (three threads: 251 MB, two: 227 MB), while the machine's other CPUs render
other chunks. Two keep a chunk's bits the same on every worker, and on two CPUs encode as fast as three (150 1080p
frames in 5.6-5.9 s either way); DOM capture, at 3-4 frames/s at 1080p, is far slower than either."""

X264_SYNC_LOOKAHEAD = 0
"""Frames buffered between x264's look-ahead thread and its encoding threads. Left to x264 it buffers some, each
~8 MB at 1080p; none changes no bit of the output (the same chunk came out byte-identical at veryfast, medium and
slow) nor the encoder's speed, and FFmpeg's peak PSS fell from 219 to 211 MB on a 1080p chunk
(benchmarks/README.md)."""

ENCODER_STALL_S = 30.0
"""Seconds FFmpeg may go without progress while it has work (input waiting, or a file to finish) before
it counts as stuck: a slow encoder takes every frame well within this, a stopped one never does."""
FINISH_SECONDS_PER_FRAME = 5.0
"""After its input ended, FFmpeg may take at most this per frame it was given (plus ``ENCODER_STALL_S``) to
exit: a safety net beside the stall rule, for an FFmpeg that burns CPU without ever finishing."""
STALL_POLL_S = 0.25


def fps_fraction(fps: float) -> Fraction:
    """fps as an exact fraction (29.97 -> 2997/100, 30000/1001-ish floats -> 30000/1001)."""
    return Fraction(str(fps)).limit_denominator(1001) if fps != int(fps) else Fraction(int(fps))


def track_timescale(fps: float) -> int:
    """A timescale near 90 kHz in which every frame lasts a whole number of ticks."""
    rate = fps_fraction(fps)
    return rate.numerator * max(1, math.ceil(90000 / rate.numerator))


def timescale_args(fps: float, output: Path) -> list[str]:
    """Pin track and movie timescales (MOV/MP4) so chunk durations are exact and seams add no jitter.

    With the default 1 ms movie timescale, a 24 fps chunk lasts 0.584 s instead of 0.58333 s and
    the concat demuxer shifts every later chunk by the rounding.
    """
    if output.suffix.lower() not in (".mov", ".mp4", ".m4v"):
        return []
    scale = str(track_timescale(fps))
    return ["-video_track_timescale", scale, "-movie_timescale", scale]


def codec_args(spec: RenderSpec, gop: int) -> list[str]:
    """Encoder options for one chunk of ``gop`` frames: a single closed GOP, no B-frames."""
    codec = spec.video_codec
    args = ["-c:v", codec, "-pix_fmt", spec.pixel_format]
    if spec.crf is not None and codec in CRF_CODECS:
        args += ["-crf", str(spec.crf)]
        if codec.startswith("libvpx") and spec.video_bitrate is None:
            args += ["-b:v", "0"]
    if spec.preset and codec in PRESET_CODECS:
        args += ["-preset", spec.preset]
    if spec.video_bitrate:
        args += ["-b:v", spec.video_bitrate]
    args += ["-g", str(gop), "-keyint_min", str(gop)]
    if codec == "libx264":
        x264_params = f"scenecut=0:open-gop=0:repeat-headers=1:sync-lookahead={X264_SYNC_LOOKAHEAD}"
        if (spec.preset or "medium") in SHORT_LOOKAHEAD_PRESETS:
            x264_params += f":rc-lookahead={X264_LOOKAHEAD}"
        args += ["-bf", "0", "-sc_threshold", "0", "-threads", str(X264_THREADS), "-x264-params", x264_params]
    elif codec == "libx265":
        args += [
            "-tag:v", "hvc1",
            "-x265-params",
            f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0:repeat-headers=1:log-level=error",
        ]  # fmt: skip
    elif codec.startswith("libvpx"):
        args += ["-auto-alt-ref", "0", "-lag-in-frames", "0"]
    elif codec in ("libaom-av1", "libsvtav1"):
        args += ["-bf", "0"] if codec == "libaom-av1" else []
    return args


FIRST_FRAME = "[first]"
"""The chunk's first frame (subtitles burned in) in its encoding run's filter graph: see ``chunk_encode_command``."""


def chunk_encode_command(
    spec: RenderSpec,
    frame_count: int,
    output: Path,
    *,
    input_args: list[str] | None = None,
    subtitles: Path | None = None,
    first_frame: tuple[str, list[str]] = ("", []),
) -> list[str]:
    """The FFmpeg command that turns piped frames into one chunk file.

    ``input_args`` describe what is piped in (default: JPEG/PNG images at the render's rate);
    ``subtitles`` is the chunk's own SRT (times relative to the chunk's first frame), burned in.
    With ``video_codec: copy`` the piped stream (in-page WebCodecs) is stored as it is.
    ``first_frame``: a filter graph that takes ``FIRST_FRAME``, and the options of its outputs (the chunk's
    preview ladder, ``thumbnail.ladder_graph``): the run that encodes the chunk writes them too, and the encoder
    gets the same frames, so the chunk's bits do not change. Ignored with ``video_codec: copy`` (nothing decoded).
    """
    if input_args is None:
        demuxer = ["-f", "mjpeg"] if spec.intermediate_image_format == "jpeg" else ["-f", "image2pipe", "-c:v", "png"]
        input_args = [*demuxer, "-framerate", str(fps_fraction(spec.fps))]
    ladder, ladder_outputs = first_frame
    if spec.video_codec == "copy":
        encoding, ladder_outputs = ["-c:v", "copy"], []
    else:
        codec = [*codec_args(spec, frame_count), "-force_key_frames", "expr:eq(n,0)"]
        burn = subtitles_filter(subtitles) if subtitles is not None else ""
        if ladder:  # the frames split after the subtitles: one copy to the encoder, the first frame to the ladder
            video = f"[0:v]{burn}{',' if burn else ''}split=2[video][head]"
            graph = f"{video};[head]trim=end_frame=1{FIRST_FRAME};{ladder}"
            encoding = ["-filter_complex", graph, "-map", "[video]", *codec]
        else:
            encoding = [*(["-vf", burn] if burn else []), *codec]
    return ffmpeg_command(
        *input_args, "-i", "pipe:0",
        "-frames:v", str(frame_count),
        *encoding,
        *timescale_args(spec.fps, output),
        "-an", "-map_metadata", "-1",
        str(output),
        *ladder_outputs,
    )  # fmt: skip


class ChunkEncoder:
    """An FFmpeg process fed from a writer thread, so capture never waits on encoding.

    FFmpeg that stops working (stopped, wedged, blocked on a dead disk) must not hold the chunk
    forever: it is *stuck* when it has work and makes no progress for ``stall_seconds`` — a piece
    of input waits that long to be taken, or, once the input has ended, it neither exits nor uses
    CPU that long. Then it is killed and :class:`StuckError` names the frame it would not take.
    """

    def __init__(
        self,
        command: list[str],
        max_pending: int = 8,
        what: str = "chunk encode",
        stall_seconds: float | None = None,
    ):
        self.command = command
        self.what = what
        self.stall_seconds = ENCODER_STALL_S if stall_seconds is None else stall_seconds
        self.encode_seconds = 0.0
        self.encode_cpu_seconds = 0.0
        self._pending: queue.Queue[tuple[bytes, int | None] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._written = 0
        self._in_flight: tuple[int | None, float] | None = None  # (frame, since) of the write FFmpeg has not taken
        self._input_ended_at: float | None = None
        self._ffmpeg = FFmpegProcess(command, what, stdin=True)
        self._writer = threading.Thread(target=self._write_loop, name="helios-encoder", daemon=True)
        self._writer.start()

    def _write_loop(self) -> None:
        stdin = self._ffmpeg.stdin
        assert stdin is not None
        frame: int | None = None
        try:
            while (item := self._pending.get()) is not None:
                data, frame = item
                self._in_flight = (frame, time.monotonic())
                stdin.write(data)
                self._in_flight = None
        except BaseException as exc:  # a broken pipe means FFmpeg died; finish() reports why
            self._error = exc
            while self._pending.get() is not None:
                pass
        self._in_flight = (frame, time.monotonic())  # closing flushes what is still buffered
        with contextlib.suppress(OSError):
            stdin.close()
        self._in_flight = None

    def write(self, data: bytes, frame: int | None = None) -> None:
        """Queue ``data`` (the picture of ``frame``) for FFmpeg; raise if FFmpeg failed or is stuck."""
        self._hand_over((data, frame))
        self._written += 1

    def _hand_over(self, item: tuple[bytes, int | None] | None) -> None:
        """Queue ``item`` for the writer, checking FFmpeg while the queue is full (it never waits unbounded)."""
        while True:
            self._check()
            try:
                self._pending.put(item, timeout=STALL_POLL_S)
                return
            except queue.Full:
                continue

    def _check(self) -> None:
        if self._error is not None:
            self._raise_failure()
        in_flight = self._in_flight
        if in_flight is not None and time.monotonic() - in_flight[1] > self.stall_seconds:
            self.kill()
            raise StuckError(
                f"{self.what}: FFmpeg stopped reading its input (it took nothing for {self.stall_seconds:.0f} s) "
                "and was killed",
                in_flight[0],
            )

    def end_input(self) -> None:
        """Tell FFmpeg the input is complete (it encodes what it still holds) without waiting for it, so
        the caller can do other work, such as closing the browser, while FFmpeg finishes."""
        if self._input_ended_at is None:
            self._hand_over(None)
            self._input_ended_at = time.perf_counter()

    def finish(self, timeout: float | None = None) -> None:
        """Close stdin and wait for FFmpeg to write the file; raise with its stderr on failure.

        Bounded by the stall rule (FFmpeg takes the rest of its input, then works until it exits)
        and, after the input ended, by ``timeout`` (default: ``stall_seconds`` plus
        ``FINISH_SECONDS_PER_FRAME`` per piece of input it was given): never a flat wait.
        """
        self.end_input()
        while self._writer.is_alive():
            self._check()
            self._writer.join(timeout=STALL_POLL_S)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        if timeout is None:
            timeout = self.stall_seconds + FINISH_SECONDS_PER_FRAME * self._written
        self._wait_for_exit(timeout)
        assert self._input_ended_at is not None
        self.encode_seconds = time.perf_counter() - self._input_ended_at  # FFmpeg's tail after its last input
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.encode_cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if self._error is not None:
            self._raise_failure()

    def _wait_for_exit(self, timeout: float) -> None:
        """Wait for FFmpeg to exit once its input has ended: it must keep using CPU until it does."""
        deadline = time.monotonic() + timeout
        cpu, progressed = self._ffmpeg.cpu_seconds(), time.monotonic()
        while self._ffmpeg.returncode is None:
            now = time.monotonic()
            if (current := self._ffmpeg.cpu_seconds()) != cpu:
                cpu, progressed = current, now
            if now - progressed > self.stall_seconds or now > deadline:
                self.kill()
                reason = (
                    f"used no CPU for {self.stall_seconds:.0f} s"
                    if now <= deadline
                    else f"did not finish within {timeout:.0f} s"
                )
                raise StuckError(f"{self.what}: FFmpeg stopped working after its last input ({reason}) and was killed")
            self._ffmpeg.exited_within(STALL_POLL_S)  # each chunk's end waited up to 0.25 s more in a sleep
        try:
            self._ffmpeg.wait(STALL_POLL_S)
        except RenderError:
            self.kill()
            raise

    def _raise_failure(self) -> None:
        self.kill()
        raise self._ffmpeg.failure(fallback=self._error)

    def kill(self) -> None:
        """Stop FFmpeg now (cancel or failure); safe to call twice."""
        self._ffmpeg.kill()
        if self._writer.is_alive():
            # unblock a writer stuck on a full queue
            while True:
                try:
                    self._pending.put_nowait(None)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._pending.get_nowait()
            self._writer.join(timeout=5)
