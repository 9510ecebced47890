"""What one inner step does on Omniglot 5-way 1-shot training tasks, for each CNN of
omniglot_maml.py as initialised and for the best parameters of finished runs: the
support loss before and after the step, and the query accuracy after it
(docs/official_network.md). The step is the paper's (0.4 x 5 on the mean cross-entropy),
or a run's own.

    python inner_step.py                                  # each CNN, as initialised
    python inner_step.py --runs results/ablation/*/       # and finished runs

MAML's meta-gradient holds the term that makes the parameters a good start for the
inner step; first-order MAML's does not. The table shows what each learns to start
from: MAML an unbiased guess (support loss ln 5 = 1.61 before the step), first-order
MAML confident wrong guesses that one step must undo.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.func import vmap

import meta_learning
import omniglot_data
import omniglot_maml
import settings
import utils

N_WAY, K_SHOT, TASKS, SEED = 5, 1, 256, 0
INNER_STEP = omniglot_maml.PAPER_DEFAULTS[("maml", 5)]["inner_lr"] * N_WAY  # on the mean cross-entropy


def one_step(model, params, step, support, query):
    """Per task: support loss before and after an inner step of this size, query accuracy after it."""
    _, forward, mask = omniglot_maml.build_network(model, N_WAY, torch.Generator().manual_seed(SEED),
                                                   torch.device("cpu"))
    params = [p.detach() for p in params]

    def task(support_x, support_y, query_x, query_y):
        before, after = meta_learning.adapt(forward, F.cross_entropy, params, support_x, support_y, 1, step,
                                            first_order=True, adapted=mask)
        return (F.cross_entropy(forward(before, support_x), support_y),
                F.cross_entropy(forward(after, support_x), support_y),
                (forward(after, query_x).argmax(-1) == query_y).float().mean())
    return vmap(task)(*support, *query)


def main(argv=None):
    parser = settings.OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="finished omniglot_maml.py run folders (their best.pt)")
    parser.add_argument("--data-dir", default="data/omniglot", help="where the archives are")
    args = parser.parse_args(argv)
    points = [(model, "initialised", INNER_STEP, None) for model, net in omniglot_maml.MODELS.items()
              if net is not None]
    for run_dir in args.runs:
        try:
            with open(os.path.join(run_dir, "config.json")) as f:
                config = json.load(f)
            best = torch.load(os.path.join(run_dir, "best.pt"), map_location="cpu", weights_only=False)
        except (OSError, json.JSONDecodeError, RuntimeError) as error:
            utils.fail(f"{run_dir} is not a finished omniglot_maml.py run ({error})")
        if omniglot_maml.MODELS.get(config.get("model")) is None or config.get("n_way") != N_WAY:
            utils.fail(f"{run_dir}: not a 5-way run of one of omniglot_maml.py's CNNs")
        points.append((config["model"], f"{config['algorithm']}, iteration {best['iteration']:,} "
                                        f"({os.path.basename(os.path.normpath(run_dir))})",
                       config["inner_lr"] * N_WAY, best["params"]))
    utils.use_threads(1)
    try:
        images, names = omniglot_data.load_omniglot(args.data_dir)
    except omniglot_data.DataError as error:
        utils.fail(str(error))
    train_chars = omniglot_data.split_characters(names, "paper")[0]
    sampler = omniglot_data.TaskSampler(images[train_chars], rotations=True, device=torch.device("cpu"))
    support, query = sampler.sample(TASKS, N_WAY, K_SHOT, K_SHOT, torch.Generator().manual_seed(SEED))
    print(f"one inner SGD step on the mean cross-entropy (the run's, else the paper's {INNER_STEP:g}), means over "
          f"{TASKS} {N_WAY}-way {K_SHOT}-shot training tasks (paper split); ln {N_WAY} = {math.log(N_WAY):.2f}\n")
    print("| network | parameters | step | support loss before the step | after it | query accuracy after it |\n"
          "|---|---|---|---|---|---|")
    with torch.no_grad():
        for model, when, step, params in points:
            if params is None:
                params = omniglot_maml.build_network(model, N_WAY, torch.Generator().manual_seed(SEED),
                                                     torch.device("cpu"))[0]
            before, after, accuracy = one_step(model, params, step, support, query)
            print(f"| {model} | {when} | {step:g} | {before.mean():.2f} | {after.mean():.2f} | {100 * accuracy.mean():.1f}% |",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
