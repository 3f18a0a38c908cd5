"""Dagger filter pruning: a gate module reading the pretrained weights, a FLOPs-aware regulariser,
exact-target thresholding, physical pruning and fine-tuning (arXiv 2010.15041).

The paper states the idea (an auxiliary network that reads the pretrained weights, a FLOPs-aware
regulariser); the module architecture, regulariser options and exact-target routine here are
**cafe-tf's design** (the method section was not available to us). See ``module.py``.

Pipeline (``cafe-tf prune``)::

    with strategy.scope():                                         # any tf.distribute strategy
        pretrained = load_model(path)                              # any functional Keras model
        graph = ChannelGraph.from_model(pretrained)
        module = DaggerModule(graph)                               # or FreeGates (ablation)
    reg = FlopsRegularizer(CostModel(graph), 0.5 * CostModel(graph).macs())
    GateTrainer(pretrained, module, reg, workdir, total_steps, strategy=strategy).train(batches)
    selection, info = select_channels("dagger", CostModel(graph), 0.5, logits=...)
    pruned = prune_model(pretrained, selection, graph)             # then fine-tune
"""

from cafe_tf.dagger.module import (DaggerModule, FreeGates, GateModule, build_gate_module, gate_masks,
                                   gates_from_logits, hard_selection)
from cafe_tf.dagger.prune import (METHODS, check_target_ratio, exact_target, filter_l1_norms, kept_ratios,
                                  l1_scores, load_model, method_scores, prune_model, save_model, select_channels,
                                  selection_masks, uniform_scores)
from cafe_tf.dagger.regularizer import PENALTIES, FlopsRegularizer, penalty
from cafe_tf.dagger.train import GateTrainer, accuracy, read_gates, write_gates

__all__ = [
    "DaggerModule", "FreeGates", "GateModule", "build_gate_module", "gate_masks", "gates_from_logits",
    "hard_selection", "METHODS", "check_target_ratio", "exact_target", "filter_l1_norms", "kept_ratios",
    "l1_scores", "load_model", "method_scores", "prune_model", "save_model", "select_channels",
    "selection_masks", "uniform_scores", "PENALTIES", "FlopsRegularizer", "penalty", "GateTrainer",
    "accuracy", "read_gates", "write_gates",
]
