"""Print a run's validation curve against wall-clock time, read from its TensorBoard events.

    python benchmarks/curve.py lightning_logs/version_0     # seconds

Time counts from the run's first logged training step's wall time minus that step's share of training (the
events hold no earlier mark), so it excludes start-up, tokenizer training and tokenization: `time` on the whole
command gives those.
"""

import argparse

from common import scalars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", help="a lightning_logs/version_N folder")
    args = parser.parse_args()
    events = scalars(args.log_dir)
    if not {"train/loss", "val/loss", "val/bpb"} <= set(events):
        raise SystemExit(f"error: {args.log_dir}: no train/loss and val/bpb yet; wait for a validation")
    train = events["train/loss"]
    if len(train) < 2:
        raise SystemExit(f"error: {args.log_dir}: fewer than 2 train/loss points; is it a finished run's folder?")
    seconds_per_step = (train[-1].wall_time - train[0].wall_time) / (train[-1].step - train[0].step)
    start = train[0].wall_time - seconds_per_step * (train[0].step + 1)
    print(f"{'step':>6} {'minutes':>8} {'val/loss':>9} {'val/bpb':>8}")
    losses = {e.step: e.value for e in events["val/loss"]}
    for e in events["val/bpb"]:
        print(f"{e.step + 1:>6} {(e.wall_time - start) / 60:>8.2f} {losses.get(e.step, float('nan')):>9.4f} {e.value:>8.4f}")


if __name__ == "__main__":
    main()
