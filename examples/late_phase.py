"""Late-phase SAM (Zhou et al., ICLR 2025): SGD first, SAM only for the last part of training.

Trains the same model with SGD, with SAM throughout, and with SGD switching to SAM after
`--switch` of the epochs, and prints final test accuracy and wall time. Before the switch the
late-phase run takes no second gradient (its ρ schedule is 0 there, and the host-side plan runs a
step compiled without the ascent), so it costs about SGD's time until then.

  python examples/late_phase.py                       # MNIST-1D, 60 epochs, switch at 80 %
  python examples/late_phase.py --dataset digits --epochs 5
"""

import argparse
import dataclasses

from xsam_jax import experiment


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--switch", type=float, default=0.8, help="fraction of epochs with SGD")
    parser.add_argument("--rho", type=float, default=0.05)
    args = parser.parse_args(argv)
    base = experiment.TrainConfig(dataset=args.dataset, epochs=args.epochs)
    variants = {
        "sgd": {"optimizer": "sgd"},
        "late-sam": {"optimizer": "sam", "rho": args.rho, "late_phase_start": args.switch},
        "sam": {"optimizer": "sam", "rho": args.rho},
    }
    rows = []
    for name, fields in variants.items():
        result = experiment.run(dataclasses.replace(base, **fields), progress=False)
        rows.append((name, result["final_test_accuracy"], result["seconds"]))
    print("| optimizer | final test accuracy | train seconds |")
    print("|---|---|---|")
    for name, acc, seconds in rows:
        print(f"| {name} | {acc:.4f} | {seconds:.1f} |")
    return rows


if __name__ == "__main__":
    main()
