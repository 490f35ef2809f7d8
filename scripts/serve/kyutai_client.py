#!/usr/bin/env python3
"""Runs Kyutai's own Python client, `moshi.client` from PyPI moshi 0.2.13, unmodified and headless
against a server speaking Kyutai's /api/chat protocol, and reports what the client got.

    python kyutai_client.py --host H --port P --wav IN.wav --out OUT.wav --json SUMMARY.json \
        [--rate R] [--tail-seconds S] [--grace G] [--timeout T] [--query 'text_temperature=0.7&...'] [-v]

Run it with the python that scripts/serve/client_env.sh prints (no torch, no PortAudio needed).

How the client is driven (Kyutai's client.py, moshi 0.2.13):
- `sounddevice` is replaced by a stand-in module before moshi.client is imported. Its InputStream
  feeds IN.wav (24 kHz mono, 16-bit PCM or float; no resampling) in 1920-sample blocks every
  80 ms / R, then S seconds of silence so the model can answer. Its OutputStream pulls a block every
  80 ms / R, like a sound card would, which is what makes the client report " [LAG]".
- `moshi` is replaced by an empty package whose __path__ is the installed one, so `import moshi.client`
  loads client.py and client_utils.py only, not moshi/__init__.py (which imports torch).
- aiohttp's ClientWebSocketResponse.receive is wrapped to see every message the server sends: the
  client itself only logs "unknown message kind 0" for the handshake and nothing for message timing.
- The client never closes the connection itself. G seconds after the input ends the driver closes the
  websocket, which ends the client's receive loop; the client then returns from run() normally.

Output: OUT.wav holds the server audio the client decoded (24 kHz mono 16-bit, without the zeros the
client plays on LAG). SUMMARY.json holds:
  handshake               the server sent a message whose first byte is 0
  text, text_pieces       what the client printed for text messages, and how many it printed
  audio_seconds_received  length of OUT.wav
  input_seconds           length of IN.wav; sent_seconds adds the padding of the last block and the tail
  lag_count               " [LAG]" the client printed while the input was being sent, i.e. times the paced
                          output stream found no server audio queued (meaningless for R=0)
  lag_after_input         the same after the input ended (the server has stopped: expected)
  first_audio_s           seconds from the start of the input stream to the server's first audio message
  errors                  what went wrong (client errors, stray prints, timeouts); [] on a clean run
  message_types           server messages by first byte ("0", "1", "2", ...); non-binary frames by aiohttp
                          type name ("close" from the server, "closing" from the driver's own close)
  ended_by                "driver" (closed it after the input), "server" (closed first) or "timeout"
  client_log              the client's own log lines
Exit status: 0 when the run went to the end (whatever the server sent: assert on the JSON), 2 for bad
arguments or input, 3 when the client could not connect, 4 on --timeout, 1 for anything else.
"""

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import struct
import sys
import threading
import time
import types
import wave
from collections import Counter
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24000
FRAME = 1920  # 80 ms: the block size client.py asks both streams for, and the model's frame
PERIOD = FRAME / SAMPLE_RATE


def read_wav(path: Path) -> np.ndarray:
    """Float32 mono samples of a 24 kHz mono wav, 16-bit PCM or IEEE float.

    A small RIFF reader rather than `wave`, which in Python 3.11 rejects float files."""
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    fmt = body = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            fmt = data[pos + 8:pos + 8 + size]
        elif cid == b"data":
            body = data[pos + 8:pos + 8 + size]  # a streamed file's oversized length just clips here
        pos += 8 + size + (size & 1)
    if fmt is None or body is None:
        raise ValueError(f"{path}: no fmt or data chunk")
    tag, channels, rate = struct.unpack("<HHI", fmt[:8])
    bits = struct.unpack("<H", fmt[14:16])[0]
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID
        tag = struct.unpack("<H", fmt[24:26])[0]
    dtype = {(1, 16): "<i2", (3, 32): "<f4", (3, 64): "<f8"}.get((tag, bits))
    if dtype is None:
        raise ValueError(f"{path}: format tag {tag}, {bits} bits; need 16-bit PCM or 32/64-bit float")
    if rate != SAMPLE_RATE or channels != 1:
        raise ValueError(f"{path}: {rate} Hz, {channels} channel(s); the driver needs {SAMPLE_RATE} Hz mono "
                         f"and does not resample (convert first, e.g. sox IN.wav -r 24000 -c 1 OUT.wav)")
    width = np.dtype(dtype).itemsize
    pcm = np.frombuffer(body[:len(body) // width * width], dtype=dtype).astype(np.float32)
    return pcm / 32768.0 if tag == 1 else pcm


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())


class Recorder:
    """Everything the summary reports, filled from the stream threads and the event loop."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.text_pieces: list[str] = []
        self.client_log: list[str] = []
        self.errors: list[str] = []
        self.messages: Counter = Counter()
        self.handshake = False
        self.lag_prints = 0  # every " [LAG]" the client printed, drain included
        # LAG seen by the paced output stream while the input was still being sent, and after: once the
        # input stops the server has nothing left to answer, so the client's queue runs dry by design.
        self.lag_count = 0
        self.lag_after_input = 0
        self.input_ended = False
        self.out_blocks: list[np.ndarray] = []
        self.sent_blocks = 0
        self.connected = False
        self.input_t0: float | None = None
        self.first_audio_t: float | None = None
        self.ws = None  # the client's websocket, from the receive hook, so the driver can close it
        self.on_input_done = lambda: None

    def log(self, line: str) -> None:
        self.client_log.append(line)
        if self.verbose:
            print(f"[client] {line}", file=sys.stderr)

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        if self.verbose:
            print(f"[driver] {msg}", file=sys.stderr)

    def on_message(self, msg) -> None:
        import aiohttp

        if msg.type != aiohttp.WSMsgType.BINARY:
            self.messages[msg.type.name.lower()] += 1
            return
        data = msg.data
        if not data:
            self.messages["empty"] += 1
            return
        self.messages[str(data[0])] += 1
        if data[0] == 0:
            self.handshake = True
        elif data[0] == 1 and self.first_audio_t is None:
            self.first_audio_t = time.monotonic()


class TextStream:
    """The printer's stream: RawPrinter.print_token writes each text piece once."""

    def __init__(self, rec: Recorder):
        self.rec = rec

    def write(self, s: str) -> int:
        self.rec.text_pieces.append(s)
        return len(s)

    def flush(self) -> None:
        pass


class ErrStream:
    """The printer's err_stream: log lines (one print() = text + "\\n") and the colored " [LAG]" marks."""

    def __init__(self, rec: Recorder):
        self.rec = rec
        self.partial = ""
        self.lock = threading.Lock()  # LAG comes from the output thread, logs from the event loop

    def write(self, s: str) -> int:
        with self.lock:
            n = s.count(" [LAG]")
            if n:
                self.rec.lag_prints += n
                return len(s)
            self.partial += s
            *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self.rec.log(line)
        return len(s)

    def flush(self) -> None:
        pass


class StrayStdout:
    """sys.stdout while the client runs: client.py print()s caught exceptions there, bare."""

    def __init__(self, rec: Recorder):
        self.rec = rec
        self.partial = ""

    def write(self, s: str) -> int:
        self.partial += s
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            if line.strip():
                self.rec.error(f"client printed: {line}")
        return len(s)

    def flush(self) -> None:
        pass


def pace(stop: threading.Event, t0: float, k: int, rate: float) -> bool:
    """Waits until block k is due (it is due once recorded, like a sound card's); False if stopped."""
    if rate <= 0:
        return not stop.wait(0.001)
    delay = t0 + (k + 1) * PERIOD / rate - time.monotonic()
    return not stop.wait(max(delay, 0.0))


def fake_sounddevice(rec: Recorder, pcm: np.ndarray, rate: float, tail_seconds: float) -> types.ModuleType:
    """A stand-in for the `sounddevice` module with the two stream classes client.py uses."""

    class _Stream:
        def __init__(self, *, samplerate, channels, blocksize, callback, **_):
            if (samplerate, channels, blocksize) != (SAMPLE_RATE, 1, FRAME):
                raise ValueError(f"stand-in streams do {SAMPLE_RATE} Hz mono in blocks of {FRAME}; "
                                 f"client asked for {samplerate} Hz, {channels} channel(s), {blocksize}")
            self.callback = callback
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._run, daemon=True, name=type(self).__name__)
            rec.connected = True  # client.py makes its streams right after the websocket opened

        def __enter__(self):
            self.thread.start()
            return self

        def __exit__(self, *exc):
            self.stop.set()
            self.thread.join(timeout=5)
            return False

    class InputStream(_Stream):
        def _run(self):
            padded = np.zeros(-(-len(pcm) // FRAME) * FRAME, np.float32)
            padded[:len(pcm)] = pcm
            blocks = list(padded.reshape(-1, FRAME))
            blocks += [np.zeros(FRAME, np.float32)] * int(np.ceil(tail_seconds * SAMPLE_RATE / FRAME))
            rec.input_t0 = t0 = time.monotonic()
            try:
                for k, block in enumerate(blocks):
                    if not pace(self.stop, t0, k, rate):
                        break
                    # PortAudio hands the callback a fresh (frames, channels) float32 array each time.
                    self.callback(block.reshape(FRAME, 1).copy(), FRAME, None, None)
                    rec.sent_blocks += 1
            except Exception as e:  # a failing callback would otherwise die silently in this thread
                rec.error(f"input callback raised {e!r}")
            rec.input_ended = True
            rec.on_input_done()

    class OutputStream(_Stream):
        def _pull(self) -> bool:
            """One callback; keeps the block unless the client filled it with zeros for lack of audio."""
            buf = np.zeros((FRAME, 1), np.float32)
            lags = rec.lag_prints
            self.callback(buf, FRAME, None, None)
            if rec.lag_prints != lags:
                return False
            rec.out_blocks.append(buf[:, 0].copy())
            return True

        def _run(self):
            t0 = time.monotonic()
            k = 0
            try:
                while pace(self.stop, t0, k, rate):
                    if not self._pull():
                        if rec.input_ended:
                            rec.lag_after_input += 1
                        else:
                            rec.lag_count += 1
                    k += 1
            except Exception as e:
                rec.error(f"output callback raised {e!r}")

        def __exit__(self, *exc):
            super().__exit__(*exc)
            # Audio the client decoded but a sound card had not played yet still counts as received.
            try:
                while self._pull():
                    pass
            except Exception as e:
                rec.error(f"output callback raised {e!r} while draining")
            return False

    mod = types.ModuleType("sounddevice")
    mod.__doc__ = "Headless stand-in for sounddevice, from scripts/serve/kyutai_client.py"
    mod.InputStream, mod.OutputStream = InputStream, OutputStream
    return mod


def import_kyutai_client(sounddevice: types.ModuleType):
    """Imports moshi.client with the stand-in sounddevice and without moshi/__init__.py (torch)."""
    sys.modules["sounddevice"] = sounddevice
    spec = importlib.util.find_spec("moshi")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("kyutai_client: moshi is not installed here; use the python that "
                         "scripts/serve/client_env.sh prints")
    pkg = types.ModuleType("moshi")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["moshi"] = pkg
    import moshi.client
    import moshi.client_utils
    return moshi.client, moshi.client_utils


def install_ws_hooks(rec: Recorder, query: str | None) -> None:
    import aiohttp

    receive = aiohttp.ClientWebSocketResponse.receive

    async def recording_receive(self, *a, **kw):
        rec.ws = self  # before awaiting: the driver must be able to close a socket the server never used
        msg = await receive(self, *a, **kw)
        rec.on_message(msg)
        return msg

    aiohttp.ClientWebSocketResponse.receive = recording_receive

    if query:
        # Test-only shim: Kyutai's client sends no query string (the Rust server reads sampling
        # settings from one), so to exercise that path we append it to the URL the client opens.
        ws_connect = aiohttp.ClientSession.ws_connect
        query = query.lstrip("?")

        def ws_connect_with_query(self, url, *a, **kw):
            url = str(url)
            return ws_connect(self, url + ("&" if "?" in url else "?") + query, *a, **kw)

        aiohttp.ClientSession.ws_connect = ws_connect_with_query


async def drive(args, client, client_utils, rec: Recorder) -> str:
    """Runs moshi.client.run until the input is over (plus grace), the server closes, or --timeout."""
    loop = asyncio.get_running_loop()
    input_done = asyncio.Event()
    rec.on_input_done = lambda: loop.call_soon_threadsafe(input_done.set)
    printer = client_utils.RawPrinter(stream=TextStream(rec), err_stream=ErrStream(rec))
    target = argparse.Namespace(host=args.host, port=args.port, https=False, url=None)
    task = asyncio.create_task(client.run(printer, target))
    waiter = asyncio.create_task(input_done.wait())
    deadline = loop.time() + args.timeout
    done, _ = await asyncio.wait({task, waiter}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()  # raises what stopped it, e.g. a refused connection
        return "server"
    ended_by = "driver"
    if waiter in done:
        try:  # the server may still be answering the tail: give it a moment
            await asyncio.wait_for(asyncio.shield(task), max(0.0, min(args.grace, deadline - loop.time())))
            task.result()
            return "server"
        except asyncio.TimeoutError:
            pass
    elif not rec.connected:  # e.g. a host that drops packets: report it as a failed connection
        task.cancel()
        raise TimeoutError(f"no connection within {args.timeout:g} s")
    else:
        ended_by = "timeout"
        rec.error(f"timeout: the input had not ended after {args.timeout:g} s")
    # Closing the websocket from here ends the client's `async for` over it; client.run then leaves its
    # stream and session contexts itself. Cancelling is the fallback if that does not happen.
    closer = asyncio.create_task(rec.ws.close()) if rec.ws is not None else None
    try:
        await asyncio.wait_for(task, 5.0)
    except asyncio.TimeoutError:
        rec.error("client did not return within 5 s of the websocket closing; cancelled it")
    except Exception as e:
        rec.error(f"client raised {e!r} while closing")
    if closer is not None:
        try:
            await asyncio.wait_for(closer, 5.0)
        except Exception as e:
            rec.error(f"closing the websocket failed: {e!r}")
    return ended_by


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=8998)
    ap.add_argument("--wav", type=Path, required=True, help="input, 24 kHz mono, 16-bit PCM or float")
    ap.add_argument("--out", type=Path, required=True, help="server audio the client decoded (wav)")
    ap.add_argument("--json", type=Path, required=True, help="summary")
    ap.add_argument("--rate", type=float, default=1.0, help="realtime factor; 0 = as fast as possible")
    ap.add_argument("--tail-seconds", type=float, default=2.0, help="silence sent after the wav")
    ap.add_argument("--grace", type=float, default=1.0, help="seconds to wait after the input before closing")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="overall limit in seconds (default: the input's duration at --rate, plus 60)")
    ap.add_argument("--query", help="query string for the URL (test-only shim; Kyutai's client sends none)")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo the client's log lines to stderr")
    args = ap.parse_args()
    if args.rate < 0 or args.tail_seconds < 0 or args.grace < 0:
        ap.error("--rate, --tail-seconds and --grace must be >= 0")
    try:
        pcm = read_wav(args.wav)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    sent_blocks_planned = -(-len(pcm) // FRAME) + int(np.ceil(args.tail_seconds * SAMPLE_RATE / FRAME))
    if args.timeout <= 0:
        args.timeout = 60.0 + (sent_blocks_planned * PERIOD / args.rate if args.rate > 0 else 0.0)

    rec = Recorder(args.verbose)
    client, client_utils = import_kyutai_client(fake_sounddevice(rec, pcm, args.rate, args.tail_seconds))
    install_ws_hooks(rec, args.query)

    status, ended_by = 0, None
    real_stdout, sys.stdout = sys.stdout, StrayStdout(rec)
    try:
        ended_by = asyncio.run(drive(args, client, client_utils, rec))
        if ended_by == "timeout":
            status = 4
    except Exception as e:
        if not rec.connected:
            sys.stdout = real_stdout
            print(f"kyutai_client: could not connect to ws://{args.host}:{args.port}/api/chat: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            return 3
        rec.error(f"client raised {e!r}")
        status = 1
    finally:
        sys.stdout = real_stdout

    audio = np.concatenate(rec.out_blocks) if rec.out_blocks else np.zeros(0, np.float32)
    write_wav(args.out, audio)
    summary = {
        "handshake": rec.handshake,
        "text": "".join(rec.text_pieces),
        "text_pieces": len(rec.text_pieces),
        "audio_seconds_received": round(len(audio) / SAMPLE_RATE, 4),
        "input_seconds": round(len(pcm) / SAMPLE_RATE, 4),
        "sent_seconds": round(rec.sent_blocks * PERIOD, 4),
        "lag_count": rec.lag_count,
        "lag_after_input": rec.lag_after_input,
        "first_audio_s": (None if rec.first_audio_t is None or rec.input_t0 is None
                          else round(rec.first_audio_t - rec.input_t0, 4)),
        "errors": rec.errors,
        "message_types": dict(sorted(rec.messages.items())),
        "ended_by": ended_by,
        "client_version": importlib.metadata.version("moshi"),
        "client_log": rec.client_log,
    }
    args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"kyutai_client: ended by {ended_by}; handshake {rec.handshake}, {len(rec.text_pieces)} text pieces, "
          f"{summary['audio_seconds_received']:.2f} s audio for {summary['sent_seconds']:.2f} s sent, "
          f"{rec.lag_count} LAG, {len(rec.errors)} errors", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
