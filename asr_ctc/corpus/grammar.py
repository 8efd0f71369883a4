"""A sentence grammar for voice-assistant music commands ("play some jazz by miles davis on spotify").

Each non-terminal (``<name>``) expands to one of its ``|``-separated alternatives, chosen uniformly; an
alternative is a space-separated sequence of words and non-terminals, and ``_`` is the empty alternative
(an optional slot). Listing an alternative twice doubles its weight. All output is lowercase letters,
spaces and apostrophes with numbers spelled out, so every sentence is speakable by eSpeak as written and is
its own transcript. Vocabulary: about 300 words (see :func:`vocabulary`).

Generation is deterministic given a ``random.Random``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

START = "<command>"
_EMPTY = "_"

# Long rule bodies are split over adjacent string literals, each continuation starting with " | ".
_GRAMMAR: dict[str, str] = {
    START: (
        "<play> | <play> | <play> | <play> | <mood_request> | <mood_request> | <volume> | <volume>"
        " | <transport> | <transport> | <library> | <question> | <timer> | <radio>"
    ),
    # --- playing music
    "<play>": (
        "<wake> <play_verb> <music> <place> <please>"
        " | <wake> <polite> play <music> <place>"
        " | <wake> <want_to> <music> <place>"
    ),
    "<wake>": "_ | _ | _ | hey speaker | okay speaker | hey music",
    "<play_verb>": "play | play | play | put on | start playing | queue up | shuffle",
    "<polite>": "can you | could you | would you | please | can you please",
    "<want_to>": (
        "i want to hear | i'd like to hear | i'd like to listen to | let's listen to | let me hear"
        " | i'm in the mood for"
    ),
    "<please>": "_ | _ | _ | please | now | right now | for me",
    "<music>": (
        "some <genre> | some <genre> music | some <genre> by <artist> | <genre> from the <decade>"
        " | <artist> | <artist> | songs by <artist> | something by <artist>"
        " | the new album by <artist> | the latest songs from <artist> | the song <title>"
        " | <title> by <artist> | the album <title> by <artist> | my <playlist> playlist"
        " | the <playlist> playlist | the top <count> <genre> songs"
        " | the top <count> songs from the <decade> | a <genre> playlist"
        " | <genre> hits from the <decade> | my favorite <genre> songs"
    ),
    "<place>": (
        "_ | _ | _ | on <service> | on <service> | in the <room> | on the <room> speaker"
        " | on <service> in the <room> | everywhere | on all speakers"
    ),
    # --- moods and activities
    "<mood_request>": (
        "<wake> play something <mood> <opt_activity>"
        " | <wake> put on some <mood> music <opt_activity>"
        " | <wake> play some <mood> <genre> <place>"
        " | <wake> i need some <mood> music <activity>"
        " | <wake> play music <activity>"
        " | <wake> <polite> play something <mood>"
        " | <wake> i'm feeling <feeling> play something <mood>"
    ),
    "<opt_activity>": "_ | <activity>",
    "<activity>": (
        "for studying | for running | for cooking | for sleeping | for a party | for dinner"
        " | for the gym | for work | for a road trip | for the morning | to help me focus"
        " | to help me sleep | to wake me up"
    ),
    "<mood>": (
        "happy | relaxing | calm | upbeat | sad | energetic | romantic | chill | mellow | dreamy"
        " | slow | soft"
    ),
    "<feeling>": "happy | sad | tired | lazy | lonely",
    # --- volume
    "<volume>": (
        "<wake> turn the volume <updown> | <wake> turn the volume <updown> to <level>"
        " | <wake> turn the volume <updown> a <little> | <wake> set the volume to <level>"
        " | <wake> <polite> set the volume to <level> | <wake> change the volume to <level>"
        " | volume <level> | <wake> turn it <updown> a <little> | <wake> turn it <updown>"
        " | <wake> turn the music <updown> <please> | <wake> make it <louder>"
        " | <wake> make the music <louder> <please> | <wake> mute <the_music>"
        " | <wake> unmute <the_music> | it's too <loud> | the music is too <loud>"
        " | i can't hear the music | <wake> raise the volume by <small_number>"
        " | <wake> lower the volume by <small_number>"
    ),
    "<updown>": "up | down",
    "<little>": "little | little bit | bit | lot",
    "<louder>": "louder | quieter | softer | a little louder | a bit quieter | much louder",
    "<loud>": "loud | quiet",
    "<the_music>": "_ | the music | the speaker | the sound | everything",
    "<level>": "<digit> | <digit> | <tens> percent | <percent> percent | maximum | minimum",
    "<digit>": "zero | one | two | three | four | five | six | seven | eight | nine | ten",
    "<tens>": "ten | twenty | thirty | forty | fifty | sixty | seventy | eighty | ninety",
    "<percent>": "twenty five | seventy five | fifteen | one hundred",
    "<small_number>": "one | two | three | four | five | ten | twenty",
    # --- playback control
    "<transport>": (
        "<wake> <stop_verb> <the_music> <please> | <wake> <skip_verb> <this_track> <please>"
        " | <wake> <go_back> <please> | <wake> <repeat_this> | <wake> turn <onoff> <shuffle_repeat>"
        " | <wake> <seek> <seconds> seconds | <wake> <seek> <minutes_word> <minute_unit>"
        " | <wake> start this <track> from the beginning | <wake> play the next <track>"
        " | <wake> play the previous <track> | <wake> skip to <track> number <digit>"
        " | <wake> play <title> next | <wake> add <title> to the queue | <wake> clear the queue"
    ),
    "<stop_verb>": "pause | stop | resume | continue | stop playing | keep playing",
    "<skip_verb>": "skip | next | skip to the next | go to the next | change",
    "<this_track>": "_ | this <track> | this one | the <track>",
    "<track>": "song | track | tune",
    "<go_back>": "go back | previous <track> | go back to the previous <track> | play that again",
    "<repeat_this>": ("repeat this <track> | repeat the album | play this <track> again | loop this <track>"),
    "<onoff>": "on | off",
    "<shuffle_repeat>": "shuffle | repeat | shuffle mode | repeat mode",
    "<seek>": "fast forward | skip ahead | rewind | go back",
    "<seconds>": "five | ten | fifteen | twenty | thirty | forty five | sixty | ninety",
    "<minutes_word>": "one | two | three | five",
    "<minute_unit>": "minute | minutes",
    # --- library management
    "<library>": (
        "<wake> add this <track> to my <playlist> playlist"
        " | <wake> add <title> to my <playlist> playlist"
        " | <wake> remove this <track> from my <playlist> playlist"
        " | <wake> create a new playlist called <playlist>"
        " | <wake> make a playlist called <playlist> | <wake> save this <track>"
        " | <wake> save this album | <wake> like this <track> | i love this <track>"
        " | i don't like this <track> | <wake> don't play this <track> again"
        " | <wake> follow <artist> | <wake> download my <playlist> playlist"
    ),
    # --- questions
    "<question>": (
        "what's playing | what's playing right now | what <track> is this"
        " | what's this <track> called | who sings this <track> | who's singing | who is this"
        " | what album is this from | when did this <track> come out | how long is this <track>"
        " | what's next in the queue"
        " | what's on my <playlist> playlist | how many songs are in my <playlist> playlist"
        " | what's the newest album by <artist> | what genre is this"
    ),
    # --- timers
    "<timer>": (
        "<wake> stop the music in <minutes> minutes | <wake> turn off the music in <minutes> minutes"
        " | <wake> set a sleep timer for <minutes> minutes | <wake> play <genre> for <minutes> minutes"
        " | <wake> play my <playlist> playlist for an hour | <wake> cancel the sleep timer"
    ),
    "<minutes>": "five | ten | fifteen | twenty | thirty | forty five | sixty | ninety",
    # --- radio
    "<radio>": (
        "<wake> play <artist> radio <place> | <wake> start a radio station based on <artist>"
        " | <wake> play the <genre> station <place> | <wake> play <genre> radio <place>"
        " | <wake> play music like <artist> | <wake> play artists similar to <artist>"
    ),
    # --- slot values
    "<genre>": (
        "jazz | blues | rock | pop | hip hop | classical | country | reggae | soul | funk | folk"
        " | metal | punk | disco | techno | house | indie | piano"
    ),
    "<decade>": "sixties | seventies | eighties | nineties",
    "<count>": "five | ten | twenty | forty | fifty | one hundred",
    "<artist>": "<first_name> <last_name> | <first_name> <last_name> | <first_name> | <band>",
    "<first_name>": (
        "miles | nina | ella | marcus | luna | sam | olivia | johnny | maya | leo | ruby | oscar | jack"
    ),
    "<last_name>": ("green | stone | west | rivers | parker | brooks | king | cole | fox | davis"),
    "<band>": ("the night owls | the paper kites | the silver lakes | golden hour | midnight city"),
    "<title>": "<title_adjective> <title_noun> | <title_noun> of <title_noun> | <title_phrase>",
    "<title_adjective>": (
        "golden | blue | summer | broken | wild | sweet | silver | lonely | electric | little"
    ),
    "<title_noun>": (
        "sky | moon | rain | heart | lights | eyes | dreams | river | road | fire | love | night"
    ),
    "<title_phrase>": (
        "dancing in the dark | home again | don't let me go | take me home | one more night"
        " | hold on | you and me"
    ),
    "<playlist>": (
        "morning coffee | road trip | workout | sunday chill | late night | dinner party | focus"
        " | summer hits | rainy day | favorites | party mix | feel good"
    ),
    "<service>": "spotify | pandora | youtube music | apple music | soundcloud",
    "<room>": "kitchen | living room | bedroom | bathroom | office | garage",
}

# Parsed grammar: non-terminal -> alternatives, each a tuple of tokens (the empty tuple for ``_``).
RULES: dict[str, tuple[tuple[str, ...], ...]] = {
    name: tuple(tuple(t for t in alt.split() if t != _EMPTY) for alt in body.split("|"))
    for name, body in _GRAMMAR.items()
}

_NONTERMINAL = re.compile(r"<[a-z_]+>")
_SENTENCE = re.compile(r"[a-z']+( [a-z']+)*")


def expand(symbol: str, rng: random.Random, rules: dict[str, tuple[tuple[str, ...], ...]] = RULES) -> str:
    """Expand one non-terminal into a sentence (words separated by single spaces)."""
    alternative = rng.choice(rules[symbol])
    words = []
    for token in alternative:
        if _NONTERMINAL.fullmatch(token):
            expansion = expand(token, rng, rules)
            if expansion:
                words.append(expansion)
        else:
            words.append(token)
    return " ".join(words)


def generate_sentence(rng: random.Random) -> str:
    """One random sentence from the grammar, e.g. ``"turn the volume up to seven"``."""
    return expand(START, rng)


def generate_sentences(n: int, rng: random.Random, max_tries_per_sentence: int = 50) -> list[str]:
    """``n`` distinct sentences, in generation order (deterministic for a given ``rng`` state).

    Raises:
        ValueError: the grammar could not produce ``n`` distinct sentences in ``n * max_tries_per_sentence``
            draws (the grammar can produce far more than 100,000, so this signals a broken grammar).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seen: dict[str, None] = {}  # insertion-ordered set
    for _ in range(n * max_tries_per_sentence):
        if len(seen) == n:
            break
        seen.setdefault(generate_sentence(rng))
    if len(seen) < n:
        raise ValueError(f"only {len(seen)} distinct sentences after {n * max_tries_per_sentence} draws")
    return list(seen)


def split_sentences(
    sentences: Sequence[str], fractions: dict[str, float], rng: random.Random
) -> dict[str, list[str]]:
    """Partition sentences into named splits with no sentence in two splits.

    Duplicates are removed first (keeping first occurrences), the distinct sentences are shuffled with
    ``rng``, and the splits take consecutive runs of ``round(fraction * count)`` sentences in the order of
    ``fractions``. The fractions must sum to 1; the last split takes the remainder, so rounding drops nothing.

    Returns:
        ``{split name: sentences}``, in the order of ``fractions``.
    """
    if not fractions:
        raise ValueError("fractions must name at least one split")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    distinct = list(dict.fromkeys(sentences))
    rng.shuffle(distinct)
    splits: dict[str, list[str]] = {}
    start = 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = (
            len(distinct)
            if i == len(names) - 1
            else min(len(distinct), start + round(fractions[name] * len(distinct)))
        )
        splits[name] = distinct[start:end]
        start = end
    return splits


def vocabulary(rules: dict[str, tuple[tuple[str, ...], ...]] = RULES) -> set[str]:
    """Every word any sentence can contain."""
    return {
        token for alts in rules.values() for alt in alts for token in alt if not _NONTERMINAL.fullmatch(token)
    }


def is_valid_sentence(sentence: str) -> bool:
    """True if ``sentence`` is lowercase words of letters/apostrophes separated by single spaces."""
    return bool(_SENTENCE.fullmatch(sentence))
