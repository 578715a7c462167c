"""Plot loss (train and eval, with the mask rate), learning rate and tokens/s of training runs, side by side.

    python scripts/plot_metrics.py checkpoints/phase1_base checkpoints/phase2_base --out runs.png [--end-to-end]

Each argument is a run's save_folder (its metrics.jsonl and config.yaml); NAME=FOLDER sets a run's label.
`--end-to-end` lays the runs one after another (the phases of one model) instead of from a common start.
"""

import argparse

from flex_bert.plots import plot_runs, read_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="save folders, or NAME=FOLDER")
    p.add_argument("--out", default="metrics.png", help="PNG to write (default: %(default)s)")
    p.add_argument(
        "--end-to-end", action="store_true", help="lay the runs one after another on the step axis"
    )
    args = p.parse_args()
    try:
        runs = [
            read_run(f.split("=", 1)[1], f.split("=", 1)[0]) if "=" in f else read_run(f)
            for f in args.folders
        ]
        print(f"wrote {plot_runs(runs, args.out, end_to_end=args.end_to_end)}")
    except ValueError as e:
        p.error(str(e))


if __name__ == "__main__":
    main()
