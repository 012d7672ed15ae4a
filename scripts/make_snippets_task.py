"""Write kd-gym's built-in ``snippets`` task (``kd_gym/task_data/snippets.csv.gz``) from the ``vaderSentiment`` sdist.

The task is the sentiment ground truth of Hutto & Gilbert (ICWSM 2014, "VADER: A Parsimonious Rule-based Model for
Sentiment Analysis of Social Media Text"), which the ``vaderSentiment`` source distribution ships under
``additional_resources/hutto_ICWSM_2014.tar.gz`` (MIT licence; the wheel does not include it). It holds four
domains: tweets, movie-review snippets, Amazon product-review sentences and New York Times editorial sentences.
Each row carries the mean of about 20 raters' scores on -4..+4. The file written here keeps the domain, the text and
that mean score. ``kd_gym.task_sources.load_snippets`` turns the score into a label.

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    python scripts/make_snippets_task.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

Without a path, the script runs that ``pip download`` itself (a package registry must be reachable).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

SDIST = "vaderSentiment==3.3.2"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
FILES = {"tweets_GroundTruth.txt": "tweets", "movieReviewSnippets_GroundTruth.txt": "movie",
         "amazonReviewSnippets_GroundTruth.txt": "amazon", "nytEditorialSnippets_GroundTruth.txt": "nyt"}
OUT = Path(__file__).resolve().parents[1] / "kd_gym" / "task_data" / "snippets.csv.gz"


def read_ground_truth(sdist: Path) -> pd.DataFrame:
    """The rows of the four ``*_GroundTruth.txt`` files (``id<TAB>mean score<TAB>text``, latin-1) of the sdist."""
    with tarfile.open(sdist) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner = tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read()))
    rows = []
    for member in inner.getmembers():
        domain = FILES.get(member.name.rsplit("/", 1)[-1])
        if domain is None:
            continue
        for line in inner.extractfile(member).read().decode("latin-1").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append({"domain": domain, "score": float(parts[1]), "text": "\t".join(parts[2:]).strip()})
    frame = pd.DataFrame(rows)
    if sorted(frame["domain"].unique()) != sorted(FILES.values()):
        raise SystemExit(f"{sdist}: expected the domains {sorted(FILES.values())}, found {sorted(frame['domain'].unique())}")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", nargs="?", help=f"the {SDIST} source archive (default: pip download it)")
    parser.add_argument("--out", default=str(OUT), help=f"where to write the task (default: {OUT})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                            "-d", tmp], check=True)
            args.sdist = next(Path(tmp).glob("vaderSentiment-*.tar.gz"))
        digest = hashlib.sha256(Path(args.sdist).read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            print(f"warning: {args.sdist} has sha256 {digest}, not the {SDIST} archive the task was made from "
                  f"({SDIST_SHA256})", file=sys.stderr)
        frame = read_ground_truth(Path(args.sdist))
    frame.to_csv(args.out, index=False, compression={"method": "gzip", "mtime": 0})
    print(f"wrote {len(frame)} rows to {args.out}")
    print(frame.groupby("domain")["score"].describe().round(2).to_string())


if __name__ == "__main__":
    main()
