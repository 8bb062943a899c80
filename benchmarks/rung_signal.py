"""How well do the search's cheap scores predict the trained accuracy? (the experiment behind
``autoprune.study.rungs``)

Run once on 2026-12-07 on the 2-core CPU (torch 1 thread, the machine shared with other jobs, so
the times below are not timings), as

    .venv/bin/python benchmarks/rung_signal.py resnet20 10000 2

Fashion-MNIST, resnet20 trained 6 epochs (batch 128, lr 0.1) on 10,000 training images drawn
with seed 0; then for uniform filter pruning at 20-80% and random per-layer configurations
(80% of the variables pruned at random rates): the accuracy right after the hard prune
(``raw``), after BatchNorm recalibration on 5/20/50 batches (``bn5``, ``bn20``, ``bn50``, on
1,000 validation images; ``bn20_full`` on all 6,000), after 0.2 of the schedule of masked
retraining (``s1``) and after the whole schedule of ``T`` epochs (``final``). The run was
stopped after 10 of its 17 configurations to free the machine; its lines are in
``benchmarks/results/rung_signal_resnet20.jsonl`` and the correlations in
``benchmarks/results/rung_signal.md``. It writes its dense model to /tmp/exp/.
"""
import sys, time, json, copy, math
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from torch.utils.data import Subset
from autoprune.data import get_dataset
from autoprune.dense import build_model, example_input
from autoprune.groups import ChannelGraph
from autoprune.study.space_file import load_space
from autoprune.study.probe import ConfigProbe
from autoprune.latency import LatencySettings
from autoprune.admm import apply_masks, masked_retrain
from autoprune.train import run_epochs, evaluate, TrainSettings, train_model, ClassifierTrainer
from autoprune.config import LayerTarget, Schedule
from scipy.stats import spearmanr

torch.set_num_threads(1)
model_name = sys.argv[1] if len(sys.argv) > 1 else "resnet20"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
T = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
dev = torch.device("cpu")
splits = get_dataset("fashion-mnist")
rng = np.random.RandomState(0)
sub = Subset(splits.train, rng.choice(len(splits.train), N, replace=False).tolist())
sub_eval = Subset(splits.train_eval, sub.indices)
val_small = Subset(splits.val, rng.choice(len(splits.val), 1000, replace=False).tolist())
t0 = time.time()
import os
os.makedirs("/tmp/exp", exist_ok=True)
model = build_model(model_name, splits)
ck = f"/tmp/exp/dense_{model_name}_{N}.pt"
if os.path.exists(ck):
    model.load_state_dict(torch.load(ck))
else:
    train_model(model, sub, splits.val, device=dev, settings=TrainSettings(epochs=6, batch_size=128, lr=0.1), seed=0)
    torch.save(model.state_dict(), ck)
t_dense = time.time() - t0
dense_val = evaluate(model, splits.val, device=dev)
print(f"dense trained 6 ep on {N}: {t_dense:.0f}s val {dense_val:.4f}", flush=True)
graph = ChannelGraph(model, example_input(splits))
space = load_space("auto", model_name, graph)
probe = ConfigProbe(lambda: copy.deepcopy(model), graph, channel_multiple=1, device=dev, latency=LatencySettings(batch_size=32), input_shape=(1, 28, 28))

def recal(m, batches, bs=128):
    bns = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    for b in bns: b.reset_running_stats(); b.momentum = None
    m.train()
    loader = torch.utils.data.DataLoader(sub_eval, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            if i >= batches: break
            m(x)
    for b in bns: b.momentum = 0.1
    m.eval()

var_names = [v for v in space.variables]
configs = []
for r in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
    configs.append(("uniform%d" % int(r*100), {v.name: ("filter", r) for v in space.variables if "filter" in v.types}))
for k in range(10):
    ch = {}
    for v in space.variables:
        if "filter" in v.types and rng.rand() < 0.8:
            ch[v.name] = ("filter", float(rng.choice(space.rates(v))))
    configs.append(("rand%d" % k, ch))
settings = Schedule(lr=0.05, batch_size=64)
rows = []
for name, ch in configs:
    targets = space.targets_from_params(space.params_of(ch))
    m = copy.deepcopy(model)
    proj = probe.projector(targets, m)
    masks = proj.hard_masks(); apply_masks(m, masks)
    t1 = time.time()
    raw = evaluate(m, val_small, device=dev)
    out = {"name": name, "raw": raw}
    for nb in (5, 20, 50):
        mm = copy.deepcopy(m); recal(mm, nb); out[f"bn{nb}"] = evaluate(mm, val_small, device=dev)
    mm = copy.deepcopy(m); recal(mm, 20); out["bn20_full"] = evaluate(mm, splits.val, device=dev)
    t_screen = time.time() - t1
    recal(m, 20)
    tr = ClassifierTrainer(sub, settings, device=dev, seed=5000)
    t1 = time.time()
    masked_retrain(m, masks, tr, 0.2 * T); out["s1"] = evaluate(m, splits.val, device=dev)
    masked_retrain(m, masks, tr, 0.8 * T); out["final"] = evaluate(m, splits.val, device=dev)
    out["t_train"] = time.time() - t1; out["t_screen"] = t_screen
    out["macs"] = probe.macs(targets)
    rows.append(out)
    print(json.dumps(out), flush=True)
f = [r["final"] for r in rows]
for key in ("raw", "bn5", "bn20", "bn50", "bn20_full", "s1"):
    print(key, "spearman", spearmanr([r[key] for r in rows], f).statistic)
json.dump({"dense": dense_val, "rows": rows}, open(f"/tmp/exp/rungs_{model_name}.json", "w"))
