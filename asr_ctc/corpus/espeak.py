"""Text to speech with eSpeak NG, called through ``ctypes``.

The shared library and its data directory come from the ``espeakng-loader`` wheel, so nothing has to be
installed system-wide.

eSpeak NG keeps its synthesis state in C globals, and some of it survives every public reset: the pitch
flutter phase, the automatic gain control and the glottal cycle counter carry over from one utterance to
the next, so the same call gives slightly different samples depending on what was spoken before. For
reproducible corpora each :class:`ESpeakSynthesizer` loads its own private copy of the library file and
loads it afresh for every utterance (``dlopen`` -> initialise -> speak -> ``dlclose``, about 1 ms), so an
utterance's audio is a pure function of the call's arguments. Instances are independent of each other and
of any other eSpeak user in the process; one instance serialises its own calls with a lock.
"""

from __future__ import annotations

import _ctypes
import bisect
import ctypes
import functools
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_ctc.boundaries import WordTime

# espeak_AUDIO_OUTPUT: synchronous mode renders in the calling thread and hands samples to our callback,
# with no audio device and no background thread.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeakINITIALIZE_DONT_EXIT: report errors by return value instead of calling exit() inside the library;
# espeakINITIALIZE_PHONEME_EVENTS: also report the start of every phoneme (it changes no sample of the audio).
_INITIALIZE_DONT_EXIT = 0x8000
_INITIALIZE_PHONEME_EVENTS = 0x0001
# Milliseconds of audio per callback; larger means fewer Python round trips per utterance.
_BUFFER_MS = 500
# espeak_POSITION_TYPE POS_CHARACTER, and espeakCHARS_UTF8 for espeak_Synth's flags.
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
# espeak_PARAMETER values. (Punctuation and capitals announcement stay at their "off" defaults: this
# library build refuses to set them in synchronous mode, and a fresh library starts with them off.)
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
# espeak_ERROR codes.
_EE_OK = 0
_ERROR_NAMES = {-1: "internal error", 1: "buffer full", 2: "not found"}

RATE_RANGE = (80, 450)  # words per minute accepted by eSpeak NG
PITCH_RANGE = (0, 100)  # eSpeak's pitch scale; 50 is the voice's normal pitch

# int (*)(short *wav, int numsamples, espeak_EVENT *events); returning non-zero aborts synthesis.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


# espeak_EVENT_TYPE values (speak_lib.h).
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
# Events the library can queue per callback: eSpeak NG (speech.c) sizes its list as
# buffer_ms * 200 / 1000 + 20 and silently drops events past (size - 2), so a callback that delivers that
# many may have lost some.
_MAX_EVENTS_PER_CALLBACK = _BUFFER_MS * 200 // 1000 + 20 - 2


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position of the word in the text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds, truncated
        ("sample", ctypes.c_int),  # the same instant in samples from the start of the output
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


@dataclass(frozen=True)
class SynthesisEvent:
    """A word or phoneme start reported by eSpeak NG while it synthesised.

    Attributes:
        kind: ``"word"`` or ``"phoneme"``.
        text_position: 1-based character position, in the spoken text, of the word the event belongs to
            (phonemes carry their word's position).
        sample: the instant, in samples of the synthesiser's output from its first sample.
        phoneme: eSpeak's phoneme mnemonic (``"p"``, ``"'eI"``; pauses start with ``"_"``), ``""`` for words.
    """

    kind: str
    text_position: int
    sample: int
    phoneme: str = ""

    @property
    def is_pause(self) -> bool:
        return self.kind == "phoneme" and self.phoneme.startswith("_")


class ESpeakError(RuntimeError):
    """eSpeak NG could not be loaded, initialised, or asked to speak."""


def library_path() -> str:
    """Path of the ``libespeak-ng`` shared library shipped by ``espeakng-loader``."""
    import espeakng_loader

    return espeakng_loader.get_library_path()


def data_path() -> str:
    """Path of the ``espeak-ng-data`` directory shipped by ``espeakng-loader``."""
    import espeakng_loader

    return espeakng_loader.get_data_path()


def list_variants(espeak_data: str | os.PathLike | None = None) -> list[str]:
    """Names of the voice variants (``m1``, ``f3``, ``klatt2``, ...) that can follow ``+`` in a voice name.

    eSpeak silently ignores an unknown variant, so callers should validate against this list.
    """
    variant_dir = Path(espeak_data or data_path()) / "voices" / "!v"
    return sorted(p.name for p in variant_dir.iterdir() if p.is_file())


def list_language_voices(espeak_data: str | os.PathLike | None = None) -> list[str]:
    """Lower-cased file names of the language voices (``en``, ``en-us``, ``en-gb-x-rp``, ...).

    These are the names :meth:`ESpeakSynthesizer.synthesize` accepts before the ``+variant`` suffix.
    """
    lang_dir = Path(espeak_data or data_path()) / "lang"
    return sorted({p.name.lower() for p in lang_dir.rglob("*") if p.is_file()})


def _declare(lib: ctypes.CDLL) -> None:
    """Give ctypes the C signatures of the functions we call (the defaults would truncate pointers)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,  # text
        ctypes.c_size_t,  # size in bytes, including the terminating NUL
        ctypes.c_uint,  # position
        ctypes.c_int,  # position type
        ctypes.c_uint,  # end position (0: none)
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique identifier out-pointer (unused)
        ctypes.c_void_p,  # user data (unused)
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p
    if hasattr(lib, "espeak_ng_SetRandSeed"):  # eSpeak NG >= 1.51
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None


def _check(code: int, what: str) -> None:
    if code != _EE_OK:
        raise ESpeakError(f"{what} failed: {_ERROR_NAMES.get(code, f'error {code}')}")


def _private_library_copy() -> tuple[str, Callable[[], None]]:
    """Copy the library to a private file; return its path and a function that deletes it.

    On Linux the copy is an anonymous memory file (``memfd``), loaded through ``/proc/self/fd``: nothing
    touches the disk, and nothing is left behind however the process ends (pool workers are often killed
    without running finalizers). Elsewhere it is a file in a temporary directory.
    """
    with open(library_path(), "rb") as src:
        image = src.read()
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("libespeak-ng-private", os.MFD_CLOEXEC)
        with os.fdopen(fd, "wb", closefd=False) as dst:  # a file object writes everything, os.write may not
            dst.write(image)
        return f"/proc/self/fd/{fd}", functools.partial(os.close, fd)
    tmpdir = tempfile.mkdtemp(prefix="asr-ctc-espeak-")
    path = os.path.join(tmpdir, os.path.basename(library_path()))
    with open(path, "wb") as dst:
        dst.write(image)
    return path, functools.partial(shutil.rmtree, tmpdir, True)


def _is_loaded(path: str) -> bool:
    """Whether the shared library at ``path`` is currently loaded in this process (dlopen RTLD_NOLOAD)."""
    try:
        handle = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    except OSError:
        return False
    _ctypes.dlclose(handle._handle)
    return True


class ESpeakSynthesizer:
    """Speak text with eSpeak NG and return float32 audio at the library's sampling rate (22050 Hz).

    Each call runs in a freshly loaded library, so the audio depends only on the call's arguments, never on
    what was spoken before or in which process: corpora come out bit-identical whatever the number or order
    of worker processes. :meth:`close` (or ``with``) frees the private library copy early; otherwise it is
    freed when the object is collected.
    """

    def __init__(self, espeak_data: str | os.PathLike | None = None) -> None:
        self._data_path = str(Path(espeak_data or data_path()).resolve())
        self._variants = frozenset(list_variants(self._data_path))
        self._languages = frozenset(list_language_voices(self._data_path))
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[SynthesisEvent] = []
        self._events_overflowed = False
        # Keep a reference: ctypes frees the C thunk when the Python object is collected.
        self._callback = _SYNTH_CALLBACK(self._collect)
        # A private copy of the library file gives this instance its own set of the library's globals,
        # untouched by any other user of libespeak-ng in the process (who would share the original path).
        self._lib_copy, cleanup = _private_library_copy()
        self._finalizer = weakref.finalize(self, cleanup)
        self._sample_rate = 0
        self._version = ""
        self._verified_unload = False
        with self._lock, self._loaded() as lib:
            self._version = (lib.espeak_Info(None) or b"").decode()

    def __enter__(self) -> ESpeakSynthesizer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the private library copy; the synthesizer cannot be used afterwards."""
        with self._lock:
            self._finalizer()

    @property
    def sample_rate(self) -> int:
        """Sampling rate of the returned audio in Hz (22050 for eSpeak NG)."""
        return self._sample_rate

    @property
    def version(self) -> str:
        """eSpeak NG version string, e.g. ``"1.52.0"``."""
        return self._version

    @property
    def variants(self) -> frozenset[str]:
        """Voice variants available after ``+`` in a voice name."""
        return self._variants

    @property
    def languages(self) -> frozenset[str]:
        """Language voice names available before ``+`` in a voice name."""
        return self._languages

    def _collect(self, wav: ctypes._Pointer, num_samples: int, events: int) -> int:
        # The library reuses its buffer and its event list after we return, so copy both out now.
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        if events:
            event = ctypes.cast(events, ctypes.POINTER(_Event))
            count = 0
            while event[count].type != _EVENT_LIST_TERMINATED:
                e = event[count]
                if e.type == _EVENT_WORD:
                    self._events.append(SynthesisEvent("word", e.text_position, e.sample))
                elif e.type == _EVENT_PHONEME:
                    name = e.id.string.decode("utf-8", "replace")
                    self._events.append(SynthesisEvent("phoneme", e.text_position, e.sample, name))
                count += 1
            if count >= _MAX_EVENTS_PER_CALLBACK:
                self._events_overflowed = True
        return 0

    def _loaded(self) -> _LoadedLibrary:
        if not self._finalizer.alive:
            raise ESpeakError("this ESpeakSynthesizer has been closed")
        return _LoadedLibrary(self)

    def synthesize(
        self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, seed: int = 0
    ) -> np.ndarray:
        """Speak ``text``; the audio of :meth:`synthesize_with_events` without the events."""
        return self.synthesize_with_events(text, voice, rate, pitch, seed)[0]

    def synthesize_with_events(
        self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, seed: int = 0
    ) -> tuple[np.ndarray, list[SynthesisEvent]]:
        """Speak ``text``, and say when each word and phoneme starts.

        Args:
            text: what to say (UTF-8; punctuation is interpreted, not read aloud).
            voice: ``language[+variant]``, e.g. ``"en-us"``, ``"en-us+f3"``, ``"en-gb-x-rp+klatt2"``.
            rate: speaking rate in words per minute, within :data:`RATE_RANGE`.
            pitch: base pitch on eSpeak's 0-100 scale (50 is the voice's normal pitch).
            seed: seed for eSpeak's internal noise generator (breathiness, some variants' roughness).

        Returns:
            ``(audio, events)``: float32 array, shape (num_samples,), values in [-1, 1), at
            :attr:`sample_rate`; and eSpeak's word and phoneme events in time order
            (:func:`word_times` turns them into word boundaries).

        Raises:
            ESpeakError: unknown voice, a library failure, or an event list that overflowed (events lost).
            ValueError: ``rate`` or ``pitch`` out of range.
        """
        language, _, variant = voice.partition("+")
        if language.lower() not in self._languages:
            raise ESpeakError(f"unknown eSpeak language voice {language!r} in {voice!r}")
        # eSpeak would silently fall back to the plain voice for an unknown variant; refuse instead.
        if variant and variant not in self._variants:
            raise ESpeakError(f"unknown eSpeak voice variant {variant!r} in {voice!r}")
        if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise ValueError(f"rate must be within {RATE_RANGE} words per minute, got {rate}")
        if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
            raise ValueError(f"pitch must be within {PITCH_RANGE}, got {pitch}")
        with self._lock, self._loaded() as lib:
            _check(lib.espeak_SetVoiceByName(voice.encode()), f"espeak_SetVoiceByName({voice!r})")
            # Parameters after the voice: selecting a voice resets some of them.
            for param, value in (
                (_PARAM_RATE, rate),
                (_PARAM_PITCH, pitch),
                (_PARAM_VOLUME, 100),
                (_PARAM_RANGE, 50),
                (_PARAM_WORDGAP, 0),
            ):
                _check(lib.espeak_SetParameter(param, int(value), 0), "espeak_SetParameter")
            if hasattr(lib, "espeak_ng_SetRandSeed"):
                lib.espeak_ng_SetRandSeed(int(seed))
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            self._chunks, self._events, self._events_overflowed = [], [], False
            try:
                _check(
                    lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None),
                    "espeak_Synth",
                )
                chunks, events, overflowed = self._chunks, self._events, self._events_overflowed
            finally:
                self._chunks, self._events = [], []
        if overflowed:
            raise ESpeakError(f"eSpeak's event list overflowed while speaking {text!r}: events were lost")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return samples.astype(np.float32) / np.float32(32768.0), events


class _LoadedLibrary:
    """Context manager: load the synthesizer's library copy, initialise it, and unload it on exit."""

    def __init__(self, owner: ESpeakSynthesizer) -> None:
        self._owner = owner
        self._lib: ctypes.CDLL | None = None

    def __enter__(self) -> ctypes.CDLL:
        owner = self._owner
        try:
            lib = ctypes.CDLL(owner._lib_copy, mode=ctypes.RTLD_LOCAL)
        except OSError as exc:
            raise ESpeakError(f"cannot load eSpeak NG library {owner._lib_copy}: {exc}") from exc
        self._lib = lib
        try:
            _declare(lib)
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS,
                _BUFFER_MS,
                owner._data_path.encode(),
                _INITIALIZE_DONT_EXIT | _INITIALIZE_PHONEME_EVENTS,
            )
            if rate <= 0:
                raise ESpeakError(f"espeak_Initialize failed (returned {rate}) with data {owner._data_path}")
            owner._sample_rate = int(rate)
            lib.espeak_SetSynthCallback(owner._callback)
        except BaseException:
            self.__exit__()
            raise
        return lib

    def __exit__(self, *exc_info: object) -> None:
        lib, self._lib = self._lib, None
        if lib is None:
            return
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)
        owner = self._owner
        if not owner._verified_unload:
            # Fresh state per call relies on dlclose really unmapping the library; glibc does for this
            # library, but check once rather than silently lose reproducibility elsewhere.
            if _is_loaded(owner._lib_copy):
                raise ESpeakError(
                    f"{owner._lib_copy} stayed loaded after dlclose; fresh state cannot be ensured"
                )
            owner._verified_unload = True


_WORD = re.compile(r"\S+")


def word_times(
    text: str,
    events: Sequence[SynthesisEvent],
    sample_rate: int,
    num_samples: int,
    duration: float | None = None,
) -> list[WordTime]:
    """When each whitespace-separated word of ``text`` is spoken, from eSpeak's phoneme events.

    A phoneme event carries the text position of the word it belongs to. A word's start is its first
    phoneme's start; its end is the start of the event after its last phoneme (the next word's first
    phoneme, or a pause ``_``), or the end of the audio. Times are ``sample / sample_rate`` seconds: they do
    not change when the audio is resampled (soxr compensates its filter delay), only the clip at the end
    does, so pass the resampled audio's ``duration``.

    eSpeak pronounces some unstressed words together with the word before them ("in the", "from the",
    "for a", "this one" in the corpus grammar): it reports one word whose phonemes carry the first word's
    position and none for the others. Such a group gets its outer boundaries only: its first word's start
    and its last word's end; the boundaries inside it are None (the merged phoneme string has no word
    break to read them from). A word before any phoneme-bearing word takes the following group's start.
    A token eSpeak reads as several words ("25": "twenty" at its position, "five" at the position of its
    "5") stays one word, spanning them all: a position inside a word belongs to that word.

    Args:
        text: the text that was spoken; positions count characters from 1, as eSpeak's do.
        events: from :meth:`ESpeakSynthesizer.synthesize_with_events`, in time order.
        sample_rate: of the synthesiser's output (``ESpeakSynthesizer.sample_rate``), Hz.
        num_samples: length of the synthesiser's output, samples.
        duration: seconds of the audio the times will refer to (default ``num_samples / sample_rate``);
            times are clipped to it.

    Returns:
        one :class:`WordTime` per word of ``text``, in order, times in seconds rounded to 0.1 ms.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    limit = num_samples / sample_rate if duration is None else duration
    matches = list(_WORD.finditer(text))
    word_starts = [m.start() + 1 for m in matches]  # 1-based, as eSpeak counts
    phonemes = [e for e in events if e.kind == "phoneme"]
    first: list[int | None] = [None] * len(matches)
    last: list[int | None] = [None] * len(matches)
    for i, event in enumerate(phonemes):
        if event.is_pause:
            continue
        # The word whose first character is at or before the event's position (a split word's later
        # parts, if any, point inside it).
        k = max(0, bisect.bisect_right(word_starts, event.text_position) - 1)
        if first[k] is None:
            first[k] = i
        last[k] = i
    starts: list[int | None] = [None if i is None else phonemes[i].sample for i in first]
    # The end is the next phoneme event's start (pauses included), or the end of the audio.
    following = [e.sample for e in phonemes[1:]] + [num_samples]
    ends: list[int | None] = [None if i is None else following[i] for i in last]
    # Words without phonemes of their own were spoken inside a neighbour. A group is a word with phonemes
    # and the silent words after it (the first group also takes the silent words before it); its outer
    # boundaries move to its outermost words, and the inner ones stay unknown.
    voiced = [k for k, i in enumerate(first) if i is not None]
    group_ends = [*voiced[1:], len(matches)]
    for g, (k, next_k) in enumerate(zip(voiced, group_ends, strict=True)):
        lo, hi = (0 if g == 0 else k), next_k - 1
        if lo != k:
            starts[lo], starts[k] = starts[k], None
        if hi != k:
            ends[hi], ends[k] = ends[k], None

    def seconds(sample: int | None) -> float | None:
        return None if sample is None else round(min(max(sample / sample_rate, 0.0), limit), 4)

    return [
        WordTime(m.group(), seconds(s), seconds(e)) for m, s, e in zip(matches, starts, ends, strict=True)
    ]
