r"""Fashion-MNIST, ResNet-20, CafeNet at 50% of the MACs: the offline default, sized for ~15 min on 2 CPU cores.

    python -m cafe_tf.train_supernet --config configs/fashion_mnist_resnet20.py --workdir runs/fm_r20
    python -m cafe_tf.search --config configs/fashion_mnist_resnet20.py --workdir runs/fm_r20
    cafe-tf train --config configs/fashion_mnist_resnet20.py --workdir runs/fm_r20/retrain \
        --widths runs/fm_r20/widths.json

Stages and their sizes (our choices: the paper's numbers are unavailable, see docs/papers.md):

* supernet: min-min training (locally free sharing, r = 1 channel around each width's boundary
  (supernet.zone_unit), K = 2 candidates, FLOPs-sensitive bins, no sandwich), SGD 0.1 / momentum
  0.9 / wd 5e-4 / cosine, 2 epochs. A min-min step with
  widths sampled per group costs about 0.9-1.05x a plain step of the full net (K = 2 selection
  passes, then one forward/backward of a smaller net; benchmarks/minmin_cost.py), so this is ~2
  epochs of plain ResNet-20 time. Candidate selection compares the K arrangements with BN on the
  batch's own statistics and updates no moving statistics (cafe_tf/training/supernet.py).
* search: evolution at 50% of the full net's MACs, candidates kept in [0.8, 1] x budget; population
  16, 6 generations, top-4 parents (the library defaults are 50 / 20 / 10, reduced here
  for time); each candidate scored as the best of K = 2 arrangements after BN recalibration on 256
  training images, on 2,000 images of the validation split (the last 5,000 training images; never test).
  Screening (search.screen_fraction = 0.5) ranks the K arrangements on the first 1,000 images and
  finishes only the best: 0.75x the images, 0.82x the search's scoring time, Kendall tau 0.95
  (95% CI 0.87-1.00) against full scoring on 30 fixed candidates, same best candidate and top 5
  (benchmarks/scoring_screen.py).
* train (the retraining recipe `cafe-tf train --widths` uses): from scratch, SGD 0.1
  cosine, 3 epochs.
* retrain: init_from_supernet=True makes the pipeline's retrain stage fine-tune from the supernet's
  weights (`--init_from_supernet`) instead of training from scratch; several seeds: `python -m
  cafe_tf.compare --seeds`.
* deploy: the formats the pipeline exports, verifies and times on the host (deploy.formats; the
  report recommends the fastest within deploy.max_accuracy_drop points), the training images that
  calibrate int8 (deploy.representative_examples, export's --num_calibration) and the host
  benchmark's runs and interleaved rounds (deploy.benchmark_runs, deploy.benchmark_rounds).
* bundle (`python -m cafe_tf.bundle`): one network per MACs budget (bundle.budgets, fractions of
  the full MACs; or bundle.size evenly spaced ones), each searched, retrained as above, exported to
  bundle.format and timed on the host; bundle/bundle.json is the manifest an app picks from.

Full-length settings (the CIFAR recipe, ~hours on CPU): configs/fashion_mnist_resnet20_full.py
(supernet.epochs=200, search.population=50, search.generations=20, search.parents=10,
search.eval_examples=0, supernet.eval_examples=0, train.epochs=200, train.eval_every=10).
"""

from cafe_tf import config as cfg
from cafe_tf.bundle import bundle_section
from cafe_tf.pipeline import deploy_section, retrain_section
from cafe_tf.search.run import search_section
from cafe_tf.training.supernet import supernet_section



def get_config():
    c = cfg.base_config()
    c.data.name = "fashion_mnist"
    c.data.batch_size = 128
    c.data.eval_batch_size = 250  # 1.6-1.8x the images/s of 500 on 2 cores (benchmarks/step_speed.py --parts eval)
    c.data.augment = "flip"
    c.data.cache = True  # 47 MB of uint8 images
    c.model.name = "resnet20"

    # Retraining recipe of the searched network (and of baselines such as uniform width scaling).
    c.train.epochs = 3
    c.train.optimizer = "sgd"
    c.train.lr = 0.1
    c.train.momentum = 0.9
    c.train.nesterov = True
    c.train.weight_decay = 5e-4
    c.train.schedule = "cosine"
    c.train.log_every = 100
    c.train.eval_every = 0  # validation + test (15,000 images) after the last epoch only: 2 x 15,000 fewer images to evaluate

    c.supernet = supernet_section()
    c.supernet.epochs = 2
    c.supernet.lr = 0.1
    c.supernet.momentum = 0.9
    c.supernet.nesterov = True
    c.supernet.weight_decay = 5e-4
    c.supernet.schedule = "cosine"
    c.supernet.log_every = 50
    c.supernet.checkpoint_every = 100
    c.supernet.sharing = "locally_free"  # fixed: the AutoSlim-style baseline supernet
    c.supernet.granularity = "flops_sensitive"
    c.supernet.r = 1
    c.supernet.zone_unit = "channels"  # r counts channels (the paper's Figure 1); "bins": the zone_bins ablation
    c.supernet.num_candidates = 2
    c.supernet.sandwich = False  # True: also the max and min nets every step (~3x the step cost)
    c.supernet.selection_bn = "batch"
    c.supernet.eval_fractions = (1.0, 0.5)
    c.supernet.calibration_examples = 256
    c.supernet.eval_examples = 2000

    c.search = search_section()
    c.search.method = "evolution"
    c.search.macs_ratio = 0.5  # the budget when no max_macs / max_params / max_latency_ms is given
    c.search.population = 16
    c.search.generations = 6
    c.search.parents = 4
    c.search.mutation_prob = 0.1
    c.search.num_candidates = 2
    c.search.calibration_examples = 256
    c.search.eval_examples = 2000
    c.search.screen_fraction = 0.5  # K arrangements ranked on 1,000 images, the best finished on the other 1,000

    c.retrain = retrain_section()
    c.deploy = deploy_section()
    c.bundle = bundle_section()  # python -m cafe_tf.bundle: one network per MACs budget, retrained and timed
    return cfg.lock(c)
