"""The built-in melody task: folk melodies from the corpus inside ``music21``, tokenised as
pitch/duration events, cached once as a ``datasets`` Arrow dataset.

A melody is transposed so its tonic is C (the mode is kept as a tag) and written as text::

    <bos> <major> p67 d1 p65 d0.5 | p64 d1 ... p60 d2 <eos>

``pNN`` is a MIDI pitch (48..84), ``r`` a rest, ``dQ`` the duration in quarter notes (one of
``DURATIONS``), ``|`` a bar line. Each note is a pitch token followed by a duration token.
The vocabulary is fixed (it does not depend on the data), so any two runs share token ids.
Prompts for the reward and PPO stages are the opening bar(s) of held-out melodies.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError, ReinforgeError

BOS, EOS, PAD, UNK, BAR, REST = "<bos>", "<eos>", "<pad>", "<unk>", "|", "r"
MODES = ("<major>", "<minor>")
PITCH_MIN, PITCH_MAX = 48, 84
DURATIONS = ("0.25", "0.5", "0.75", "1", "1.5", "2", "3", "4", "1/3", "2/3")
FORMAT_VERSION = 1  # bump when the tokenisation changes: it is part of the cache key


def vocabulary() -> list[str]:
    """Every token, in id order: specials first, so <pad>=0, <bos>=1, <eos>=2, <unk>=3."""
    pitches = [f"p{m}" for m in range(PITCH_MIN, PITCH_MAX + 1)]
    return [PAD, BOS, EOS, UNK, *MODES, BAR, REST, *pitches, *[f"d{d}" for d in DURATIONS]]


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over the fixed vocabulary (WordLevel, whitespace split).

    Hand-built because the vocabulary is a closed set of event names: a learned BPE would only
    split them apart. It round-trips through ``save_pretrained``/``AutoTokenizer``.
    """
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                  unk_token=UNK, model_max_length=512)
    tok.padding_side = "left"  # generation pads prompts on the left
    return tok


# --- events <-> text ----------------------------------------------------------------------
def duration_token(quarter_length: float) -> str:
    """The nearest allowed duration (Essen durations are all in the table; ties/odd ones snap)."""
    best = min(DURATIONS, key=lambda d: abs(float(Fraction(d)) - quarter_length))
    return f"d{best}"


@dataclass
class Note:
    pitch: int | None  # MIDI number; None = rest
    duration: float
    bar: int = 0


@dataclass
class Melody:
    """A parsed token sequence; ``errors`` counts tokens that break the pitch-duration grammar."""

    mode: str = "major"
    notes: list[Note] = field(default_factory=list)
    ended: bool = False  # an <eos> closed it
    errors: int = 0
    n_tokens: int = 0

    @property
    def pitches(self) -> list[int]:
        return [n.pitch for n in self.notes if n.pitch is not None]


def parse_tokens(text: str | list[str]) -> Melody:
    """Read a token string (prompt + completion) into notes; lenient, counting grammar errors."""
    toks = text.split() if isinstance(text, str) else list(text)
    mel = Melody(n_tokens=len(toks))
    pending: int | None | str = "none"  # a pitch (or rest) waiting for its duration
    bar = 0
    for tok in toks:
        if tok == EOS:
            mel.ended = True
            break
        if tok in (BOS, PAD):
            continue
        if tok in MODES:
            mel.mode = tok.strip("<>")
            continue
        if tok == BAR:
            bar += 1
            if pending != "none":
                mel.errors += 1
                pending = "none"
            continue
        if tok == REST or (tok.startswith("p") and tok[1:].isdigit()):
            if pending != "none":
                mel.errors += 1
            pending = None if tok == REST else int(tok[1:])
            continue
        if tok.startswith("d") and tok[1:] in DURATIONS:
            if pending == "none":
                mel.errors += 1
            else:
                mel.notes.append(Note(pending, float(Fraction(tok[1:])), bar))  # type: ignore[arg-type]
            pending = "none"
            continue
        mel.errors += 1  # <unk> or anything else
    if pending != "none":
        mel.errors += 1
    return mel


def melody_text(mode: str, notes: list[tuple[int | None, float, int]]) -> str:
    """(pitch or None, quarterLength, measure number) triples -> token text with bars and BOS/EOS."""
    toks = [BOS, f"<{mode}>"]
    last_bar = notes[0][2] if notes else 0
    for pitch, ql, bar in notes:
        if bar != last_bar:
            toks.append(BAR)
            last_bar = bar
        toks.append(REST if pitch is None else f"p{pitch}")
        toks.append(duration_token(ql))
    toks.append(EOS)
    return " ".join(toks)


def split_prompt(text: str, bars: int = 1) -> tuple[str, str]:
    """The opening ``bars`` bar(s) (through the bar line) as prompt; the rest (with a leading
    space, so prompt + completion is again valid text) as the completion."""
    toks = text.split()
    seen = 0
    for i, tok in enumerate(toks):
        if tok == BAR:
            seen += 1
            if seen == bars:
                return " ".join(toks[: i + 1]), " " + " ".join(toks[i + 1:])
    cut = min(len(toks) - 1, 6)
    return " ".join(toks[:cut]), " " + " ".join(toks[cut:])


# --- the corpus ---------------------------------------------------------------------------
@dataclass
class MelodyDataConfig:
    """Which melodies, and where the parsed cache lives."""

    collection: str = "essenFolksong"  # a folder of the music21 corpus (essenFolksong, ryansMammoth, ...)
    files: list[str] = field(default_factory=lambda: ["kinder0"])  # file stems inside it; ["all"] = every file
    max_songs: int | None = None  # cap per file (tests use a few dozen)
    max_tokens: int = 128  # melodies longer than this are dropped (keeps sequences short)
    validation_fraction: float = 0.15
    cache_dir: str | None = None  # default: $REINFORGE_CACHE/melodies or ~/.cache/reinforge/melodies
    prompt_bars: int = 1

    def validate(self) -> None:
        if not self.files:
            raise ConfigError("data.melody.files is empty; name at least one corpus file, e.g. data.melody.files=[kinder0]")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError("data.melody.validation_fraction must be in (0, 1), e.g. 0.15")
        if self.max_tokens < 16:
            raise ConfigError("data.melody.max_tokens must be >= 16")
        if self.prompt_bars < 1:
            raise ConfigError("data.melody.prompt_bars must be >= 1")
        if self.max_songs is not None and self.max_songs < 1:
            raise ConfigError(f"data.melody.max_songs must be >= 1 (or null for every song), got {self.max_songs}")


def cache_root(cfg: MelodyDataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("REINFORGE_CACHE") or Path.home() / ".cache" / "reinforge"
    return Path(base) / "melodies"


def _find_files(cfg: MelodyDataConfig) -> list[Path]:
    import difflib

    import music21

    folder = Path(music21.__file__).parent / "corpus" / cfg.collection
    if not folder.is_dir():
        raise ConfigError(f"data.melody.collection={cfg.collection!r} is not a music21 corpus folder; "
                          "try essenFolksong, ryansMammoth or oneills1850")
    present = sorted(p for p in folder.iterdir() if p.suffix in (".abc", ".krn", ".xml", ".mxl", ".musicxml"))
    if cfg.files == ["all"]:
        return present
    by_stem = {p.stem: p for p in present}
    out = []
    for stem in cfg.files:
        if stem not in by_stem:
            guess = difflib.get_close_matches(stem, list(by_stem), n=1)
            hint = f"did you mean {guess[0]!r}?" if guess else f"available: {', '.join(sorted(by_stem))}"
            raise ConfigError(f"data.melody.files: no file {stem!r} in the music21 {cfg.collection} corpus; {hint}")
        out.append(by_stem[stem])
    return out


def _key_of(score) -> tuple[int, str]:
    """(tonic pitch class, mode) from the file's key signature (ABC ``K:``), else by analysis."""
    from music21 import key

    ks = score.recurse().getElementsByClass(key.KeySignature).first()
    if isinstance(ks, key.Key):
        k = ks
    elif ks is not None:
        k = ks.asKey("major")
    else:
        k = score.analyze("key")
    mode = "minor" if k.mode == "minor" else "major"
    return k.tonic.pitchClass, mode


def parse_file(path: Path, max_songs: int | None = None) -> list[dict[str, Any]]:
    """All monophonic songs of one corpus file as {"id", "title", "mode", "text"} rows."""
    from music21 import converter, stream

    if max_songs and path.suffix == ".abc":  # parse only the first tunes: music21 parses a whole file at once
        import re

        text = path.read_text(encoding="utf-8", errors="replace")
        starts = [m.start() for m in re.finditer(r"^X:", text, flags=re.M)]
        if len(starts) > max_songs:
            text = text[: starts[max_songs]]
        parsed = converter.parse(text, format="abc")
    else:
        parsed = converter.parse(str(path))
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    rows = []
    for i, score in enumerate(scores[: max_songs or None]):
        try:
            tonic, mode = _key_of(score)
        except Exception:  # a song without usable key information: skip it
            continue
        shift = -tonic if tonic <= 6 else 12 - tonic  # to C, moving at most a tritone
        events = []
        for el in score.flatten().notesAndRests:
            ql = float(el.quarterLength)
            if ql <= 0:  # grace notes
                continue
            measure = el.getContextByClass("Measure")
            bar = measure.number if measure is not None else 0
            if el.isRest:
                events.append((None, ql, bar))
            elif el.isNote:
                events.append((el.pitch.midi + shift, ql, bar))
            else:  # a chord in a monophonic corpus: keep its top note
                events.append((max(p.midi for p in el.pitches) + shift, ql, bar))
        pitches = [p for p, _, _ in events if p is not None]
        if len(pitches) < 4:
            continue
        # centre the melody's range on the vocabulary by whole octaves
        while max(pitches) > PITCH_MAX and min(pitches) - 12 >= PITCH_MIN:
            events = [(None if p is None else p - 12, q, b) for p, q, b in events]
            pitches = [p - 12 for p in pitches]
        while min(pitches) < PITCH_MIN and max(pitches) + 12 <= PITCH_MAX:
            events = [(None if p is None else p + 12, q, b) for p, q, b in events]
            pitches = [p + 12 for p in pitches]
        if min(pitches) < PITCH_MIN or max(pitches) > PITCH_MAX:
            continue
        title = score.metadata.title if score.metadata is not None and score.metadata.title else ""
        rows.append({"id": f"{path.stem}/{i}", "title": title or "", "mode": mode,
                     "text": melody_text(mode, events)})
    return rows


def _cache_key(cfg: MelodyDataConfig) -> str:
    spec = {"v": FORMAT_VERSION, "collection": cfg.collection, "files": cfg.files, "max_songs": cfg.max_songs,
            "max_tokens": cfg.max_tokens, "validation_fraction": cfg.validation_fraction}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def load_melodies(cfg: MelodyDataConfig, log=print):
    """The melody dataset (``DatasetDict`` with train/validation), parsed once and cached."""
    import datasets

    datasets.disable_progress_bars()
    target = cache_root(cfg) / f"{cfg.collection}-{_cache_key(cfg)}"
    if (target / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(target))
    files = _find_files(cfg)
    rows: list[dict[str, Any]] = []
    for path in files:
        if log:
            log(f"parsing {path.name} with music21 (once; cached in {target})")
        rows += parse_file(path, cfg.max_songs)
    rows = [r for r in rows if len(r["text"].split()) <= cfg.max_tokens]
    if len(rows) < 4:
        raise ReinforgeError(f"only {len(rows)} melodies in {cfg.files} fit data.melody.max_tokens={cfg.max_tokens}; "
                             "add files or raise data.melody.max_tokens")
    ds = datasets.Dataset.from_list(rows)
    split = ds.train_test_split(test_size=cfg.validation_fraction, seed=1234)
    dd = datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    dd.save_to_disk(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:  # another process cached it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def prompts(dataset, bars: int = 1, limit: int | None = None) -> list[str]:
    """Opening bar(s) of the melodies in ``dataset`` (a split), as prompt texts."""
    texts = list(dataset["text"])[: limit or None]
    return [split_prompt(t, bars)[0] for t in texts]
