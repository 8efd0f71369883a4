"""The synthetic corpus laid out as public corpora ship (LibriSpeech, Common Voice), for asr-ctc-prepare's
tests and the course recipe's."""

from __future__ import annotations

LIBRISPEECH_SUBSETS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}


def make_librispeech_tree(corpus, root):
    """The synthetic corpus laid out as LibriSpeech: ``root/<subset>/<spk>/<chapter>/`` holding
    ``<spk>-<chapter>-<n>.flac`` and ``<spk>-<chapter>.trans.txt`` (upper-case transcripts); one speaker per
    eSpeak voice.

    Returns ``{subset: [(utterance id, source wav path, TRANSCRIPT), ...]}``."""
    from pathlib import Path

    import soundfile as sf

    from asr_ctc.data.manifest import read_manifest

    root = Path(root)
    made = {}
    for split, subset in LIBRISPEECH_SUBSETS.items():
        rows = read_manifest(Path(corpus) / f"{split}.tsv")
        speakers = {voice: 100 + i for i, voice in enumerate(sorted({r["voice"] for r in rows}))}
        chapters: dict[int, list] = {}
        for row in rows:
            chapters.setdefault(speakers[row["voice"]], []).append(row)
        made[subset] = []
        for spk, spk_rows in sorted(chapters.items()):
            chapter = 1000 + spk
            folder = root / subset / str(spk) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for n, row in enumerate(spk_rows):
                utt = f"{spk}-{chapter}-{n:04d}"
                audio, sr = sf.read(row["audio"], dtype="int16")
                sf.write(folder / f"{utt}.flac", audio, sr, format="FLAC", subtype="PCM_16")
                lines.append(f"{utt} {row['text'].upper()}")
                made[subset].append((utt, row["audio"], row["text"].upper()))
            (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return made


COMMONVOICE_COLUMNS = [
    "client_id", "path", "sentence_id", "sentence", "up_votes", "down_votes", "age", "locale"
]


def make_commonvoice_folder(corpus, root):
    """The synthetic corpus laid out as a Common Voice language folder: ``root/clips/*.mp3`` (libsndfile's
    MP3 encoder) beside ``train.tsv``/``dev.tsv``/``test.tsv`` (tab-separated, unquoted, with the release's
    columns; sentences capitalised and punctuated, one with a double quote).

    Returns ``{split: [(clip stem, source wav path, sentence), ...]}``."""
    from pathlib import Path

    import soundfile as sf

    from asr_ctc.data.manifest import read_manifest

    root = Path(root)
    (root / "clips").mkdir(parents=True)
    made = {}
    number = 0
    for split in ("train", "dev", "test"):
        rows = read_manifest(Path(corpus) / f"{split}.tsv")
        lines = ["\t".join(COMMONVOICE_COLUMNS)]
        made[split] = []
        for i, row in enumerate(rows):
            number += 1
            stem = f"common_voice_en_{number}"
            audio, sr = sf.read(row["audio"], dtype="float32")
            sf.write(root / "clips" / f"{stem}.mp3", audio, sr, format="MP3")
            sentence = row["text"].capitalize() + ("." if i % 2 else '" said the voice.')
            fields = [f"client{row['voice']}", f"{stem}.mp3", f"s{number}", sentence, "2", "0", "", "en"]
            lines.append("\t".join(fields))
            made[split].append((stem, row["audio"], sentence))
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return made
