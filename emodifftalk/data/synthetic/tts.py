"""Real text-to-speech with per-phoneme timings: a ctypes binding to ``libespeak-ng``.

Why the library and not the ``espeak-ng`` command: the command's ``--pho`` output needs MBROLA
voices and ``-X`` traces carry no times. The library, initialised with
``espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA``, reports one PHONEME event per
phoneme with the exact *sample* at which it starts in the audio it hands back in the same
callback, so the spans are aligned with the waveform by construction (not estimated).

Install: ``apt-get install espeak-ng`` (``scripts/install.sh`` tries it). :func:`espeak_available`
says whether the library loads (``emodifftalk synth`` checks it first and falls back to formant
speech with a warning); :func:`speak` raises a RuntimeError naming the install command if not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
from dataclasses import dataclass

import numpy as np

INSTALL_HINT = ("espeak-ng is not installed: `sudo apt-get install espeak-ng` (Debian/Ubuntu) "
                "or `brew install espeak-ng`; or set synth.speech=formant")

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4


class _Event(ctypes.Structure):
    """``espeak_EVENT`` (speak_lib.h); ``id`` is a union whose ``string[8]`` holds the phoneme."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Prosody:
    """espeak-ng's voice knobs: ``rate`` words/min, ``pitch`` and ``pitch_range`` 0..100,
    ``volume`` 0..200; ``variant`` a voice variant (``m1``..``m7``, ``f1``..``f5``) or ''."""

    rate: int = 170
    pitch: int = 50
    pitch_range: int = 50
    volume: int = 100
    variant: str = ""


@dataclass
class Utterance:
    """audio (N,) float32 in [-1, 1] at ``sample_rate``; phones [(ipa, start_s, end_s)], silent
    gaps (pauses between words, the tail) as ``""``."""

    audio: np.ndarray
    sample_rate: int
    phones: list[tuple[str, float, float]]


class _Engine:
    """The process-wide espeak-ng instance (the library is a singleton; calls are serialised)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self.lib = ctypes.CDLL(name)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _Callback(self._on_audio)  # keep a reference: ctypes does not
        self.lock = threading.Lock()
        self.sample_rate = int(self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA))
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed (espeak-ng-data missing?); " + INSTALL_HINT)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((int(e.sample), bytes(e.id).split(b"\0")[0].decode("utf-8", "replace")))
            i += 1
        return 0

    def _synth_here(self, text: str, voice: str, prosody: Prosody) -> tuple[np.ndarray, list]:
        name = voice + (f"+{prosody.variant}" if prosody.variant else "")
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {name!r} (see `espeak-ng --voices`)")
        for param, value in ((_PARAM_RATE, prosody.rate), (_PARAM_VOLUME, prosody.volume),
                             (_PARAM_PITCH, prosody.pitch), (_PARAM_RANGE, prosody.pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return pcm.astype(np.int16), self._events

    def speak(self, text: str, voice: str, prosody: Prosody) -> Utterance:
        """Synthesize in a forked child. espeak-ng carries noise and glottal state from one
        utterance to the next (the same call gives different samples and even lengths depending
        on what was said before, and neither espeak_Cancel nor re-initialising resets it); a
        child forked from this never-used, freshly initialised engine always starts from the
        same state, so a data set is reproducible from its seed. Costs a few ms per call."""
        with self.lock:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: synthesize, send (header JSON line, PCM16 bytes), exit
                status = 0
                try:
                    os.close(read_fd)
                    try:
                        pcm, events = self._synth_here(text, voice, prosody)
                        head = {"events": events, "n": int(len(pcm))}
                    except Exception as e:  # reported to the parent, raised there
                        pcm, head = np.zeros(0, np.int16), {"error": f"{type(e).__name__}: {e}"}
                    with os.fdopen(write_fd, "wb") as out:
                        out.write(json.dumps(head).encode() + b"\n" + pcm.tobytes())
                except BaseException:
                    status = 1
                finally:
                    os._exit(status)
            os.close(write_fd)
            with os.fdopen(read_fd, "rb") as inp:
                payload = inp.read()
            os.waitpid(pid, 0)
        line, _, body = payload.partition(b"\n")
        if not line:
            raise RuntimeError(f"espeak-ng worker died synthesizing {text!r} with voice {voice!r}")
        head = json.loads(line)
        if "error" in head:
            raise ValueError(head["error"])
        audio = np.frombuffer(body, dtype=np.int16, count=head["n"]).astype(np.float32) / 32768.0
        return Utterance(audio=audio, sample_rate=self.sample_rate,
                         phones=_spans([tuple(e) for e in head["events"]], len(audio), self.sample_rate))


def _spans(events: list[tuple[int, str]], n_samples: int, sr: int) -> list[tuple[str, float, float]]:
    """Phoneme start events -> (phone, start_s, end_s) spans; each phone ends where the next starts.
    Language-switch markers such as ``(en)`` are dropped; empty names are pauses."""
    events = sorted((min(max(s, 0), n_samples), "" if p.startswith("(") else p) for s, p in events)
    spans = []
    for k, (start, phone) in enumerate(events):
        end = events[k + 1][0] if k + 1 < len(events) else n_samples
        if end > start:
            spans.append((phone, start / sr, end / sr))
    return spans


_ENGINE: _Engine | None = None
_ENGINE_ERROR: str | None = None


def _engine() -> _Engine:
    global _ENGINE, _ENGINE_ERROR
    if _ENGINE is None and _ENGINE_ERROR is None:
        try:
            _ENGINE = _Engine()
        except (OSError, RuntimeError) as e:
            _ENGINE_ERROR = f"{e}"
    if _ENGINE is None:
        raise RuntimeError(f"{INSTALL_HINT} ({_ENGINE_ERROR})")
    return _ENGINE


def espeak_available() -> bool:
    try:
        _engine()
    except RuntimeError:
        return False
    return True


def speak(text: str, voice: str, prosody: Prosody = Prosody()) -> Utterance:
    """Synthesize ``text`` with espeak-ng voice ``voice`` (e.g. ``en-us``, ``cmn-latn-pinyin``)."""
    return _engine().speak(text, voice, prosody)
